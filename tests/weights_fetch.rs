//! `trainq weights fetch` end to end: the real binary downloads from a tiny HTTP server started
//! here, checks the file, and installs it only when every tensor matches torchvision's layout.

mod common;

use common::Reply;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use trainq::domain::backbone::Backbone;
use trainq::domain::weights_layout::{check_file, expected_tensors};

/// Serves every request with `route(path)`; returns the base URL.
fn serve(route: impl Fn(&str) -> Reply + Send + 'static) -> String {
    common::serve(move |request| {
        let mut reply = route(&request.path);
        reply.headers.push(("content-type", String::from("application/octet-stream")));
        reply
    })
}

/// A VGG16 file as timm publishes it: every feature tensor (F16 zeros) plus a classifier that
/// trainq ignores. `misshape` gives one tensor another shape.
fn vgg16_file(misshape: Option<(&str, Vec<usize>)>) -> Arc<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>)> =
        expected_tensors(Backbone::Vgg16).into_iter().map(|tensor| (tensor.name, tensor.shape)).collect();
    tensors.push(("head.fc.weight".into(), vec![1000, 64]));
    tensors.push(("head.fc.bias".into(), vec![1000]));
    if let Some((name, shape)) = misshape {
        tensors.iter_mut().find(|(tensor, _)| tensor == name).unwrap().1 = shape;
    }
    zero_file(&tensors)
}

fn fetch_vgg16(url: &str, weights: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["weights", "fetch", "vgg16", "--url", url, "--weights"])
        .arg(weights)
        .env_remove("TRAINQ_WEIGHTS")
        .env_remove("TRAINQ_DATA_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_good_file_is_downloaded_through_a_redirect_checked_and_installed() {
    let body = vgg16_file(None);
    let served = Arc::clone(&body);
    let base = serve(move |path| match path {
        // Hugging Face answers `resolve/main/…` with a redirect to its CDN.
        "/timm/vgg16/model.safetensors" => {
            Reply { status: "302 Found", headers: vec![("location", "/cdn/abc123".into())], body: Arc::new(Vec::new()) }
        }
        "/cdn/abc123" => Reply::ok(&served),
        _ => Reply::text("404 Not Found", "not found"),
    });
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights");

    let output = fetch_vgg16(&format!("{base}/timm/vgg16/model.safetensors"), &weights);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("installed vgg16 weights at"), "{stdout}");
    assert!(
        stdout.contains(
            "26 tensors match torchvision's vgg16 layout; 2 other tensors ignored (head.fc.bias, head.fc.weight)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("sha256 "), "{stdout}");
    assert_eq!(file_names(&weights), ["vgg16.safetensors"]);
    let installed = weights.join("vgg16.safetensors");
    assert_eq!(std::fs::read(&installed).unwrap(), *body);
    assert_eq!(check_file(Backbone::Vgg16, &installed).unwrap().matched, 26);
}

#[test]
fn a_file_with_a_wrong_shape_is_refused_and_the_installed_one_kept() {
    let body = vgg16_file(Some(("features.19.weight", vec![512, 512, 1, 1])));
    let base = serve(move |_| Reply::ok(&body));
    let weights = tempfile::tempdir().unwrap();
    std::fs::write(weights.path().join("vgg16.safetensors"), b"the admin's earlier file").unwrap();

    let output = fetch_vgg16(&format!("{base}/x.safetensors"), weights.path());
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot serve as vgg16 weights; nothing was installed"), "{stderr}");
    assert!(stderr.contains("tensor `features.19.weight`"), "{stderr}");
    assert!(stderr.contains("has shape [512, 512, 1, 1], expected [512, 512, 3, 3]"), "{stderr}");
    assert_eq!(file_names(weights.path()), ["vgg16.safetensors"], "the partial download must be gone");
    assert_eq!(std::fs::read(weights.path().join("vgg16.safetensors")).unwrap(), b"the admin's earlier file");
}

#[test]
fn a_404_is_a_clear_failure() {
    let base = serve(|_| Reply::text("404 Not Found", "Entry not found"));
    let weights = tempfile::tempdir().unwrap();

    let url = format!("{base}/timm/nothing/model.safetensors");
    let output = fetch_vgg16(&url, weights.path());
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{url} answered 404 Not Found; nothing was installed")), "{stderr}");
    assert!(file_names(weights.path()).is_empty());
}

/// A safetensors file with every tensor of `backbone`'s torchvision layout (F16 zeros; the
/// optional batch counters included) and a classifier tensor trainq ignores.
fn torchvision_file(backbone: Backbone) -> Arc<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>)> =
        expected_tensors(backbone).into_iter().map(|tensor| (tensor.name, tensor.shape)).collect();
    tensors.push(("classifier.1.weight".into(), vec![1000, 8]));
    zero_file(&tensors)
}

/// Runs `trainq weights fetch <backbone> [--url URL] --weights <weights>`.
fn fetch_backbone(backbone: &str, url: Option<&str>, weights: &Path) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trainq"));
    command.args(["weights", "fetch", backbone]);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    command.arg("--weights").arg(weights).env_remove("TRAINQ_WEIGHTS").env_remove("TRAINQ_DATA_DIR");
    command.output().unwrap()
}

#[test]
fn efficientnet_b0_has_no_published_copy_so_fetch_says_how_to_convert_one_and_takes_a_url() {
    let weights = tempfile::tempdir().unwrap();
    let output = fetch_backbone("efficientnet_b0", None, weights.path());
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no safetensors copy of torchvision's efficientnet_b0 ImageNet weights is published"),
        "{stderr}"
    );
    assert!(stderr.contains("python deploy/convert_torchvision_weights.py efficientnet_b0 <weights dir>"), "{stderr}");
    assert!(file_names(weights.path()).is_empty(), "nothing is downloaded or left behind");

    let body = torchvision_file(Backbone::EfficientNetB0);
    let served = Arc::clone(&body);
    let base = serve(move |_| Reply::ok(&served));
    let output =
        fetch_backbone("efficientnet_b0", Some(&format!("{base}/efficientnet_b0.safetensors")), weights.path());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("358 tensors match torchvision's efficientnet_b0 layout"), "{stdout}");
    assert_eq!(file_names(weights.path()), ["efficientnet_b0.safetensors"]);
    assert_eq!(std::fs::read(weights.path().join("efficientnet_b0.safetensors")).unwrap(), *body);
}

/// A safetensors file of `tensors` (name, shape) in float16, every value zero.
fn zero_file(tensors: &[(String, Vec<usize>)]) -> Arc<Vec<u8>> {
    let largest = tensors.iter().map(|(_, shape)| shape.iter().product::<usize>() * 2).max().unwrap();
    let zeros = vec![0u8; largest];
    let views = tensors.iter().map(|(name, shape)| {
        let bytes = shape.iter().product::<usize>() * 2;
        (name.clone(), TensorView::new(Dtype::F16, shape.clone(), &zeros[..bytes]).unwrap())
    });
    Arc::new(safetensors::serialize(views, &None).unwrap())
}

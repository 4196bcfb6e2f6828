//! `trainq-worker serve --dir <job artifacts>`: a finished job's model kept warm for predictions
//! and Grad-CAM heatmaps on uploaded images, on the CPU. The supervisor starts it and writes one
//! JSON request per line on stdin; it answers one JSON line per request on stdout:
//!
//! - request `{"image": "<path>", "cam": "<png path to write>" | null}`
//! - answer `{"ok": true, "probabilities": [...], "predicted": i, "width": w, "height": h, "cam": bool}`
//!   (one probability, of the positive class, for a sigmoid model) or `{"ok": false, "error": "..."}`.
//!
//! A request that fails (an image the decoder refuses) is answered and the process goes on.

use crate::data::load_image;
use crate::model::Network;
use crate::normalise::Normaliser;
use anyhow::Context;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use tch::Device;
use trainq::domain::JobSpec;

#[derive(Deserialize)]
struct Request {
    image: PathBuf,
    #[serde(default)]
    cam: Option<PathBuf>,
}

/// Loads the job's spec and final checkpoint and answers requests until stdin closes.
pub fn serve(dir: &Path) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let spec: JobSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
    let network = Network::new(&spec, Device::Cpu);
    network.load_checkpoint(&dir.join("final.safetensors"))?;
    let normaliser = Normaliser::new(spec.backbone, Device::Cpu);
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(&network, &spec, &normaliser, &request)
                .unwrap_or_else(|err| serde_json::json!({"ok": false, "error": format!("{err:#}")})),
            Err(err) => serde_json::json!({"ok": false, "error": format!("bad request: {err}")}),
        };
        let mut out = stdout.lock();
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn answer(
    network: &Network,
    spec: &JobSpec,
    normaliser: &Normaliser,
    request: &Request,
) -> anyhow::Result<serde_json::Value> {
    let pixels = load_image(&request.image, spec.resize(), spec.sampling())?;
    let (map, probabilities) = network.grad_cam(&normaliser.apply(&pixels), None);
    let predicted = if probabilities.len() == 1 {
        usize::from(probabilities[0] >= 0.5)
    } else {
        probabilities.iter().enumerate().fold((0, f64::MIN), |best, (c, &p)| if p > best.1 { (c, p) } else { best }).0
    };
    if let Some(path) = &request.cam {
        let png = crate::cam::overlay_png(&pixels, &map)?;
        trainq::files::write_atomic_bytes(path, &png).with_context(|| format!("writing {}", path.display()))?;
    }
    let size = pixels.size();
    Ok(serde_json::json!({
        "ok": true, "probabilities": probabilities, "predicted": predicted,
        "width": size[3], "height": size[2], "cam": request.cam.is_some(),
    }))
}

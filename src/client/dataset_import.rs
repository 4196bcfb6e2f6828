//! `trainq admin datasets import NAME ARCHIVE.zip|DIR`: streams the archive to
//! `PUT /api/admin/datasets/{name}` with a bar for the upload, then prints the server's stages
//! (unpack, verify) from its streamed answer and the manifest's counts. A folder is zipped first
//! into a temporary file, entries stored (images do not compress): the server needs a zip's
//! central directory to check every entry before writing one, and one format means one set of
//! checks.

use super::Api;
use crate::config::DatasetImportArgs;
use crate::domain::retention::human_bytes;
use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Uploads `args.source` as dataset `args.name` and prints what the server made of it.
pub async fn import(api: &Api, args: &DatasetImportArgs) -> anyhow::Result<()> {
    let zipped;
    let archive = if args.source.is_dir() {
        eprintln!("zipping {} …", args.source.display());
        let source = args.source.clone();
        zipped = tokio::task::spawn_blocking(move || zip_folder(&source)).await??;
        zipped.path().to_path_buf()
    } else {
        args.source.clone()
    };
    let file = tokio::fs::File::open(&archive).await.with_context(|| format!("opening {}", archive.display()))?;
    let length = file.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(length).with_style(
        indicatif::ProgressStyle::with_template("upload {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("a valid template"),
    );
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted.inc(chunk.len() as u64);
        }
    });
    let query = format!("replace={}&skip_bad={}", args.replace, args.skip_bad);
    let request = api
        .streaming
        .put(format!("{}/api/admin/datasets/{}?{query}", api.profile.url, args.name))
        .header(reqwest::header::CONTENT_TYPE, "application/zip")
        .header(reqwest::header::CONTENT_LENGTH, length)
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream));
    let response = api.respond(request).await;
    bar.finish_and_clear();
    let mut body = response?.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: Value = serde_json::from_slice(&line).context("reading the server's progress")?;
            if let Some(manifest) = stage(&line)? {
                print_manifest(&manifest);
                return Ok(());
            }
        }
    }
    bail!("the server's answer ended before the import did")
}

/// Prints one progress line; the manifest once it is done, an error when it failed.
fn stage(line: &Value) -> anyhow::Result<Option<Value>> {
    if line.get("error").is_some() {
        let status = line["status"].as_u64().and_then(|code| reqwest::StatusCode::from_u16(code as u16).ok());
        return Err(super::api_error(status.unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR), line));
    }
    match line["stage"].as_str() {
        Some("unpack") => eprintln!(
            "unpack: {} files, {}",
            line["files"].as_u64().unwrap_or(0),
            human_bytes(line["bytes"].as_u64().unwrap_or(0))
        ),
        Some("verify") if line.get("bad").is_some() => eprintln!(
            "verify: {} images decoded, {} did not",
            line["images"].as_u64().unwrap_or(0),
            line["bad"].as_u64().unwrap_or(0)
        ),
        Some("verify") => eprintln!("verify: decoding {} images in full …", line["images"].as_u64().unwrap_or(0)),
        Some("done") => return Ok(Some(line["manifest"].clone())),
        _ => {}
    }
    std::io::stderr().flush()?;
    Ok(None)
}

/// The manifest in words: images per split and class, and what was left out.
fn print_manifest(manifest: &Value) {
    println!(
        "imported `{}`: {} images, {}",
        manifest["name"].as_str().unwrap_or("?"),
        manifest["images"].as_u64().unwrap_or(0),
        human_bytes(manifest["bytes"].as_u64().unwrap_or(0))
    );
    for (split, classes) in manifest["splits"].as_object().into_iter().flatten() {
        let counts: Vec<String> = classes
            .as_object()
            .into_iter()
            .flatten()
            .map(|(class, count)| format!("{class} {}", count.as_u64().unwrap_or(0)))
            .collect();
        println!("  {split}: {}", counts.join(", "));
    }
    for (why, count) in manifest["left_out"].as_object().into_iter().flatten() {
        println!("  left out: {} {why}", count.as_u64().unwrap_or(0));
    }
    for file in manifest["bad_files"].as_array().into_iter().flatten() {
        println!("  bad: {} ({})", file["path"].as_str().unwrap_or("?"), file["reason"].as_str().unwrap_or("?"));
    }
}

/// Zips the folder `source` into a temporary file, entries stored; symlinks are not followed.
fn zip_folder(source: &Path) -> anyhow::Result<tempfile_like::TempZip> {
    let zipped = tempfile_like::TempZip::new()?;
    let mut writer = zip::ZipWriter::new(std::fs::File::create(zipped.path())?);
    let options =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    let mut folders = vec![source.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&folder)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let kind = entry.file_type()?;
            let path = entry.path();
            let name = path.strip_prefix(source)?.to_string_lossy().into_owned();
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() {
                writer.start_file(name, options)?;
                std::io::copy(&mut std::fs::File::open(&path)?, &mut writer)?;
            }
        }
    }
    writer.finish()?;
    Ok(zipped)
}

/// A temporary file removed on drop (the client has no `tempfile` dependency outside tests).
mod tempfile_like {
    use std::path::{Path, PathBuf};

    /// A zip being built in the system's temporary folder.
    pub struct TempZip(PathBuf);

    impl TempZip {
        /// A fresh name in `$TMPDIR`.
        pub fn new() -> std::io::Result<TempZip> {
            let path = std::env::temp_dir().join(format!("trainq-import-{}.zip", uuid::Uuid::new_v4().simple()));
            Ok(TempZip(path))
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempZip {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

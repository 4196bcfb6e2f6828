//! `trainq admin backup --to FILE`: downloads a snapshot the server takes now
//! (`GET /api/admin/backup`) into FILE, whole or not at all.

use super::Api;
use crate::config::BackupArgs;
use anyhow::Context;
use futures::StreamExt;
use std::io::Write;
use std::path::Path;

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Streams the snapshot into a temporary file beside `--to`, checks that it is an SQLite
/// database of the announced size, and renames it over `--to` (`files::write_atomic`). A folder
/// that cannot be written fails before the server takes a snapshot.
pub(super) async fn backup(api: &Api, args: &BackupArgs) -> anyhow::Result<()> {
    let target = &args.to;
    let cannot_write = || format!("cannot write the backup to {}", target.display());
    anyhow::ensure!(!target.is_dir(), "--to {} is a folder; name the file to write", target.display());
    // Proves the folder takes a file before the server does any work (an older backup at
    // `--to` stays untouched until the new one is complete).
    let folder = target.parent().filter(|folder| !folder.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let probe = folder.join(format!(".trainq-backup-probe.{}", std::process::id()));
    std::fs::File::create(&probe).and_then(|_| std::fs::remove_file(&probe)).with_context(cannot_write)?;
    let response = api.open("/api/admin/backup", &[]).await?;
    let expected = response.content_length();
    let runtime = tokio::runtime::Handle::current();
    let path = target.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut written = 0_u64;
        crate::files::write_atomic(&path, |file| {
            runtime.block_on(async {
                let mut chunks = response.bytes_stream();
                let mut head = Vec::new();
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(std::io::Error::other)?;
                    if head.len() < SQLITE_HEADER.len() {
                        head.extend(chunk.iter().take(SQLITE_HEADER.len() - head.len()));
                    }
                    file.write_all(&chunk)?;
                    written += chunk.len() as u64;
                }
                if !head.starts_with(SQLITE_HEADER) {
                    return Err(std::io::Error::other("the server's answer is not an SQLite database"));
                }
                if expected.is_some_and(|expected| expected != written) {
                    return Err(std::io::Error::other("the download ended early"));
                }
                Ok(())
            })
        })?;
        Ok::<u64, std::io::Error>(written)
    })
    .await?;
    let written = written.with_context(cannot_write)?;
    eprintln!(
        "saved a consistent snapshot of the database ({} bytes) to {}; restore it with a copy of the data dir's jobs/ (README, Backup and restore)",
        written,
        target.display()
    );
    Ok(())
}

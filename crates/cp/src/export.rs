//! Export of a data dir as a `.tar.gz` stream, built on a blocking thread and
//! handed over in chunks, so that a large volume is never held in memory.
//!
//! The data is untrusted: symbolic links are archived as links (never
//! followed), FIFOs, sockets and devices are skipped (never opened), files
//! are opened with `O_NOFOLLOW | O_NONBLOCK` and checked to be regular files
//! after opening, and the walk never leaves the given root.

use bytes::Bytes;
use flate2::write::GzEncoder;
use futures_util::stream::Stream;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::sync::mpsc;

/// A stream of archive bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

const CHUNK: usize = 64 * 1024;

/// A `Write` that sends full chunks down a channel; the receiving side is the
/// HTTP response body. A dropped receiver (client gone) ends the export.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "export reader went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads exactly `len` bytes: a file that shrank while being archived is
/// padded with zeros, one that grew is cut, so the archive stays valid.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

fn open_regular(path: &Path) -> io::Result<Option<(File, std::fs::Metadata)>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)?;
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_size(0);
    h
}

/// Writes the archive of `root` to `out`. Entries are relative to `root`.
pub fn write_archive(root: &Path, out: impl Write) -> io::Result<()> {
    let gz = GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(e) => e.flatten().collect(),
            // Unreadable or vanished while walking: archive what can be read.
            Err(_) => continue,
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_rel = rel.join(entry.file_name());
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let mut h = header_for(&meta, tar::EntryType::Directory);
                tar.append_data(&mut h, &child_rel, io::empty())?;
                stack.push(child_rel);
            } else if ft.is_symlink() {
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                let mut h = header_for(&meta, tar::EntryType::Symlink);
                if tar.append_link(&mut h, &child_rel, &target).is_err() {
                    tracing::debug!(path = %path.display(), "skipping a link tar cannot record");
                }
            } else if ft.is_file() {
                // Re-checked after opening: the entry may have been swapped
                // for a FIFO or a link since the stat above.
                let Ok(Some((file, meta))) = open_regular(&path) else {
                    continue;
                };
                let mut h = header_for(&meta, tar::EntryType::Regular);
                h.set_size(meta.len());
                tar.append_data(
                    &mut h,
                    &child_rel,
                    Exactly {
                        inner: file,
                        left: meta.len(),
                    },
                )?;
            }
            // FIFOs, sockets and devices are skipped.
        }
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()
}

/// Streams the archive of `root`, built on a blocking thread.
pub fn stream_archive(root: PathBuf) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = write_archive(&root, writer)
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::warn!(error = %e, "export failed part-way");
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_keeps_links_as_links_and_skips_fifos() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"do not export").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("memory")).unwrap();
        std::fs::write(root.path().join("memory/notes.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("leak"))
            .unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(root.path().join("pipe"))
                .status()
                .unwrap()
                .success()
        );

        let mut buf = Vec::new();
        write_archive(root.path(), &mut buf).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&buf[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push(format!("{path} {kind:?} {body:?}"));
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                "leak Symlink \"\"".to_owned(),
                "memory Directory \"\"".to_owned(),
                "memory/notes.txt Regular \"hello\"".to_owned(),
            ]
        );
    }
}

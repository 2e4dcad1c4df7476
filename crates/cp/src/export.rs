//! Export of a data dir as a `.tar.gz` stream, built on a blocking thread and
//! handed over in chunks, so that a large volume is never held in memory.
//!
//! The data is untrusted, so the archive is built from a handle-based walk
//! ([`crate::tree`]): symbolic links are archived as links (never
//! followed), FIFOs and devices as what they are (never opened), files are
//! opened beneath their directory's handle with `O_NOFOLLOW | O_NONBLOCK`
//! and read only when the opened handle is a regular file, and names are
//! bytes. A first pass ([`check`]) refuses what cannot be archived safely
//! before anything is sent; an entry that fails later fails the stream.

use crate::tree::{self, FileId, Visitor};
use bytes::Bytes;
use flate2::write::GzEncoder;
use futures_util::stream::Stream;
use rustix::fd::BorrowedFd;
use rustix::fs::{FileType, Stat};
use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
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

fn header_for(st: &Stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_size(0);
    h
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

fn refused(path: &[u8], why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", tree::display_path(path)),
    )
}

/// What the first pass over a tree learnt: every inode with more than one
/// link, how many of its links are inside the tree, and the path of the
/// first one (later ones are archived as hard links to it).
#[derive(Default)]
pub struct Plan {
    links: HashMap<FileId, Linked>,
}

struct Linked {
    inside: u64,
    first: Option<Vec<u8>>,
}

/// The first pass: walks the whole tree without reading any file and
/// refuses, naming the entry, what an export cannot hold safely:
/// - a socket (an archive cannot represent one);
/// - a file with a hard link outside the tree (its bytes are not the
///   workspace's own: without a sandbox a workspace could link the server's
///   files into its data);
/// - anything it cannot open.
///
/// It runs before the response starts, so such a refusal is a clear 409.
pub fn check(root: &Path) -> io::Result<Plan> {
    struct Check {
        plan: Plan,
        nlink: HashMap<FileId, (u64, Vec<u8>)>,
    }
    impl Visitor for Check {
        fn dir(&mut self, _: &[u8], _: &Stat) -> io::Result<()> {
            Ok(())
        }
        fn entry(&mut self, _: BorrowedFd<'_>, _: &CStr, path: &[u8], st: &Stat) -> io::Result<()> {
            match tree::file_type(st) {
                FileType::Socket => Err(refused(path, "a socket cannot be exported")),
                FileType::RegularFile if st.st_nlink > 1 => {
                    let id = tree::file_id(st);
                    self.plan
                        .links
                        .entry(id)
                        .or_insert(Linked {
                            inside: 0,
                            first: None,
                        })
                        .inside += 1;
                    self.nlink
                        .entry(id)
                        .or_insert_with(|| (st.st_nlink, path.to_vec()));
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }
    let mut c = Check {
        plan: Plan::default(),
        nlink: HashMap::new(),
    };
    tree::walk(tree::open_root(root)?, &mut c)?;
    for (id, (nlink, path)) in &c.nlink {
        if c.plan.links[id].inside < *nlink {
            return Err(refused(
                path,
                "has a hard link outside the workspace's data, so its bytes are not the workspace's own",
            ));
        }
    }
    Ok(c.plan)
}

struct Archive<W: Write> {
    tar: tar::Builder<W>,
    plan: Plan,
}

impl<W: Write> Visitor for Archive<W> {
    fn dir(&mut self, path: &[u8], st: &Stat) -> io::Result<()> {
        let mut h = header_for(st, tar::EntryType::Directory);
        self.tar.append_data(&mut h, as_path(path), io::empty())
    }

    fn entry(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &Stat,
    ) -> io::Result<()> {
        match tree::file_type(st) {
            FileType::RegularFile => {
                // Re-checked on the opened handle: the entry may have been
                // swapped for a FIFO, a device or a link since it was listed
                // (O_NOFOLLOW fails on a link, O_NONBLOCK keeps a FIFO from
                // blocking, and only a regular file is read).
                let (fd, st) = match tree::open_file_beneath(parent, name) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                        let st = rustix::fs::statat(
                            parent,
                            name,
                            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                        )?;
                        return self.entry(parent, name, path, &st);
                    }
                    Err(e) => return Err(refused(path, &e.to_string())),
                };
                if tree::file_type(&st) != FileType::RegularFile {
                    return self.special(parent, name, path, &st);
                }
                if st.st_nlink > 1 {
                    let Some(linked) = self.plan.links.get_mut(&tree::file_id(&st)) else {
                        return Err(refused(path, "gained a hard link while it was exported"));
                    };
                    if linked.inside < st.st_nlink {
                        return Err(refused(
                            path,
                            "has a hard link outside the workspace's data, so its bytes are not the workspace's own",
                        ));
                    }
                    if let Some(first) = &linked.first {
                        let mut h = header_for(&st, tar::EntryType::Link);
                        return self.tar.append_link(&mut h, as_path(path), as_path(first));
                    }
                    linked.first = Some(path.to_vec());
                }
                let len = u64::try_from(st.st_size).unwrap_or(0);
                let mut h = header_for(&st, tar::EntryType::Regular);
                h.set_size(len);
                self.tar.append_data(
                    &mut h,
                    as_path(path),
                    Exactly {
                        inner: File::from(fd),
                        left: len,
                    },
                )
            }
            _ => self.special(parent, name, path, st),
        }
    }
}

impl<W: Write> Archive<W> {
    /// Links, FIFOs and devices are archived as what they are; none is
    /// ever opened or followed.
    fn special(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &Stat,
    ) -> io::Result<()> {
        match tree::file_type(st) {
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(parent, name, Vec::new()) {
                    Ok(t) => t,
                    Err(rustix::io::Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(refused(path, &e.to_string())),
                };
                let mut h = header_for(st, tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut h, as_path(path), as_path(target.as_bytes()))
            }
            FileType::Fifo => {
                let mut h = header_for(st, tar::EntryType::Fifo);
                self.tar.append_data(&mut h, as_path(path), io::empty())
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice) => {
                let entry = if kind == FileType::CharacterDevice {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header_for(st, entry);
                h.set_device_major(rustix::fs::major(st.st_rdev))?;
                h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
                self.tar.append_data(&mut h, as_path(path), io::empty())
            }
            FileType::Socket => Err(refused(path, "a socket cannot be exported")),
            _ => Err(refused(path, "an entry of unknown type cannot be exported")),
        }
    }
}

/// Writes the archive of `root` to `out` (entries relative to `root`),
/// after [`check`]. Any entry that cannot be archived fails the whole
/// archive: nothing is silently left out.
pub fn write_archive(root: &Path, plan: Plan, out: impl Write) -> io::Result<()> {
    let gz = GzEncoder::new(out, flate2::Compression::fast());
    let mut archive = Archive {
        tar: tar::Builder::new(gz),
        plan,
    };
    archive.tar.follow_symlinks(false);
    tree::walk(tree::open_root(root)?, &mut archive)?;
    let gz = archive.tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()
}

/// Streams the archive of `root` (checked by [`check`]), built on a
/// blocking thread.
pub fn stream_archive(root: PathBuf, plan: Plan) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = write_archive(&root, plan, writer)
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

/// Streams what `write` writes, run on a blocking thread; the receiver
/// resolves once it has finished (so that the caller can release what the
/// writer read from). A failure part-way fails the stream.
pub fn stream_with(
    write: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
) -> (ByteStream, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let result = write(&mut writer).and_then(|()| writer.flush());
        if let Err(e) = result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::warn!(error = %e, "export failed part-way");
            let _ = err_tx.blocking_send(Err(e));
        }
        let _ = done_tx.send(());
    });
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (stream, done_rx)
}

/// The exit code of `holdfast archive` when the data holds what an export
/// cannot include safely (nothing was written).
pub const ARCHIVE_REFUSED: u8 = 3;

/// `holdfast archive DIR`: writes the export of `DIR` (the same `.tar.gz`,
/// entries relative to `DIR`, with the same refusals) to stdout. The
/// Kubernetes backend runs it in a helper Pod over the API's exec. Exit 0:
/// the whole archive was written; [`ARCHIVE_REFUSED`]: refused before any
/// byte, the reason on stderr; 1: failed part-way; 2: usage.
pub fn archive_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let [dir] = args else {
        eprintln!("usage: holdfast archive DIR");
        return std::process::ExitCode::from(2);
    };
    let root = Path::new(dir);
    let plan = match check(root) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(ARCHIVE_REFUSED);
        }
    };
    let out = io::BufWriter::with_capacity(CHUNK, io::stdout().lock());
    match write_archive(root, plan, out) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast archive: {}: {e}", root.display());
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(root: &Path) -> Vec<String> {
        let plan = check(root).unwrap();
        let mut buf = Vec::new();
        write_archive(root, plan, &mut buf).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&buf[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push(format!("{path} {kind:?} {body:?} {link:?}"));
        }
        seen.sort();
        seen
    }

    #[test]
    fn archive_keeps_links_as_links_and_fifos_as_fifos() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"do not export").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("memory")).unwrap();
        std::fs::write(root.path().join("memory/notes.txt"), b"hello").unwrap();
        std::fs::hard_link(
            root.path().join("memory/notes.txt"),
            root.path().join("again"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("leak"))
            .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("pipe"),
            FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        let seen = archive(root.path());
        let leak = format!(
            "leak Symlink \"\" Some({:?})",
            outside.path().join("secret").display().to_string()
        );
        // One of the two names of the hard-linked file holds the bytes, the
        // other is a link to it (which one depends on the walk's order).
        let linked: Vec<_> = seen
            .iter()
            .filter(|l| l.starts_with("again ") || l.starts_with("memory/notes.txt "))
            .cloned()
            .collect();
        assert_eq!(linked.len(), 2, "{seen:?}");
        assert!(
            linked.iter().any(|l| l.contains("Regular \"hello\"")),
            "{seen:?}"
        );
        assert!(
            linked.iter().any(|l| l.contains(" Link \"\" Some(")),
            "{seen:?}"
        );
        let rest: Vec<_> = seen
            .iter()
            .filter(|l| !linked.contains(l))
            .cloned()
            .collect();
        assert_eq!(
            rest,
            vec![
                leak,
                "memory Directory \"\" None".to_owned(),
                "pipe Fifo \"\" None".to_owned(),
            ]
        );
    }

    #[test]
    fn a_hard_link_from_outside_refuses_the_export() {
        let top = tempfile::tempdir().unwrap();
        std::fs::write(top.path().join("admin-token"), b"s3cret").unwrap();
        let root = top.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok"), b"fine").unwrap();
        // Positive control: without the outside link the export works.
        assert_eq!(archive(&root).len(), 1);
        std::fs::hard_link(top.path().join("admin-token"), root.join("token")).unwrap();
        let err = check(&root).err().expect("refused");
        assert!(
            err.to_string().contains("token: has a hard link outside"),
            "{err}"
        );
        // Even a plan made before the link appeared refuses it.
        std::fs::remove_file(root.join("token")).unwrap();
        let plan = check(&root).unwrap();
        std::fs::hard_link(top.path().join("admin-token"), root.join("token")).unwrap();
        let mut buf = Vec::new();
        assert!(write_archive(&root, plan, &mut buf).is_err());
    }

    #[test]
    fn a_socket_refuses_the_export() {
        let root = tempfile::tempdir().unwrap();
        let _l = std::os::unix::net::UnixListener::bind(root.path().join("sock")).unwrap();
        let err = check(root.path()).err().expect("refused");
        assert!(
            err.to_string()
                .contains("sock: a socket cannot be exported"),
            "{err}"
        );
    }

    #[test]
    fn deep_trees_and_byte_names_are_archived_whole() {
        use std::os::unix::ffi::OsStrExt;
        let root = tempfile::tempdir().unwrap();
        let mut dir = root.path().to_path_buf();
        for _ in 0..600 {
            dir.push("level");
        }
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"\xff\xfe")), b"deep").unwrap();
        let seen = archive(root.path());
        assert_eq!(seen.len(), 601);
        let deepest = seen.iter().find(|l| l.contains("Regular")).unwrap();
        assert!(
            deepest.starts_with(&"level/".repeat(600)),
            "{}",
            &deepest[..80]
        );
        assert!(deepest.contains("\"deep\""));
    }
}

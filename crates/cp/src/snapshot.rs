//! The snapshot repository: deduplicated, content-addressed storage of
//! workspace volumes under `<data-dir>/snapshots/` (SPEC §15).
//!
//! Layout, per org (chunks are shared within an org, never across):
//!
//! ```text
//! snapshots/<org-id>/chunks/<hh>/<64 hex>   one chunk: 1 byte codec ('z' zstd, 'r' raw), then the data
//! snapshots/<org-id>/manifests/<snapshot-id> the tree: zstd of the entries below
//! snapshots/<org-id>/tmp/                    chunks and manifests being written
//! snapshots/staging/<workspace-id>/          restores being prepared (rollback, clone)
//! ```
//!
//! Files are cut with FastCDC (content-defined: an edit moves only the
//! chunks around it), named by the BLAKE3 keyed hash of their plain
//! content under the org's key (kept in the store, never here), and
//! compressed with zstd. A chunk is written to `tmp/` and renamed into
//! place, so a chunk file is always whole; the manifest is written the same
//! way after `syncfs`, and only then is the snapshot's record `ready`: a
//! crash or a full disk leaves at most unreferenced chunks, which
//! [`OrgRepo::collect_garbage`] removes.
//!
//! Capture reads the workspace's volume only through [`crate::tree`]'s
//! handle walk (a link swapped in mid-walk fails the open instead of
//! leading outside). Restore writes only into a fresh directory under
//! `staging/`, which no workspace can see, and which is swapped into place
//! by a rename.

use crate::tree::{self, FileId, Visitor};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The first manifest format: no file identities, no hard links.
const MAGIC_V1: &[u8; 8] = b"HFSNAP01";
/// The current one: the capture's start time, each file's identity
/// (device, inode, change time) for the next capture's parent check, and
/// hard links.
const MAGIC: &[u8; 8] = b"HFSNAP02";
/// A file changed this close to its parent capture's start is read again
/// even if its identity matches: timestamps may be as coarse as a clock
/// tick, so a change in the same tick as the parent's read would not show.
const RACY_NANOS: i128 = 2_000_000_000;
/// FastCDC sizes: restic's average (1 MiB), a smaller minimum so that
/// small edits of mid-sized files cost less.
const MIN_CHUNK: u32 = 256 * 1024;
const AVG_CHUNK: u32 = 1024 * 1024;
const MAX_CHUNK: u32 = 4 * 1024 * 1024;
const ZSTD_LEVEL: i32 = 3;

/// A chunk's name: the keyed BLAKE3 hash of its plain content.
pub type ChunkId = [u8; 32];

fn hex(id: &ChunkId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<ChunkId> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random chunk key, as stored (hex).
pub fn new_key() -> String {
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let c = Uuid::new_v4();
    // 3 × 122 random bits, hashed down to 256.
    let mut h = blake3::Hasher::new();
    h.update(a.as_bytes());
    h.update(b.as_bytes());
    h.update(c.as_bytes());
    hex(h.finalize().as_bytes())
}

/// The whole repository.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

/// One org's part of the repository, with its key.
pub struct OrgRepo {
    dir: PathBuf,
    key: ChunkId,
}

/// Why a repository operation failed, as the API answers it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The disk is full (or over quota).
    #[error("the snapshot repository's disk is full")]
    Full,
    /// The data holds what a snapshot cannot include safely.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for RepoError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || e.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
        {
            RepoError::Full
        } else {
            RepoError::Io(e)
        }
    }
}

impl Repo {
    pub fn new(data_dir: &Path) -> Repo {
        Repo {
            root: data_dir.join("snapshots"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn org(&self, org_id: Uuid, key_hex: &str) -> io::Result<OrgRepo> {
        let key =
            unhex(key_hex).ok_or_else(|| io::Error::other("a stored chunk key is malformed"))?;
        Ok(OrgRepo {
            dir: self.root.join(org_id.to_string()),
            key,
        })
    }

    /// Where restores are prepared: beside the volumes, on the same
    /// filesystem (a rename swaps them in), invisible to every workspace.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The orgs with a directory in the repository.
    pub fn org_dirs(&self) -> Vec<Uuid> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()))
            .collect()
    }

    /// Manifests on disk of an org (snapshot ids).
    pub fn manifests_of(&self, org_id: Uuid) -> Vec<Uuid> {
        let dir = self.root.join(org_id.to_string()).join("manifests");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()))
            .collect()
    }
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Dir,
    File {
        size: u64,
        chunks: Vec<(ChunkId, u32)>,
        /// What the file was when it was read (`None` in a first-format
        /// manifest): the next capture reuses the chunks of a file whose
        /// identity still matches instead of reading it again.
        meta: Option<FileMeta>,
    },
    /// Another name of a file earlier in the same manifest (its path):
    /// restored as a link inside the restored tree.
    HardLink(Vec<u8>),
    Symlink(Vec<u8>),
    Fifo,
}

/// A file's identity when it was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub dev: u64,
    pub ino: u64,
    pub ctime: (i64, u32),
}

impl FileMeta {
    fn of(st: &Stat) -> FileMeta {
        FileMeta {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, u32::try_from(st.st_ctime_nsec).unwrap_or(0)),
        }
    }
}

/// A manifest: when its capture started (wall clock, as file times are
/// kept; `None` in a first-format manifest) and its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub started: Option<(i64, u32)>,
    pub entries: Vec<Entry>,
}

fn nanos(t: (i64, u32)) -> i128 {
    i128::from(t.0) * 1_000_000_000 + i128::from(t.1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Relative to the volume root, `/`-separated bytes; every component
    /// is a name read from a directory (never empty, `.`, `..`).
    pub path: Vec<u8>,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub kind: Kind,
}

/// What a capture found and wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureStats {
    pub files: u64,
    pub bytes: u64,
    /// Bytes of chunks this capture added to the repository (as stored).
    pub new_bytes: u64,
    /// Sockets and device nodes, which are not captured: a restore could
    /// not recreate them safely.
    pub skipped: u64,
    /// Files whose chunks were taken from the parent snapshot unread
    /// (their size, times, device and inode matched).
    pub reused: u64,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(
        out,
        u32::try_from(b.len()).expect("a name or link target fits in 4 GiB"),
    );
    out.extend_from_slice(b);
}

fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let tag = match &entry.kind {
        Kind::Dir => b'd',
        Kind::File { .. } => b'f',
        Kind::HardLink(_) => b'h',
        Kind::Symlink(_) => b'l',
        Kind::Fifo => b'p',
    };
    out.push(tag);
    put_u32(out, entry.mode);
    out.extend_from_slice(&entry.mtime.0.to_le_bytes());
    put_u32(out, entry.mtime.1);
    put_bytes(out, &entry.path);
    match &entry.kind {
        Kind::File { size, chunks, meta } => {
            put_u64(out, *size);
            let meta = meta.unwrap_or(FileMeta {
                dev: 0,
                ino: 0,
                ctime: (0, u32::MAX),
            });
            put_u64(out, meta.dev);
            put_u64(out, meta.ino);
            out.extend_from_slice(&meta.ctime.0.to_le_bytes());
            put_u32(out, meta.ctime.1);
            put_u32(out, u32::try_from(chunks.len()).unwrap_or(u32::MAX));
            for (id, len) in chunks {
                out.extend_from_slice(id);
                put_u32(out, *len);
            }
        }
        Kind::Symlink(target) | Kind::HardLink(target) => put_bytes(out, target),
        Kind::Dir | Kind::Fifo => {}
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a manifest is truncated",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn valid_path(path: &[u8]) -> bool {
    !path.is_empty()
        && path
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
}

fn encode_manifest(started: (i64, u32), entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + entries.len() * 96);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&started.0.to_le_bytes());
    put_u32(&mut body, started.1);
    for e in entries {
        encode(e, &mut body);
    }
    body
}

pub fn decode(data: &[u8]) -> io::Result<Manifest> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a manifest is malformed: {why}"),
        )
    };
    let mut c = Cursor(data);
    let v2 = match c.take(8)? {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err(bad("wrong magic")),
    };
    let started = if v2 {
        let secs = i64::from_le_bytes(c.take(8)?.try_into().expect("8 bytes"));
        Some((secs, c.u32()?))
    } else {
        None
    };
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let tag = c.take(1)?[0];
        let mode = c.u32()?;
        let secs = i64::from_le_bytes(c.take(8)?.try_into().expect("8 bytes"));
        let nsec = c.u32()?;
        let path = c.bytes()?;
        if !valid_path(&path) {
            return Err(bad("an entry's path"));
        }
        let kind = match tag {
            b'd' => Kind::Dir,
            b'p' => Kind::Fifo,
            b'l' => Kind::Symlink(c.bytes()?),
            b'h' if v2 => {
                let target = c.bytes()?;
                if !valid_path(&target) {
                    return Err(bad("a hard link's target"));
                }
                Kind::HardLink(target)
            }
            b'f' => {
                let size = c.u64()?;
                let meta = if v2 {
                    let dev = c.u64()?;
                    let ino = c.u64()?;
                    let secs = i64::from_le_bytes(c.take(8)?.try_into().expect("8 bytes"));
                    let nsec = c.u32()?;
                    // A nanosecond past a second: written for "unknown".
                    (nsec < 1_000_000_000).then_some(FileMeta {
                        dev,
                        ino,
                        ctime: (secs, nsec),
                    })
                } else {
                    None
                };
                let n = c.u32()?;
                let mut chunks = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    let id: ChunkId = c.take(32)?.try_into().expect("32 bytes");
                    chunks.push((id, c.u32()?));
                }
                Kind::File { size, chunks, meta }
            }
            _ => return Err(bad("an unknown entry kind")),
        };
        out.push(Entry {
            path,
            mode,
            mtime: (secs, nsec),
            kind,
        });
    }
    Ok(Manifest {
        started,
        entries: out,
    })
}

fn mtime_of(st: &Stat) -> (i64, u32) {
    (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0))
}

/// The permission bits kept: never set-user-id or set-group-id, which a
/// restore (by the server's user) would otherwise hand to a file the
/// workspace planted.
fn perm(st: &Stat) -> u32 {
    st.st_mode & 0o1777
}

impl OrgRepo {
    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = hex(id);
        self.dir.join("chunks").join(&h[..2]).join(h)
    }

    fn manifest_path(&self, snapshot: Uuid) -> PathBuf {
        self.dir.join("manifests").join(snapshot.to_string())
    }

    fn tmp(&self) -> io::Result<(PathBuf, File)> {
        let dir = self.dir.join("tmp");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(Uuid::new_v4().to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Writes `data` whole to `path` through a temporary file and a rename.
    fn write_atomically(&self, path: &Path, data: &[&[u8]], sync: bool) -> io::Result<()> {
        let (tmp, mut file) = self.tmp()?;
        let written = (|| {
            for d in data {
                file.write_all(d)?;
            }
            if sync {
                file.sync_all()?;
            }
            std::fs::create_dir_all(path.parent().expect("a parent"))?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Stores one chunk unless the org has it; returns the bytes added.
    fn put_chunk(&self, data: &[u8]) -> io::Result<(ChunkId, u64)> {
        let id: ChunkId = *blake3::keyed_hash(&self.key, data).as_bytes();
        let path = self.chunk_path(&id);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Ok((id, 0));
        }
        failpoint_full("snapshot.chunk_enospc")?;
        let packed = zstd::bulk::compress(data, ZSTD_LEVEL)?;
        let (codec, body): (&[u8], &[u8]) = if packed.len() < data.len() {
            (b"z", &packed)
        } else {
            (b"r", data)
        };
        self.write_atomically(&path, &[codec, body], false)?;
        Ok((id, 1 + body.len() as u64))
    }

    /// Reads a chunk back and checks it is what its name says.
    pub fn get_chunk(&self, id: &ChunkId, len: u32) -> io::Result<Vec<u8>> {
        let raw = std::fs::read(self.chunk_path(id))?;
        let data = match raw.split_first() {
            Some((b'z', body)) => zstd::bulk::decompress(body, len as usize)?,
            Some((b'r', body)) => body.to_vec(),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a chunk is malformed",
                ));
            }
        };
        if blake3::keyed_hash(&self.key, &data).as_bytes() != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chunk {} does not match its name: the repository is damaged",
                    hex(id)
                ),
            ));
        }
        Ok(data)
    }

    /// Captures the tree under `root` into a manifest for `snapshot`. The
    /// manifest is durable when this returns; nothing refers to the
    /// chunks written before a failure.
    ///
    /// `parent` (the workspace's previous snapshot) lets unchanged files
    /// go unread: a file whose size, modification and change times, device
    /// and inode are what the parent recorded, changed well before the
    /// parent's capture started, and whose chunks are all still stored,
    /// keeps the parent's chunk list. Any doubt reads the file.
    /// `walked` is called once everything has been read from `root`,
    /// before the repository is synced (the workspace can be thawed then).
    pub fn capture(
        &self,
        root: &Path,
        snapshot: Uuid,
        parent: Option<Uuid>,
        walked: &mut dyn FnMut(),
    ) -> Result<CaptureStats, RepoError> {
        std::fs::create_dir_all(self.dir.join("chunks"))?;
        let started = wall_now();
        let parent = parent.map(|p| self.parent_files(p)).unwrap_or_default();
        let mut cap = Capture {
            repo: self,
            entries: Vec::new(),
            stats: CaptureStats::default(),
            links: HashMap::new(),
            parent,
            failed: None,
        };
        let walked_ok = tree::walk(tree::open_root(root)?, &mut cap);
        walked();
        if let Some(e) = cap.failed.take() {
            return Err(e);
        }
        walked_ok?;
        for (nlink, inside, path) in cap.links.values() {
            if inside < nlink {
                return Err(RepoError::Refused(format!(
                    "{}: has a hard link outside the workspace's data, so its bytes are not the \
                     workspace's own",
                    tree::display_path(path)
                )));
            }
        }
        self.write_manifest(snapshot, started, &cap.entries)?;
        Ok(cap.stats)
    }

    fn write_manifest(
        &self,
        snapshot: Uuid,
        started: (i64, u32),
        entries: &[Entry],
    ) -> Result<(), RepoError> {
        let body = encode_manifest(started, entries);
        let packed = zstd::bulk::compress(&body, ZSTD_LEVEL)?;
        let len = (body.len() as u64).to_le_bytes();
        // Ordering: every chunk is on disk before the manifest that names
        // them, and the manifest before the record says `ready`.
        rustix::fs::syncfs(tree::open_root(&self.dir)?).map_err(io::Error::from)?;
        failpoint_full("snapshot.manifest_enospc")?;
        self.write_atomically(&self.manifest_path(snapshot), &[&len, &packed], true)?;
        sync_dir(&self.dir.join("manifests"))?;
        Ok(())
    }

    /// Captures a volume that is not a directory of this host from the
    /// engine's tar of it (its first entry is the volume's root). Every
    /// path is checked to stay inside the volume; sockets and devices are
    /// left out as in [`Self::capture`]; hard links stay links. A tar holds
    /// no inode or change time, so nothing is reused from a parent: every
    /// file is read. An archive of fewer than `expected` entries (what a
    /// count of the volume found) fails the capture: the engine left some
    /// out, and a snapshot must not look whole when it is not.
    pub fn capture_tar(
        &self,
        reader: impl Read,
        snapshot: Uuid,
        expected: u64,
        walked: &mut dyn FnMut(),
    ) -> Result<CaptureStats, RepoError> {
        std::fs::create_dir_all(self.dir.join("chunks"))?;
        let started = wall_now();
        let read = self.read_tar(reader);
        walked();
        let (mut entries, stats, seen) = read?;
        if seen < expected {
            return Err(RepoError::Io(io::Error::other(format!(
                "the engine's archive held {seen} of the {expected} entries of the data; the \
                 snapshot is incomplete and was not kept"
            ))));
        }
        order_entries(&mut entries)?;
        self.write_manifest(snapshot, started, &entries)?;
        Ok(stats)
    }

    fn read_tar(&self, reader: impl Read) -> Result<(Vec<Entry>, CaptureStats, u64), RepoError> {
        let refused =
            |what: &str, p: &[u8]| RepoError::Refused(format!("{}: {what}", tree::display_path(p)));
        let mut archive = tar::Archive::new(reader);
        let mut root: Option<Vec<u8>> = None;
        let mut entries = Vec::new();
        let mut stats = CaptureStats::default();
        let mut seen = 0u64;
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path_bytes().into_owned();
            let Some(root) = root.as_deref() else {
                let mut r = raw.clone();
                if !r.ends_with(b"/") {
                    r.push(b'/');
                }
                root = Some(if r == b"/" || r == b"./" {
                    Vec::new()
                } else {
                    r
                });
                continue;
            };
            let rel = tar_relative(&raw, root);
            if rel.is_empty() {
                continue;
            }
            seen += 1;
            if !valid_path(&rel) {
                return Err(refused(
                    "a path of the engine's archive that leads outside the data",
                    &raw,
                ));
            }
            let h = entry.header();
            let mode = h.mode().unwrap_or(0o600) & 0o1777;
            let mtime = (i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0), 0);
            let kind = h.entry_type();
            let kind = if kind.is_dir() {
                Kind::Dir
            } else if kind.is_symlink() {
                Kind::Symlink(
                    entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                )
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = tar_relative(&target, root);
                if !valid_path(&target) {
                    return Err(refused(
                        "a hard link of the engine's archive to outside the data",
                        &raw,
                    ));
                }
                stats.files += 1;
                Kind::HardLink(target)
            } else if kind.is_fifo() {
                Kind::Fifo
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let size = entry.size();
                let mut chunks = Vec::new();
                let mut read = 0u64;
                for chunk in
                    fastcdc::v2020::StreamCDC::new(&mut entry, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                {
                    let chunk = chunk.map_err(|e| match e {
                        fastcdc::v2020::Error::IoError(e) => RepoError::Io(e),
                        other => RepoError::Io(io::Error::other(other.to_string())),
                    })?;
                    let (id, added) = self.put_chunk(&chunk.data)?;
                    stats.new_bytes += added;
                    read += chunk.data.len() as u64;
                    chunks.push((id, chunk.data.len() as u32));
                }
                if read != size {
                    return Err(RepoError::Io(io::Error::other(format!(
                        "{}: the engine's archive ended inside it",
                        tree::display_path(&raw)
                    ))));
                }
                stats.files += 1;
                stats.bytes += read;
                Kind::File {
                    size,
                    chunks,
                    meta: None,
                }
            } else {
                stats.skipped += 1;
                continue;
            };
            entries.push(Entry {
                path: rel,
                mode,
                mtime,
                kind,
            });
        }
        Ok((entries, stats, seen))
    }

    /// The files of a parent snapshot that a capture may reuse, by path;
    /// empty when the parent's manifest is gone, damaged, or of the first
    /// format (it recorded no identities).
    fn parent_files(&self, parent: Uuid) -> HashMap<Vec<u8>, ParentFile> {
        let manifest = match self.manifest(parent) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%parent, error = %e, "no parent manifest: every file is read");
                return HashMap::new();
            }
        };
        let Some(started) = manifest.started else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for e in manifest.entries {
            if let Kind::File {
                size,
                chunks,
                meta: Some(meta),
            } = e.kind
                && nanos(meta.ctime) + RACY_NANOS < nanos(started)
                && chunks.iter().map(|(_, n)| u64::from(*n)).sum::<u64>() == size
            {
                out.insert(
                    e.path,
                    ParentFile {
                        size,
                        mtime: e.mtime,
                        meta,
                        chunks,
                    },
                );
            }
        }
        out
    }

    pub fn has_manifest(&self, snapshot: Uuid) -> bool {
        self.manifest_path(snapshot).exists()
    }

    pub fn manifest(&self, snapshot: Uuid) -> io::Result<Manifest> {
        let raw = std::fs::read(self.manifest_path(snapshot))?;
        if raw.len() < 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a manifest is truncated",
            ));
        }
        let len = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let body = zstd::bulk::decompress(&raw[8..], usize::try_from(len).unwrap_or(usize::MAX))?;
        decode(&body)
    }

    /// Removes a snapshot's manifest (its chunks go at the next garbage
    /// collection, if nothing else refers to them).
    pub fn remove_manifest(&self, snapshot: Uuid) -> io::Result<()> {
        match std::fs::remove_file(self.manifest_path(snapshot)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes chunks no manifest on disk refers to, and what failed
    /// writes left in `tmp/`. Manifests without a record are kept (and
    /// their chunks with them): the sweeper reports them. Returns the
    /// bytes freed. The caller holds the org's repository lock, so no
    /// capture runs meanwhile.
    pub fn collect_garbage(&self) -> io::Result<u64> {
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("manifests")) {
            for e in entries.flatten() {
                let Some(id) = e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) else {
                    continue;
                };
                for entry in self.manifest(id)?.entries {
                    if let Kind::File { chunks, .. } = entry.kind {
                        referenced.extend(chunks.into_iter().map(|(c, _)| c));
                    }
                }
            }
        }
        let mut freed = 0;
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
        let Ok(buckets) = std::fs::read_dir(self.dir.join("chunks")) else {
            return Ok(0);
        };
        for bucket in buckets.flatten() {
            let Ok(files) = std::fs::read_dir(bucket.path()) else {
                continue;
            };
            for f in files.flatten() {
                let keep = f
                    .file_name()
                    .to_str()
                    .and_then(unhex)
                    .is_some_and(|id| referenced.contains(&id));
                if !keep {
                    freed += f.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(f.path())?;
                }
            }
        }
        Ok(freed)
    }

    /// Bytes the org's chunks take.
    pub fn stored_bytes(&self) -> u64 {
        let mut total = 0;
        for sub in ["chunks", "manifests"] {
            let Ok(buckets) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for b in buckets.flatten() {
                if b.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(files) = std::fs::read_dir(b.path()) {
                        total += files
                            .flatten()
                            .filter_map(|f| f.metadata().ok())
                            .map(|m| m.len())
                            .sum::<u64>();
                    }
                } else {
                    total += b.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        total
    }

    /// Restores a snapshot into `parent/name`, which must not exist: made
    /// fresh, filled, synced. Nothing else writes there (it is under
    /// `staging/`), and it is reached through handles all the same.
    pub fn restore(&self, snapshot: Uuid, parent: &Path, name: &str) -> io::Result<()> {
        let entries = self.manifest(snapshot)?.entries;
        std::fs::create_dir_all(parent)?;
        let parent_fd = tree::open_root(parent)?;
        let cname = CString::new(name).map_err(io::Error::other)?;
        rustix::fs::mkdirat(&parent_fd, &cname, Mode::RWXU)?;
        let root = tree::open_dir_beneath(parent_fd.as_fd(), &cname)?;
        let mut w = Writer {
            frames: vec![WFrame {
                path_len: 0,
                name: CString::default(),
                fd: Some(root),
                mode: 0o700,
                mtime: None,
            }],
            path: Vec::new(),
            files: HashSet::new(),
        };
        for e in &entries {
            w.place(self, e)?;
        }
        w.close_to(0)?;
        rustix::fs::syncfs(&parent_fd)?;
        Ok(())
    }

    /// Writes the snapshot as a `.tar.gz` to `out`.
    pub fn write_tar(&self, snapshot: Uuid, out: &mut dyn Write) -> io::Result<()> {
        let entries = self.manifest(snapshot)?.entries;
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for e in &entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_mtime(u64::try_from(e.mtime.0).unwrap_or(0));
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes_compat(&e.path));
            match &e.kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, path, io::empty())?;
                }
                Kind::Fifo => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_size(0);
                    tar.append_data(&mut h, path, io::empty())?;
                }
                Kind::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(
                        &mut h,
                        path,
                        std::path::Path::new(std::ffi::OsStr::from_bytes_compat(target)),
                    )?;
                }
                Kind::HardLink(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(
                        &mut h,
                        path,
                        std::path::Path::new(std::ffi::OsStr::from_bytes_compat(target)),
                    )?;
                }
                Kind::File { size, chunks, .. } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(*size);
                    let reader = ChunkReader {
                        repo: self,
                        chunks: chunks.iter(),
                        buf: Vec::new(),
                        pos: 0,
                    };
                    tar.append_data(&mut h, path, reader.take(*size))?;
                }
            }
        }
        let gz = tar.into_inner()?;
        gz.finish()?.flush()
    }
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// An archive path relative to the volume's root: the engine names the
/// root `/` (Podman) or `data/` (Docker); a trailing `/` goes too.
fn tar_relative(path: &[u8], root: &[u8]) -> Vec<u8> {
    let rest = path.strip_prefix(root).unwrap_or(path);
    let rest = rest.strip_prefix(b"/").unwrap_or(rest);
    let rest = rest.strip_prefix(b"./").unwrap_or(rest);
    rest.strip_suffix(b"/").unwrap_or(rest).to_vec()
}

/// Puts entries read from an archive in the order a restore needs (every
/// directory before what is in it, a directory's content together), and
/// makes the first name of each hard-linked file, in that order, the one
/// that holds its chunks. Refuses a link to what is not a file of the
/// archive, and a name given twice.
fn order_entries(entries: &mut [Entry]) -> Result<(), RepoError> {
    entries.sort_by(|a, b| {
        a.path
            .split(|c| *c == b'/')
            .cmp(b.path.split(|c| *c == b'/'))
    });
    let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if at.insert(e.path.clone(), i).is_some() {
            return Err(RepoError::Refused(format!(
                "{}: given twice in the engine's archive",
                tree::display_path(&e.path)
            )));
        }
    }
    // target index → the indices of its links
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Kind::HardLink(t) = &e.kind {
            match at.get(t) {
                Some(&ti) if matches!(entries[ti].kind, Kind::File { .. }) => {
                    groups.entry(ti).or_default().push(i);
                }
                _ => {
                    return Err(RepoError::Refused(format!(
                        "{}: a hard link to what is not a file of the archive",
                        tree::display_path(&e.path)
                    )));
                }
            }
        }
    }
    for (target, links) in groups {
        let first = links.iter().copied().chain([target]).min().expect("one");
        if first != target {
            let file = std::mem::replace(&mut entries[target].kind, Kind::Fifo);
            entries[first].kind = file;
        }
        let name = entries[first].path.clone();
        for i in links.into_iter().chain([target]) {
            if i != first {
                entries[i].kind = Kind::HardLink(name.clone());
            }
        }
    }
    Ok(())
}

/// A failpoint that makes a repository write fail as a full disk does
/// (`ENOSPC`), for the tests of a capture on a full disk where no small
/// filesystem can be mounted.
fn failpoint_full(name: &str) -> io::Result<()> {
    if holdfast_domain::failpoint::active(name) {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::NOSPC.raw_os_error(),
        ));
    }
    Ok(())
}

fn wall_now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.subsec_nanos(),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    rustix::fs::fsync(tree::open_root(dir)?)?;
    Ok(())
}

struct ChunkReader<'a, I> {
    repo: &'a OrgRepo,
    chunks: I,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a, I: Iterator<Item = &'a (ChunkId, u32)>> Read for ChunkReader<'a, I> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some((id, len)) = self.chunks.next() else {
                return Ok(0);
            };
            self.buf = self.repo.get_chunk(id, *len)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A file of the parent snapshot, as it recorded it.
struct ParentFile {
    size: u64,
    mtime: (i64, u32),
    meta: FileMeta,
    chunks: Vec<(ChunkId, u32)>,
}

struct Capture<'a> {
    repo: &'a OrgRepo,
    entries: Vec<Entry>,
    stats: CaptureStats,
    /// Files with more than one link: (links, links seen inside, the path
    /// of the one captured; the others are recorded as links to it).
    links: HashMap<FileId, (u64, u64, Vec<u8>)>,
    parent: HashMap<Vec<u8>, ParentFile>,
    /// A repository failure (a full disk) kept apart from the walk's own
    /// errors, so that it is answered as what it is.
    failed: Option<RepoError>,
}

impl Capture<'_> {
    /// Counts a link of a file captured at `path`.
    fn note_link(&mut self, st: &Stat, path: &[u8]) {
        if st.st_nlink > 1 {
            let e = self
                .links
                .entry(tree::file_id(st))
                .or_insert((st.st_nlink, 0, path.to_vec()));
            e.1 += 1;
        }
    }

    /// Another name of a file already captured: recorded as a link to it.
    fn hard_link(&mut self, path: &[u8], st: &Stat) -> bool {
        if st.st_nlink <= 1 {
            return false;
        }
        let Some(e) = self.links.get_mut(&tree::file_id(st)) else {
            return false;
        };
        e.1 += 1;
        let target = e.2.clone();
        self.stats.files += 1;
        self.entries.push(Entry {
            path: path.to_vec(),
            mode: perm(st),
            mtime: mtime_of(st),
            kind: Kind::HardLink(target),
        });
        true
    }

    /// The parent's chunk list of this file, when nothing says it changed.
    fn reuse(&mut self, path: &[u8], st: &Stat) -> bool {
        let Some(p) = self.parent.get(path) else {
            return false;
        };
        let same = u64::try_from(st.st_size).ok() == Some(p.size)
            && mtime_of(st) == p.mtime
            && FileMeta::of(st) == p.meta
            && p.chunks
                .iter()
                .all(|(id, _)| std::fs::symlink_metadata(self.repo.chunk_path(id)).is_ok());
        if !same {
            return false;
        }
        let p = self.parent.remove(path).expect("just found");
        self.note_link(st, path);
        self.stats.files += 1;
        self.stats.bytes += p.size;
        self.stats.reused += 1;
        self.entries.push(Entry {
            path: path.to_vec(),
            mode: perm(st),
            mtime: mtime_of(st),
            kind: Kind::File {
                size: p.size,
                chunks: p.chunks,
                meta: Some(p.meta),
            },
        });
        true
    }

    fn file(&mut self, fd: OwnedFd, path: &[u8], st: &Stat) -> io::Result<()> {
        self.note_link(st, path);
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let file = File::from(fd).take(size);
        let mut chunks = Vec::new();
        let mut read = 0u64;
        for chunk in fastcdc::v2020::StreamCDC::new(file, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => io::Error::other(other.to_string()),
            })?;
            let (id, added) = match self.repo.put_chunk(&chunk.data) {
                Ok(x) => x,
                Err(e) => {
                    let e = RepoError::from(e);
                    let msg = e.to_string();
                    self.failed = Some(e);
                    return Err(io::Error::other(msg));
                }
            };
            self.stats.new_bytes += added;
            read += chunk.data.len() as u64;
            chunks.push((id, chunk.data.len() as u32));
        }
        self.stats.files += 1;
        self.stats.bytes += read;
        // The identity is the one from before the read: a change during
        // the read moves the change time past it, and the next capture
        // reads the file again.
        let meta = (read == size).then(|| FileMeta::of(st));
        self.entries.push(Entry {
            path: path.to_vec(),
            mode: perm(st),
            mtime: mtime_of(st),
            kind: Kind::File {
                size: read,
                chunks,
                meta,
            },
        });
        Ok(())
    }
    fn special(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &Stat,
    ) -> io::Result<()> {
        let kind = match tree::file_type(st) {
            FileType::Symlink => match rustix::fs::readlinkat(parent, name, Vec::new()) {
                Ok(t) => Kind::Symlink(t.into_bytes()),
                // Gone, or no longer a link (EINVAL: swapped for a file or
                // a directory since it was listed): the name changed while
                // it was read, and the snapshot has it as neither.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => {
                    tracing::debug!(path = %tree::display_path(path), "changed while it was read");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            },
            FileType::Fifo => Kind::Fifo,
            _ => {
                self.stats.skipped += 1;
                tracing::debug!(path = %tree::display_path(path), "not captured: a socket or device");
                return Ok(());
            }
        };
        self.entries.push(Entry {
            path: path.to_vec(),
            mode: perm(st),
            mtime: mtime_of(st),
            kind,
        });
        Ok(())
    }
}

impl Visitor for Capture<'_> {
    /// A directory the workspace swapped while it was read (listed as one,
    /// a link or a file when opened, a directory again when looked at):
    /// the name changed under the capture, which has it as neither, as for
    /// the other entries above. Anything else still fails the capture.
    fn unreadable(&mut self, path: &[u8], err: io::Error) -> io::Result<()> {
        let raced = [
            rustix::io::Errno::NOTDIR,
            rustix::io::Errno::LOOP,
            rustix::io::Errno::NOENT,
        ]
        .iter()
        .any(|e| err.raw_os_error() == Some(e.raw_os_error()));
        if raced {
            tracing::debug!(path = %tree::display_path(path), error = %err, "changed while it was read");
            return Ok(());
        }
        Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", tree::display_path(path)),
        ))
    }

    fn dir(&mut self, path: &[u8], st: &Stat) -> io::Result<()> {
        self.entries.push(Entry {
            path: path.to_vec(),
            mode: perm(st),
            mtime: mtime_of(st),
            kind: Kind::Dir,
        });
        Ok(())
    }

    fn entry(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &Stat,
    ) -> io::Result<()> {
        if tree::file_type(st) != FileType::RegularFile {
            return self.special(parent, name, path, st);
        }
        // Neither costs a read, nor can bring in bytes from outside: a
        // link names a file this capture already holds, a reused file
        // holds chunks the parent read from the workspace.
        if self.hard_link(path, st) || self.reuse(path, st) {
            return Ok(());
        }
        // Re-checked on the opened handle: the entry may have been swapped
        // for a link, a FIFO or a device since it was listed.
        let (fd, st) = match tree::open_file_beneath(parent, name) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                // A link now; gone again by the time it is looked at is a
                // name that changed while it was read, as above.
                let st =
                    match rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => st,
                        Err(rustix::io::Errno::NOENT) => return Ok(()),
                        Err(e) => return Err(e.into()),
                    };
                return self.special(parent, name, path, &st);
            }
            Err(e) => return Err(e),
        };
        if tree::file_type(&st) != FileType::RegularFile {
            return self.special(parent, name, path, &st);
        }
        self.file(fd, path, &st)
    }
}

struct WFrame {
    path_len: usize,
    name: CString,
    fd: Option<OwnedFd>,
    mode: u32,
    mtime: Option<(i64, u32)>,
}

/// Writes entries (in the walk's order: a directory before what is in it)
/// beneath a fresh root, keeping at most [`tree::FD_BUDGET`] handles.
struct Writer {
    frames: Vec<WFrame>,
    path: Vec<u8>,
    /// Regular files written so far: the only things a hard link of the
    /// manifest may name.
    files: HashSet<Vec<u8>>,
}

fn times(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: i64::from(mtime.1),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Writer {
    /// Opens frame `i` again from its nearest open ancestor.
    fn fd(&mut self, i: usize) -> io::Result<BorrowedFd<'_>> {
        if self.frames[i].fd.is_none() {
            let k = (0..i)
                .rev()
                .find(|&k| self.frames[k].fd.is_some())
                .expect("the root stays open");
            let mut fd = self.frames[k].fd.as_ref().expect("open").try_clone()?;
            for f in &self.frames[k + 1..=i] {
                fd = tree::open_dir_beneath(fd.as_fd(), &f.name)?;
            }
            self.frames[i].fd = Some(fd);
        }
        Ok(self.frames[i].fd.as_ref().expect("opened").as_fd())
    }

    /// Pops frames down to `keep` of them, setting each directory's mode
    /// and time once everything in it is written.
    fn close_to(&mut self, keep: usize) -> io::Result<()> {
        while self.frames.len() > keep {
            let top = self.frames.len() - 1;
            let (mode, mtime) = (self.frames[top].mode, self.frames[top].mtime);
            {
                let fd = self.fd(top)?;
                if let Some(m) = mtime {
                    rustix::fs::futimens(fd, &times(m))?;
                }
                // The restored root stays 0700 (its owner's), like a new
                // volume; every other directory gets its own mode back.
                if top > 0 {
                    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o1777))?;
                }
            }
            self.frames.pop();
            if keep == 0 && self.frames.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn place(&mut self, repo: &OrgRepo, e: &Entry) -> io::Result<()> {
        let (parent, name) = match e.path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&e.path[..i], &e.path[i + 1..]),
            None => (&e.path[..0], &e.path[..]),
        };
        // The parent is on the stack: pop what lies beside it.
        let depth = self
            .frames
            .iter()
            .rposition(|f| {
                f.path_len == parent.len() && self.path.get(..parent.len()) == Some(parent)
            })
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "a manifest is out of order")
            })?;
        self.close_to(depth + 1)?;
        self.path.truncate(parent.len());
        let name = CString::new(name).map_err(io::Error::other)?;
        let top = self.frames.len() - 1;
        let dir = self.fd(top)?.try_clone_to_owned()?;
        match &e.kind {
            Kind::Dir => {
                rustix::fs::mkdirat(&dir, &name, Mode::RWXU)?;
                let fd = tree::open_dir_beneath(dir.as_fd(), &name)?;
                if !self.path.is_empty() {
                    self.path.push(b'/');
                }
                self.path.extend_from_slice(name.to_bytes());
                self.frames.push(WFrame {
                    path_len: self.path.len(),
                    name,
                    fd: Some(fd),
                    mode: e.mode,
                    mtime: Some(e.mtime),
                });
                let open = self.frames.iter().filter(|f| f.fd.is_some()).count();
                if open > tree::FD_BUDGET {
                    let last = self.frames.len() - 1;
                    if let Some(f) = self.frames[1..last].iter_mut().find(|f| f.fd.is_some()) {
                        f.fd = None;
                    }
                }
            }
            Kind::File { chunks, .. } => {
                let fd = rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::RUSR | Mode::WUSR,
                )?;
                let mut file = File::from(fd);
                for (id, len) in chunks {
                    file.write_all(&repo.get_chunk(id, *len)?)?;
                }
                rustix::fs::futimens(&file, &times(e.mtime))?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(e.mode & 0o1777))?;
                self.files.insert(e.path.clone());
            }
            Kind::HardLink(target) => {
                if !self.files.contains(target) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a manifest links to what is not a file written before it",
                    ));
                }
                // The target's directory, opened from the restored root a
                // component at a time (never through a link): a link is
                // made inside the restored tree only.
                let (tdir, tname) = match target.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&target[..i], &target[i + 1..]),
                    None => (&target[..0], &target[..]),
                };
                let mut fd = self.fd(0)?.try_clone_to_owned()?;
                for c in tdir.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
                    let c = CString::new(c).map_err(io::Error::other)?;
                    fd = tree::open_dir_beneath(fd.as_fd(), &c)?;
                }
                let tname = CString::new(tname).map_err(io::Error::other)?;
                rustix::fs::linkat(&fd, &tname, &dir, &name, rustix::fs::AtFlags::empty())?;
            }
            Kind::Symlink(target) => {
                let target = CString::new(target.clone()).map_err(io::Error::other)?;
                rustix::fs::symlinkat(&target, &dir, &name)?;
            }
            Kind::Fifo => {
                rustix::fs::mknodat(
                    &dir,
                    &name,
                    FileType::Fifo,
                    Mode::from_raw_mode(e.mode & 0o777),
                    0,
                )?;
            }
        }
        Ok(())
    }
}

/// Restores `snapshot` as `<staging>/<name>` (removing a leftover of an
/// interrupted attempt first). Returns the directory.
pub fn stage(repo: &OrgRepo, staging: &Path, snapshot: Uuid, name: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(staging)?;
    tree::erase_tree(staging, name)?;
    repo.restore(snapshot, staging, name)?;
    Ok(staging.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir, dir) {
            out.push(e);
        }
        out.sort();
        out
    }

    fn walk(root: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else if t.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                out.extend(walk(root, &p));
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    fn repo(dir: &Path) -> OrgRepo {
        Repo::new(dir).org(Uuid::new_v4(), &new_key()).unwrap()
    }

    #[test]
    fn capture_and_restore_round_trip_with_dedup() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).unwrap();
        std::fs::write(vol.join("a/b/f"), vec![7u8; 3 * 1024 * 1024]).unwrap();
        std::fs::write(vol.join("small"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", vol.join("link")).unwrap();
        let repo = repo(top.path());
        let s1 = Uuid::new_v4();
        let st = repo.capture(&vol, s1, None, &mut || {}).unwrap();
        assert_eq!(st.files, 2);
        assert_eq!(st.bytes, 3 * 1024 * 1024 + 5);
        assert!(st.new_bytes > 0);
        let again = repo
            .capture(&vol, Uuid::new_v4(), None, &mut || {})
            .unwrap();
        assert_eq!(again.new_bytes, 0, "unchanged data costs nothing");
        let staging = top.path().join("staging");
        let out = stage(&repo, &staging, s1, "new").unwrap();
        assert_eq!(files(&out), files(&vol));
        let mut tar = Vec::new();
        repo.write_tar(s1, &mut tar).unwrap();
        assert!(tar.len() > 10);
    }

    #[test]
    fn deep_trees_restore_with_bounded_handles() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let mut fd = tree::open_root(&vol).unwrap();
        for _ in 0..(tree::FD_BUDGET * 3) {
            rustix::fs::mkdirat(&fd, c"d", Mode::RWXU).unwrap();
            let f = rustix::fs::openat(
                &fd,
                c"x",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::RUSR | Mode::WUSR,
            )
            .unwrap();
            rustix::io::write(&f, b"1").unwrap();
            rustix::fs::mkdirat(&fd, c"side", Mode::RWXU).unwrap();
            fd = tree::open_dir_beneath(fd.as_fd(), c"d").unwrap();
        }
        let repo = repo(top.path());
        let s = Uuid::new_v4();
        let st = repo.capture(&vol, s, None, &mut || {}).unwrap();
        assert_eq!(st.files, tree::FD_BUDGET as u64 * 3);
        stage(&repo, &top.path().join("staging"), s, "r").unwrap();
        assert_eq!(
            tree::tree_size(&top.path().join("staging/r")).unwrap(),
            tree::FD_BUDGET as u64 * 3
        );
    }

    #[test]
    fn garbage_collection_keeps_what_manifests_name() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("f"), vec![1u8; 1000]).unwrap();
        let repo = repo(top.path());
        let s1 = Uuid::new_v4();
        repo.capture(&vol, s1, None, &mut || {}).unwrap();
        std::fs::write(vol.join("f"), vec![2u8; 1000]).unwrap();
        let s2 = Uuid::new_v4();
        repo.capture(&vol, s2, None, &mut || {}).unwrap();
        assert_eq!(repo.collect_garbage().unwrap(), 0);
        repo.remove_manifest(s1).unwrap();
        assert!(repo.collect_garbage().unwrap() > 0);
        let staging = top.path().join("staging");
        let out = stage(&repo, &staging, s2, "x").unwrap();
        assert_eq!(std::fs::read(out.join("f")).unwrap(), vec![2u8; 1000]);
    }

    #[test]
    fn a_restore_never_sets_set_user_or_group_id() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(vol.join("tool"), std::fs::Permissions::from_mode(0o6755))
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        // Positive control: the planted file has the bits.
        assert_eq!(mode(&vol.join("tool")), 0o6755);
        let repo = repo(top.path());
        let s = Uuid::new_v4();
        repo.capture(&vol, s, None, &mut || {}).unwrap();
        let out = stage(&repo, &top.path().join("staging"), s, "r").unwrap();
        assert_eq!(mode(&out.join("tool")), 0o755);
    }

    #[test]
    fn a_hard_link_from_outside_is_refused() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(top.path().join("secret"), b"s").unwrap();
        std::fs::hard_link(top.path().join("secret"), vol.join("in")).unwrap();
        let repo = repo(top.path());
        assert!(matches!(
            repo.capture(&vol, Uuid::new_v4(), None, &mut || {}),
            Err(RepoError::Refused(_))
        ));
    }

    fn set_mtime(path: &Path, t: std::time::SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn unchanged_files_are_reused_from_the_parent_and_any_doubt_reads_again() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir_all(vol.join("d")).unwrap();
        for i in 0..5u8 {
            std::fs::write(vol.join(format!("d/f{i}")), vec![i; 300_000]).unwrap();
        }
        std::fs::write(vol.join("same"), b"kept as it was").unwrap();
        std::fs::write(vol.join("touched"), b"old content").unwrap();
        std::fs::write(vol.join("replaced"), b"first").unwrap();
        // Older than the racy window of the first capture.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        // Changed just before the parent's capture: too close to trust.
        std::fs::write(vol.join("racy"), b"racy").unwrap();
        let repo = repo(top.path());
        let s1 = Uuid::new_v4();
        let first = repo.capture(&vol, s1, None, &mut || {}).unwrap();
        assert_eq!((first.files, first.reused), (9, 0));

        let s2 = Uuid::new_v4();
        let second = repo.capture(&vol, s2, Some(s1), &mut || {}).unwrap();
        // Every file but the racy one came from the parent unread.
        assert_eq!((second.files, second.reused, second.new_bytes), (9, 8, 0));
        assert_eq!(second.bytes, first.bytes);

        // Same size, same modification time, new bytes: the change time
        // tells. A file deleted and made again with the same size and time
        // is a new inode or a new change time.
        let mtime = std::fs::metadata(vol.join("touched"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(vol.join("touched"), b"new content").unwrap();
        set_mtime(&vol.join("touched"), mtime);
        let mtime = std::fs::metadata(vol.join("replaced"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::remove_file(vol.join("replaced")).unwrap();
        std::fs::write(vol.join("replaced"), b"again").unwrap();
        set_mtime(&vol.join("replaced"), mtime);
        let s3 = Uuid::new_v4();
        let third = repo.capture(&vol, s3, Some(s2), &mut || {}).unwrap();
        assert_eq!(third.files, 9);
        // f0..f4 and same; not touched nor replaced, nor racy (the second
        // capture started within the window of its change too).
        assert_eq!(third.reused, 6);
        let out = stage(&repo, &top.path().join("staging"), s3, "r").unwrap();
        assert_eq!(files(&out), files(&vol));
        assert_eq!(std::fs::read(out.join("touched")).unwrap(), b"new content");

        // A parent whose manifest is gone: everything is read.
        repo.remove_manifest(s3).unwrap();
        let fourth = repo
            .capture(&vol, Uuid::new_v4(), Some(s3), &mut || {})
            .unwrap();
        assert_eq!(fourth.reused, 0);
    }

    #[test]
    fn a_reused_file_whose_chunk_is_missing_is_read_again() {
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("f"), vec![3u8; 10_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let repo = repo(top.path());
        let s1 = Uuid::new_v4();
        repo.capture(&vol, s1, None, &mut || {}).unwrap();
        let control = repo
            .capture(&vol, Uuid::new_v4(), Some(s1), &mut || {})
            .unwrap();
        assert_eq!(control.reused, 1);
        let Kind::File { chunks, .. } = &repo.manifest(s1).unwrap().entries[0].kind else {
            panic!("a file entry");
        };
        std::fs::remove_file(repo.chunk_path(&chunks[0].0)).unwrap();
        let st = repo
            .capture(&vol, Uuid::new_v4(), Some(s1), &mut || {})
            .unwrap();
        assert_eq!(st.reused, 0);
        assert!(st.new_bytes > 0, "the chunk is stored again");
    }

    #[test]
    fn hard_links_are_stored_once_and_restored_as_links_inside_the_tree() {
        use std::os::unix::fs::MetadataExt;
        let top = tempfile::tempdir().unwrap();
        let vol = top.path().join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("orig"), vec![9u8; 200_000]).unwrap();
        std::fs::hard_link(vol.join("orig"), vol.join("sub/second")).unwrap();
        std::fs::hard_link(vol.join("orig"), vol.join("third")).unwrap();
        std::fs::write(vol.join("alone"), b"alone").unwrap();
        let repo = repo(top.path());
        let s = Uuid::new_v4();
        let st = repo.capture(&vol, s, None, &mut || {}).unwrap();
        assert_eq!(st.files, 4);
        assert_eq!(st.bytes, 200_000 + 5, "the linked bytes count once");
        let entries = repo.manifest(s).unwrap().entries;
        let links = entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::HardLink(_)))
            .count();
        assert_eq!(links, 2);
        let out = stage(&repo, &top.path().join("staging"), s, "r").unwrap();
        assert_eq!(files(&out), files(&vol));
        let ino = |p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
        assert_eq!(ino("orig"), ino("sub/second"));
        assert_eq!(ino("orig"), ino("third"));
        assert_ne!(ino("orig"), ino("alone"));
        assert_eq!(std::fs::metadata(out.join("orig")).unwrap().nlink(), 3);
        // The export says the same: one file, two links to it.
        let mut tgz = Vec::new();
        repo.write_tar(s, &mut tgz).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let kinds: Vec<(String, tar::EntryType)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .filter(|(_, t)| *t != tar::EntryType::Directory)
            .collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|(_, t)| *t == tar::EntryType::Link)
                .count(),
            2,
            "{kinds:?}"
        );
    }

    #[test]
    fn a_manifest_linking_to_what_it_has_not_written_restores_nothing() {
        let top = tempfile::tempdir().unwrap();
        let repo = repo(top.path());
        std::fs::write(top.path().join("outside"), b"secret").unwrap();
        let s = Uuid::new_v4();
        let entries = vec![
            Entry {
                path: b"d".to_vec(),
                mode: 0o755,
                mtime: (0, 0),
                kind: Kind::Symlink(b"..".to_vec()),
            },
            Entry {
                path: b"l".to_vec(),
                mode: 0o644,
                mtime: (0, 0),
                kind: Kind::HardLink(b"d/outside".to_vec()),
            },
        ];
        let body = encode_manifest((0, 0), &entries);
        let packed = zstd::bulk::compress(&body, 3).unwrap();
        std::fs::create_dir_all(repo.dir.join("manifests")).unwrap();
        repo.write_atomically(
            &repo.manifest_path(s),
            &[&(body.len() as u64).to_le_bytes(), &packed],
            true,
        )
        .unwrap();
        let err = stage(&repo, &top.path().join("staging"), s, "r").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_first_format_manifest_still_restores() {
        let top = tempfile::tempdir().unwrap();
        let repo = repo(top.path());
        let (id, _) = repo.put_chunk(b"old format").unwrap();
        // Magic, then one file entry as the first format wrote it.
        let mut body = MAGIC_V1.to_vec();
        body.push(b'f');
        put_u32(&mut body, 0o644);
        body.extend_from_slice(&0i64.to_le_bytes());
        put_u32(&mut body, 0);
        put_bytes(&mut body, b"f");
        put_u64(&mut body, 10);
        put_u32(&mut body, 1);
        body.extend_from_slice(&id);
        put_u32(&mut body, 10);
        let m = decode(&body).unwrap();
        assert_eq!(m.started, None);
        assert!(matches!(&m.entries[0].kind, Kind::File { meta: None, .. }));
        let s = Uuid::new_v4();
        let packed = zstd::bulk::compress(&body, 3).unwrap();
        std::fs::create_dir_all(repo.dir.join("manifests")).unwrap();
        repo.write_atomically(
            &repo.manifest_path(s),
            &[&(body.len() as u64).to_le_bytes(), &packed],
            true,
        )
        .unwrap();
        let out = stage(&repo, &top.path().join("staging"), s, "r").unwrap();
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"old format");
        // And as a parent it offers nothing to reuse.
        assert!(repo.parent_files(s).is_empty());
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "data/", io::empty()).unwrap();
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn add(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        body: &[u8],
        link: &str,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        if link.is_empty() {
            b.append_data(&mut h, path, body).unwrap();
        } else {
            b.append_link(&mut h, path, link).unwrap();
        }
    }

    #[test]
    fn an_engine_archive_is_captured_in_restore_order_with_its_hard_links() {
        use std::os::unix::fs::MetadataExt;
        use tar::EntryType as T;
        let top = tempfile::tempdir().unwrap();
        let repo = repo(top.path());
        // Out of order (a file before its directory, a link before the
        // name the archive calls its target), as an engine may write.
        let raw = tar_of(|b| {
            add(b, T::Regular, "data/z/late", b"zzz", "");
            add(b, T::Directory, "data/z", b"", "");
            add(b, T::Regular, "data/b", b"linked bytes", "");
            add(b, T::Link, "data/a", b"", "data/b");
            add(b, T::Symlink, "data/l", b"", "/etc/passwd");
            add(b, T::Char, "data/dev", b"", "");
        });
        let s = Uuid::new_v4();
        let st = repo.capture_tar(&raw[..], s, 6, &mut || {}).unwrap();
        assert_eq!((st.files, st.bytes, st.skipped), (3, 15, 1));
        let out = stage(&repo, &top.path().join("staging"), s, "r").unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"linked bytes");
        let ino = |p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
        assert_eq!(std::fs::read(out.join("z/late")).unwrap(), b"zzz");
        assert_eq!(
            std::fs::read_link(out.join("l")).unwrap(),
            Path::new("/etc/passwd")
        );
        // Fewer entries than the count found: not kept.
        let s2 = Uuid::new_v4();
        assert!(repo.capture_tar(&raw[..], s2, 7, &mut || {}).is_err());
        assert!(!repo.has_manifest(s2));
    }

    #[test]
    fn an_engine_archive_leading_outside_is_refused() {
        use tar::EntryType as T;
        let top = tempfile::tempdir().unwrap();
        let repo = repo(top.path());
        for bad in [
            tar_of(|b| add(b, T::Link, "data/x", b"", "data/../../etc/passwd")),
            tar_of(|b| add(b, T::Link, "data/x", b"", "data/missing")),
        ] {
            let s = Uuid::new_v4();
            assert!(matches!(
                repo.capture_tar(&bad[..], s, 0, &mut || {}),
                Err(RepoError::Refused(_))
            ));
            assert!(!repo.has_manifest(s));
        }
        // Positive control: the same archive with a sound link is kept.
        let good = tar_of(|b| {
            add(b, T::Regular, "data/missing", b"here", "");
            add(b, T::Link, "data/x", b"", "data/missing");
        });
        repo.capture_tar(&good[..], Uuid::new_v4(), 2, &mut || {})
            .unwrap();
    }
}

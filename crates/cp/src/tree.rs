//! Walks over untrusted workspace data through directory handles.
//!
//! A workspace may plant symbolic links, hard links, FIFOs, devices, huge or
//! deep trees and odd names, and may change its tree **while** it is walked
//! (swap a directory for a link mid-walk). Every walk here therefore:
//!
//! - opens the root once and reaches everything else with `openat2` relative
//!   to an already-open directory handle, one name at a time, with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` and
//!   `O_NOFOLLOW`: a path is never resolved twice, and a link swapped in
//!   mid-walk fails the open instead of leading outside (runc CVE-2021-30465);
//! - opens files with `O_NONBLOCK` and checks what it opened with `fstat`, so
//!   a FIFO or device never blocks it and is never read;
//! - is iterative with an explicit stack, keeps names as bytes, and holds a
//!   bounded number of descriptors whatever the depth (a directory handle is
//!   kept only while the directory still has subdirectories to visit, and
//!   past [`FD_BUDGET`] the shallowest ones are closed and re-opened later,
//!   checked by device and inode).
//!
//! Erasure ([`erase_tree`]) does not walk at all: it flattens the tree into
//! its root by renaming each subdirectory up, so depth never matters and it
//! holds three descriptors.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;

/// How many directory handles one walk keeps open before it closes the
/// shallowest (the server's limit is typically 1,024 to 20,000, shared by
/// every request).
pub const FD_BUDGET: usize = 128;

/// How many directory entries are read at a time.
const BATCH: usize = 512;

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// Whether `openat2` exists (Linux 5.6+); older kernels fall back to
/// `openat` with `O_NOFOLLOW` on a single name, which gives the same
/// guarantee for one component.
fn openat_beneath(parent: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> io::Result<OwnedFd> {
    match rustix::fs::openat2(parent, name, flags, Mode::empty(), resolve()) {
        Err(Errno::NOSYS) => {
            debug_assert!(!name.to_bytes().contains(&b'/'));
            Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
        }
        // EAGAIN: openat2 asks for a retry when a rename raced the lookup.
        Err(Errno::AGAIN) => Ok(rustix::fs::openat2(
            parent,
            name,
            flags,
            Mode::empty(),
            resolve(),
        )?),
        other => Ok(other?),
    }
}

/// Opens the directory `name` beneath `parent` (never through a link).
pub fn open_dir_beneath(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat_beneath(parent, name, dir_flags())
}

/// Opens `name` beneath `parent` for reading without following a link and
/// without blocking (a FIFO swapped in opens and reads nothing). The caller
/// checks the returned stat: only a regular file is read.
pub fn open_file_beneath(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<(OwnedFd, Stat)> {
    let fd = openat_beneath(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
    )?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st))
}

/// Opens a root directory by path (a path of holdfast's own, such as
/// `<data-dir>/volumes/<id>`), refusing a link in its last component.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, dir_flags(), Mode::empty())?)
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn stat_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// A `(device, inode)` pair: what a file is, whatever its name.
pub type FileId = (u64, u64);

pub fn file_id(st: &Stat) -> FileId {
    (st.st_dev, st.st_ino)
}

/// Reads the next batch of names of `dir` (without `.` and `..`); empty at
/// the end.
fn next_batch(dir: &mut Dir) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    while names.len() < BATCH {
        match dir.read() {
            None => break,
            Some(entry) => {
                let entry = entry?;
                let name = entry.file_name();
                let bytes = name.to_bytes();
                if bytes != b"." && bytes != b".." {
                    names.push(name.to_owned());
                }
            }
        }
    }
    Ok(names)
}

/// What a walk reports. Paths are relative to the root, `/`-separated
/// bytes, without a leading `/`.
pub trait Visitor {
    /// A directory, just opened (its stat is the opened handle's).
    fn dir(&mut self, path: &[u8], st: &Stat) -> io::Result<()>;
    /// Anything that is not a directory: a regular file, a link, a FIFO, a
    /// socket, a device. `parent` is the handle of its directory.
    fn entry(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &Stat,
    ) -> io::Result<()>;
    /// An entry the walk could not open (permissions, or a directory that
    /// changed identity during the walk). The default fails the walk.
    fn unreadable(&mut self, path: &[u8], err: io::Error) -> io::Result<()> {
        Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", display_path(path)),
        ))
    }
}

/// A path for messages: the bytes, with anything unprintable escaped.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::new();
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.len() > 300 {
        let cut = out
            .char_indices()
            .map(|(i, _)| i)
            .take_while(|i| *i <= 300)
            .last()
            .unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

struct Frame {
    /// Open while the directory has subdirectories left to visit (or until
    /// the budget closes it).
    fd: Option<OwnedFd>,
    id: FileId,
    /// Its name in its parent (empty for the root).
    name: CString,
    /// Length of the walk's path up to and including this directory.
    path_len: usize,
    /// Subdirectories still to visit.
    pending: Vec<CString>,
}

/// Walks the tree under `root` (an open directory handle), depth first.
pub fn walk(root: OwnedFd, visitor: &mut impl Visitor) -> io::Result<()> {
    let st = rustix::fs::fstat(&root)?;
    let mut path: Vec<u8> = Vec::new();
    let mut frames = vec![Frame {
        fd: Some(root),
        id: file_id(&st),
        name: CString::default(),
        path_len: 0,
        pending: Vec::new(),
    }];
    list(&mut frames, &mut path, visitor)?;
    // Handles open in `frames`.
    let mut open = 1usize;
    while let Some(top) = frames.len().checked_sub(1) {
        let Some(name) = frames[top].pending.pop() else {
            if frames.pop().is_some_and(|f| f.fd.is_some()) {
                open -= 1;
            }
            if let Some(parent) = frames.last() {
                path.truncate(parent.path_len);
            }
            continue;
        };
        open += reopen(&mut frames, top)?;
        path.truncate(frames[top].path_len);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.to_bytes());
        let parent = frames[top].fd.as_ref().expect("reopened").as_fd();
        match open_dir_beneath(parent, &name) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if frames[top].pending.is_empty() && top > 0 {
                    // Nothing else to open here: the handle is not needed.
                    frames[top].fd = None;
                    open -= 1;
                }
                visitor.dir(&path, &st)?;
                frames.push(Frame {
                    fd: Some(fd),
                    id: file_id(&st),
                    name,
                    path_len: path.len(),
                    pending: Vec::new(),
                });
                open += 1;
                open -= trim(&mut frames, open);
                list(&mut frames, &mut path, visitor)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // ELOOP / ENOTDIR: swapped for a link or a file since it was
            // listed; report what it is now.
            Err(e) if is_not_a_dir(&e) => match stat_at(parent, &name) {
                Ok(st) if file_type(&st) != FileType::Directory => {
                    visitor.entry(parent, &name, &path, &st)?;
                }
                Ok(_) => visitor.unreadable(&path, e)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => visitor.unreadable(&path, e)?,
            },
            Err(e) => visitor.unreadable(&path, e)?,
        }
    }
    Ok(())
}

fn is_not_a_dir(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(Errno::LOOP.raw_os_error()) || raw == Some(Errno::NOTDIR.raw_os_error())
}

/// Lists the top frame: every non-directory goes to the visitor at once,
/// subdirectories are kept to visit.
fn list(frames: &mut [Frame], path: &mut Vec<u8>, visitor: &mut impl Visitor) -> io::Result<()> {
    let top = frames.last_mut().expect("a frame");
    let fd = top.fd.as_ref().expect("just opened");
    let mut dir = Dir::read_from(fd)?;
    let base = top.path_len;
    loop {
        let names = match next_batch(&mut dir) {
            Ok(n) => n,
            Err(e) => {
                path.truncate(base);
                return visitor.unreadable(path, e);
            }
        };
        if names.is_empty() {
            break;
        }
        for name in names {
            let st = match stat_at(fd.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file_type(&st) == FileType::Directory {
                top.pending.push(name);
                continue;
            }
            path.truncate(base);
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.to_bytes());
            visitor.entry(fd.as_fd(), &name, path, &st)?;
        }
    }
    path.truncate(base);
    Ok(())
}

/// Keeps at most [`FD_BUDGET`] handles open: closes the shallowest ones
/// below the root (they are re-opened when the walk comes back up).
/// Returns how many it closed.
fn trim(frames: &mut [Frame], open: usize) -> usize {
    if open <= FD_BUDGET {
        return 0;
    }
    let excess = open - FD_BUDGET;
    let mut closed = 0;
    let last = frames.len() - 1;
    for f in frames[1..last].iter_mut() {
        if closed == excess {
            break;
        }
        if f.fd.take().is_some() {
            closed += 1;
        }
    }
    closed
}

/// Makes sure `frames[i]` has an open handle: re-opens it name by name from
/// the nearest open ancestor, checking each directory is still the one
/// first opened (a moved or swapped directory fails the walk). Returns how
/// many handles it opened (0 or 1).
fn reopen(frames: &mut [Frame], i: usize) -> io::Result<usize> {
    if frames[i].fd.is_some() {
        return Ok(0);
    }
    let k = (0..i)
        .rev()
        .find(|&k| frames[k].fd.is_some())
        .expect("the root stays open");
    let mut fd = frames[k].fd.as_ref().expect("open").try_clone()?;
    for frame in frames.iter().take(i + 1).skip(k + 1) {
        let next = open_dir_beneath(fd.as_fd(), &frame.name)?;
        if file_id(&rustix::fs::fstat(&next)?) != frame.id {
            return Err(io::Error::other(
                "a directory was moved while it was being read",
            ));
        }
        fd = next;
    }
    frames[i].fd = Some(fd);
    Ok(1)
}

/// Total bytes of the regular files under `root` (each hard-linked file
/// once); links, FIFOs, sockets and devices count zero. What cannot be read
/// is left out of the count. A missing root is 0.
pub fn tree_size(root: &Path) -> io::Result<u64> {
    struct Size {
        total: u64,
        seen: HashSet<FileId>,
    }
    impl Visitor for Size {
        fn dir(&mut self, _: &[u8], _: &Stat) -> io::Result<()> {
            Ok(())
        }
        fn entry(&mut self, _: BorrowedFd<'_>, _: &CStr, _: &[u8], st: &Stat) -> io::Result<()> {
            if file_type(st) == FileType::RegularFile
                && (st.st_nlink <= 1 || self.seen.insert(file_id(st)))
            {
                self.total = self
                    .total
                    .saturating_add(u64::try_from(st.st_size).unwrap_or(0));
            }
            Ok(())
        }
        fn unreadable(&mut self, path: &[u8], err: io::Error) -> io::Result<()> {
            tracing::debug!(path = %display_path(path), error = %err, "not counted");
            Ok(())
        }
    }
    let fd = match open_root(root) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut size = Size {
        total: 0,
        seen: HashSet::new(),
    };
    walk(fd, &mut size)?;
    Ok(size.total)
}

/// What a walk counted of a tree: the independent tally an engine's
/// archive of the same tree is checked against (the container backend's
/// size and export run it inside a helper container, `holdfast census`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    /// Every entry under the root (directories, files, links, anything
    /// else; unreadable ones too), the root itself not counted.
    pub entries: u64,
    /// Bytes of the regular files (each hard-linked file once).
    pub bytes: u64,
    /// The longest path under the root, in bytes, and its depth.
    pub longest: u64,
    pub depth: u64,
}

impl Census {
    /// One line: `entries=N bytes=B longest=L depth=D`.
    pub fn to_line(&self) -> String {
        format!(
            "entries={} bytes={} longest={} depth={}",
            self.entries, self.bytes, self.longest, self.depth
        )
    }

    /// Reads what [`Self::to_line`] wrote (the last such line of `text`).
    pub fn parse(text: &str) -> Option<Census> {
        let line = text.lines().rev().find(|l| l.starts_with("entries="))?;
        let mut c = Census::default();
        for field in line.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "entries" => c.entries = v,
                "bytes" => c.bytes = v,
                "longest" => c.longest = v,
                "depth" => c.depth = v,
                _ => return None,
            }
        }
        Some(c)
    }
}

/// Counts the tree under `root` (see [`Census`]). Nothing is opened but
/// directories; what cannot be opened is counted as an entry.
pub fn census(root: &Path) -> io::Result<Census> {
    struct Count {
        c: Census,
        seen: HashSet<FileId>,
    }
    impl Count {
        fn path(&mut self, path: &[u8]) {
            self.c.entries += 1;
            let len = path.len() as u64;
            if len > self.c.longest {
                self.c.longest = len;
                self.c.depth = path.iter().filter(|b| **b == b'/').count() as u64 + 1;
            }
        }
    }
    impl Visitor for Count {
        fn dir(&mut self, path: &[u8], _: &Stat) -> io::Result<()> {
            self.path(path);
            Ok(())
        }
        fn entry(&mut self, _: BorrowedFd<'_>, _: &CStr, path: &[u8], st: &Stat) -> io::Result<()> {
            self.path(path);
            if file_type(st) == FileType::RegularFile
                && (st.st_nlink <= 1 || self.seen.insert(file_id(st)))
            {
                self.c.bytes = self
                    .c
                    .bytes
                    .saturating_add(u64::try_from(st.st_size).unwrap_or(0));
            }
            Ok(())
        }
        fn unreadable(&mut self, path: &[u8], _: io::Error) -> io::Result<()> {
            // The engine's archiver, which is not confined like our helper,
            // may still read it: it counts.
            if !path.is_empty() {
                self.path(path);
            }
            Ok(())
        }
    }
    let mut count = Count {
        c: Census::default(),
        seen: HashSet::new(),
    };
    walk(open_root(root)?, &mut count)?;
    Ok(count.c)
}

/// `holdfast census DIR`: prints the [`Census`] of `DIR` on stdout (the
/// container backend's helper runs it on a volume).
pub fn census_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let [dir] = args else {
        eprintln!("usage: holdfast census DIR");
        return std::process::ExitCode::from(2);
    };
    match census(Path::new(dir)) {
        Ok(c) => {
            println!("{}", c.to_line());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("holdfast census: {}: {e}", Path::new(dir).display());
            std::process::ExitCode::FAILURE
        }
    }
}

/// Removes `dir/name` and everything under it; returns the bytes of
/// regular files removed (hard-linked files once). Never follows a link
/// (links are unlinked; their targets untouched), never opens anything but
/// directories, and holds three handles whatever the depth: each
/// subdirectory is first renamed up into the root being erased, so the
/// tree becomes flat. Directories the workspace made unreadable or
/// unwritable are given back their owner's permissions first. A missing
/// entry removes nothing and is not an error.
pub fn erase_tree(dir: &Path, name: &str) -> io::Result<u64> {
    let parent = match open_root(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let name = CString::new(name).map_err(io::Error::other)?;
    let st = match stat_at(parent.as_fd(), &name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if file_type(&st) != FileType::Directory {
        rustix::fs::unlinkat(&parent, &name, AtFlags::empty())?;
        return Ok(regular_size(&st));
    }
    let root = open_dir_fixing(parent.as_fd(), &name)?;
    let mut bytes = 0u64;
    let mut seen: HashSet<FileId> = HashSet::new();
    let mut flat = 0u64;
    // Names of directories directly under `root` still to empty; `None`
    // is the root itself.
    let mut queue: Vec<Option<CString>> = vec![None];
    while let Some(entry) = queue.pop() {
        let d = match &entry {
            None => root.try_clone()?,
            Some(n) => match open_dir_fixing(root.as_fd(), n) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        let mut fixed = false;
        loop {
            // Entries are removed while the directory is read; reading it
            // again from the start until it is empty is what makes sure
            // none is missed.
            let mut iter = Dir::read_from(&d)?;
            let mut any = false;
            loop {
                let names = next_batch(&mut iter)?;
                if names.is_empty() {
                    break;
                }
                any = true;
                for child in names {
                    let st = match stat_at(d.as_fd(), &child) {
                        Ok(st) => st,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    if file_type(&st) == FileType::Directory {
                        if entry.is_none() {
                            queue.push(Some(child));
                            continue;
                        }
                        // Flatten: move it up into the root under a fresh
                        // name (never replacing anything).
                        loop {
                            flat += 1;
                            let to =
                                CString::new(format!(".holdfast-erase-{flat}")).expect("no NUL");
                            match rustix::fs::renameat_with(
                                &d,
                                &child,
                                &root,
                                &to,
                                RenameFlags::NOREPLACE,
                            ) {
                                Ok(()) => {
                                    queue.push(Some(to));
                                    break;
                                }
                                Err(Errno::EXIST) => continue,
                                Err(Errno::NOENT) => break,
                                Err(Errno::ACCESS | Errno::PERM) if !fixed => {
                                    // Moving a directory rewrites its `..`:
                                    // both need write permission.
                                    fix_dir(d.as_fd())?;
                                    fix_at(d.as_fd(), &child);
                                    fixed = true;
                                    flat -= 1;
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        continue;
                    }
                    if file_type(&st) == FileType::RegularFile
                        && (st.st_nlink <= 1 || seen.insert(file_id(&st)))
                    {
                        bytes = bytes.saturating_add(regular_size(&st));
                    }
                    match rustix::fs::unlinkat(&d, &child, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(Errno::ACCESS | Errno::PERM) if !fixed => {
                            fix_dir(d.as_fd())?;
                            fixed = true;
                            rustix::fs::unlinkat(&d, &child, AtFlags::empty())?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !any || entry.is_none() {
                break;
            }
        }
        if let Some(n) = &entry {
            drop(d);
            match rustix::fs::unlinkat(&root, n, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                // Something was added meanwhile: empty it again.
                Err(Errno::NOTEMPTY) => queue.push(Some(n.clone())),
                Err(e) => return Err(e.into()),
            }
        } else if !queue.is_empty() {
            // The root's own subdirectories are queued; it is removed last.
            queue.insert(0, None);
            continue_root(&mut queue);
        }
    }
    drop(root);
    match rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(bytes),
        Err(e) => Err(e.into()),
    }
}

/// The root is listed again only once everything queued is done: keep a
/// single `None` at the bottom of the queue.
fn continue_root(queue: &mut Vec<Option<CString>>) {
    let mut seen_root = false;
    queue.retain(|e| {
        if e.is_none() {
            if seen_root {
                return false;
            }
            seen_root = true;
        }
        true
    });
}

fn regular_size(st: &Stat) -> u64 {
    if file_type(st) == FileType::RegularFile {
        u64::try_from(st.st_size).unwrap_or(0)
    } else {
        0
    }
}

/// Opens a directory to erase, giving it back `rwx` for its owner first if
/// the workspace took that away.
fn open_dir_fixing(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    match open_dir_beneath(parent, name) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fix_at(parent, name);
            open_dir_beneath(parent, name)
        }
        other => other,
    }
}

fn fix_dir(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::RWXU)?)
}

/// `chmod u+rwx` of `name` without following a link (fchmodat2, Linux 6.6+;
/// where it is missing the entry is left as it is and the erase reports the
/// permission error it then meets).
fn fix_at(parent: BorrowedFd<'_>, name: &CStr) {
    let _ = rustix::fs::chmodat(parent, name, Mode::RWXU, AtFlags::SYMLINK_NOFOLLOW);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    struct Collect(Vec<String>);
    impl Visitor for Collect {
        fn dir(&mut self, path: &[u8], _: &Stat) -> io::Result<()> {
            self.0.push(format!("d {}", display_path(path)));
            Ok(())
        }
        fn entry(&mut self, _: BorrowedFd<'_>, _: &CStr, path: &[u8], st: &Stat) -> io::Result<()> {
            let kind = match file_type(st) {
                FileType::RegularFile => "f",
                FileType::Symlink => "l",
                FileType::Fifo => "p",
                _ => "?",
            };
            self.0.push(format!("{kind} {}", display_path(path)));
            Ok(())
        }
    }

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .unwrap();
    }

    #[test]
    fn a_census_counts_every_entry_at_any_depth_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("top"), b"12345").unwrap();
        std::fs::hard_link(r.join("top"), r.join("again")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("l")).unwrap();
        // 3,000 levels: past PATH_MAX, reached through handles only.
        let mut fd = open_root(r).unwrap();
        for _ in 0..3000 {
            rustix::fs::mkdirat(&fd, "a", Mode::RWXU).unwrap();
            fd = open_dir_beneath(fd.as_fd(), c"a").unwrap();
        }
        let f =
            rustix::fs::openat(&fd, "leaf", OFlags::CREATE | OFlags::WRONLY, Mode::RUSR).unwrap();
        rustix::io::write(&f, b"bottom").unwrap();
        let c = census(r).unwrap();
        // top, again, l, 3,000 directories and the leaf; 5 + 6 bytes (the
        // hard-linked file once); the leaf's path "a/…/a/leaf".
        assert_eq!(
            c,
            Census {
                entries: 3 + 3000 + 1,
                bytes: 11,
                longest: 2 * 3000 + 4,
                depth: 3001,
            }
        );
        assert_eq!(Census::parse(&format!("noise\n{}\n", c.to_line())), Some(c));
        assert_eq!(Census::parse("entries=1 bytes=x"), None);
    }

    #[test]
    fn walk_reports_links_and_fifos_without_following_and_keeps_byte_names() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), vec![0u8; 1000]).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), vec![0u8; 10]).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        mkfifo(&r.join("fifo"));
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9\n");
        std::fs::write(r.join(odd), b"xy").unwrap();
        let mut c = Collect(Vec::new());
        walk(open_root(r).unwrap(), &mut c).unwrap();
        c.0.sort();
        assert_eq!(
            c.0,
            [
                "d a",
                "d a/b",
                "f a/b/f",
                "f caf\\xe9\\n",
                "l link",
                "p fifo"
            ]
        );
        assert_eq!(tree_size(r).unwrap(), 12, "links and FIFOs count zero");
    }

    #[test]
    fn hard_links_count_once() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), vec![1u8; 100]).unwrap();
        std::fs::hard_link(root.path().join("a"), root.path().join("b")).unwrap();
        assert_eq!(tree_size(root.path()).unwrap(), 100);
    }

    /// A chain deeper than any path limit and than the handle budget:
    /// walked completely with bounded handles, erased completely.
    fn deep_chain(root: &Path, depth: usize) {
        let mut fd = open_root(root).unwrap();
        for i in 0..depth {
            let name = CString::new(if i % 2 == 0 { "dd" } else { "e" }).unwrap();
            rustix::fs::mkdirat(&fd, &name, Mode::RWXU).unwrap();
            let f = rustix::fs::openat(
                &fd,
                c"file",
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .unwrap();
            rustix::io::write(&f, b"x").unwrap();
            // A sibling directory keeps the parent's handle pending, which
            // exercises the budget's close-and-reopen.
            if i % 3 == 0 {
                rustix::fs::mkdirat(&fd, c"side", Mode::RWXU).unwrap();
            }
            fd = open_dir_beneath(fd.as_fd(), &name).unwrap();
        }
    }

    #[test]
    fn deep_trees_are_walked_and_erased_completely() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        deep_chain(&root, 3000);
        let mut c = Collect(Vec::new());
        walk(open_root(&root).unwrap(), &mut c).unwrap();
        let files = c.0.iter().filter(|l| l.starts_with("f ")).count();
        assert_eq!(files, 3000);
        let deepest = c.0.iter().map(String::len).max().unwrap();
        assert!(deepest > 300, "paths are reported whole: {deepest}");
        assert_eq!(tree_size(&root).unwrap(), 3000);
        assert_eq!(erase_tree(top.path(), "vol").unwrap(), 3000);
        assert!(!root.exists());
    }

    #[test]
    fn erase_never_leaves_the_tree_and_fixes_permissions() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vol");
        std::fs::create_dir_all(root.join("locked/inner")).unwrap();
        std::fs::write(root.join("locked/inner/f"), b"abc").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("locked/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), root.join("k")).unwrap();
        mkfifo(&root.join("fifo"));
        // Clashes with the names the flattening uses.
        std::fs::create_dir(root.join(".holdfast-erase-1")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        assert_eq!(erase_tree(top.path(), "vol").unwrap(), 3);
        assert!(!root.exists());
        assert!(outside.path().join("keep").exists());
        assert_eq!(erase_tree(top.path(), "vol").unwrap(), 0, "missing is fine");
    }

    #[test]
    fn a_root_that_is_a_link_is_unlinked_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        let top = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("vol")).unwrap();
        assert_eq!(erase_tree(top.path(), "vol").unwrap(), 0);
        assert!(outside.path().join("keep").exists());
        assert!(open_root(&top.path().join("nothing")).is_err());
    }
}

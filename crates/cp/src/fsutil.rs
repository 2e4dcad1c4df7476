//! Filesystem walks over untrusted workspace data: never follow a symbolic
//! link, never open a FIFO or device, never leave the given root.

use std::io;
use std::path::Path;

/// Total size in bytes of the regular files under `root`. Symbolic links are
/// counted as links (not followed); FIFOs, sockets and devices count as zero
/// and are never opened.
pub fn dir_size(root: &Path) -> io::Result<u64> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A directory the workspace made unreadable, or one removed while
            // we walk: count what we can see rather than fail the whole walk.
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not traverse symbolic links.
            let Ok(meta) = entry.metadata() else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Removes `path` and everything under it, without following symbolic links
/// (std's `remove_dir_all` unlinks links instead of descending into them).
/// A missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `path` and everything under it, returning the bytes of regular
/// files removed. Never follows a symbolic link (links are unlinked, their
/// targets untouched) and never opens a file, so a FIFO cannot block it. A
/// directory the workspace made unwritable is made writable first (the walk
/// stays inside `path`). A missing path removes nothing and is not an error.
pub fn remove_tree_counting(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        let bytes = if meta.is_file() { meta.len() } else { 0 };
        std::fs::remove_file(path)?;
        return Ok(bytes);
    }
    let mut bytes = 0u64;
    // Post-order walk: a directory is removed after its entries.
    let mut stack: Vec<(std::path::PathBuf, bool)> = vec![(path.to_path_buf(), false)];
    while let Some((dir, expanded)) = stack.pop() {
        if expanded {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                std::fs::read_dir(&dir)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        stack.push((dir.clone(), true));
        let mut made_writable = false;
        for entry in entries {
            let entry = entry?;
            // From the directory entry (d_type): no stat, no link followed.
            let ft = entry.file_type()?;
            let child = entry.path();
            if ft.is_dir() {
                stack.push((child, false));
                continue;
            }
            if ft.is_file() {
                bytes = bytes.saturating_add(entry.metadata().map(|m| m.len()).unwrap_or(0));
            }
            match std::fs::remove_file(&child) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !made_writable => {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                    made_writable = true;
                    std::fs::remove_file(&child)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_ignores_links_and_fifos_and_removal_stays_inside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), vec![0u8; 1000]).unwrap();
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).unwrap();
        std::fs::write(vol.join("a/b/f"), vec![0u8; 10]).unwrap();
        std::os::unix::fs::symlink(outside.path(), vol.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), vol.join("flink")).unwrap();
        let fifo = vol.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(dir_size(&vol).unwrap(), 10);
        let copy = root.path().join("copy");
        assert!(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&vol)
                .arg(&copy)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            remove_tree_counting(&copy).unwrap(),
            10,
            "links and FIFOs count zero"
        );
        assert!(!copy.exists());
        remove_tree(&vol).unwrap();
        assert!(!vol.exists());
        assert!(
            outside.path().join("secret").exists(),
            "a link's target is never touched"
        );
    }
}

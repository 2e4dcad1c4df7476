//! Architecture invariants checked against the source tree itself.
//!
//! **Architecture Invariant:** only the user's delete with `erase_data=true`
//! reaches `ControlPlane::stop_and_prune`. Its one allowed call site in the
//! platform is `finish_removal_locked` in `crates/platform/src/delete.rs`,
//! which calls it only for a workspace removed with erase. The control
//! plane's HTTP edge (`stop` in `crates/cp/src/http_server.rs`) is the far
//! end of that same call when the control plane is remote: it reaches the
//! prune path only for `DELETE …?prune=true`, which only `HttpCp`'s
//! `stop_and_prune` sends. Tests (files under a `tests/` folder) may call it.
//! Any other caller fails this test.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `stop_and_prune(` call outside comments and definitions, as
/// `(file relative to the repo, enclosing fn)`.
fn prune_call_sites(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut sites = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Tests may exercise the prune path directly.
        if rel.split('/').any(|part| part == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if !code.contains("stop_and_prune(") || code.contains("fn stop_and_prune") {
                continue;
            }
            let enclosing = lines[..i]
                .iter()
                .rev()
                .find_map(|l| {
                    let l = l.trim_start();
                    let at = l.find("fn ")?;
                    let head = &l[..at];
                    if !head
                        .split_whitespace()
                        .all(|w| matches!(w, "pub" | "pub(crate)" | "async" | "const" | "unsafe"))
                    {
                        return None;
                    }
                    let name: String = l[at + 3..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    Some(name)
                })
                .unwrap_or_default();
            sites.push((rel.clone(), enclosing));
        }
    }
    sites.sort();
    sites
}

#[test]
fn only_the_erase_delete_flow_reaches_the_prune_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let sites = prune_call_sites(&root);
    assert_eq!(
        sites,
        vec![
            ("crates/cp/src/http_server.rs".to_owned(), "stop".to_owned()),
            (
                "crates/platform/src/delete.rs".to_owned(),
                "finish_removal_locked".to_owned()
            ),
        ],
        "stop_and_prune may only be called from the delete-with-erase flow"
    );
    // And there, only behind the erase choice recorded at delete time.
    let delete = std::fs::read_to_string(root.join("crates/platform/src/delete.rs")).unwrap();
    let guard = delete
        .find("if ws.delete_erase == Some(true) {")
        .expect("erase guard present");
    let call = delete.find("stop_and_prune(").expect("call present");
    let between = &delete[guard.min(call)..call.max(guard)];
    assert!(
        guard < call && between.lines().count() <= 4 && !between.contains('}'),
        "the call sits directly inside the erase guard"
    );
}

#[test]
fn only_the_http_client_prune_sends_prune_true() {
    // The control plane's edge prunes on `prune=true`; the only sender is
    // `HttpCp::stop_and_prune`, itself reached only from `finish_removal_locked`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let senders: Vec<String> = files
        .iter()
        .filter(|f| {
            !f.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .split('/')
                .any(|p| p == "tests")
        })
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("(\"prune\", \"true\"")
        })
        .map(|f| {
            f.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(senders, vec!["crates/cp/src/http_client.rs".to_owned()]);
}

#[test]
fn the_scanner_sees_a_new_call_site() {
    // The check above must be able to fail: plant a caller in a scratch tree.
    let dir = tempfile_dir();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/restart.rs"),
        "async fn restart(cp: &Cp) {\n    // stop_and_prune( in a comment does not count\n    cp.stop_and_prune(id, None, \"x\").await;\n}\n\
         fn stop_and_prune(&self) {}\n",
    )
    .unwrap();
    let sites = prune_call_sites(&dir);
    assert_eq!(
        sites,
        vec![("src/restart.rs".to_owned(), "restart".to_owned())]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

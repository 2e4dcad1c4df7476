//! Architecture invariants checked against the source tree itself.
//!
//! **Architecture Invariant:** only the user's delete with `erase_data=true`
//! reaches `ControlPlane::stop_and_prune`. Its one allowed call site outside
//! the control plane is `finish_removal_locked` in
//! `crates/controller/src/delete.rs`,
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
            (
                "crates/controller/src/delete.rs".to_owned(),
                "finish_removal_locked".to_owned()
            ),
            ("crates/cp/src/http_server.rs".to_owned(), "stop".to_owned()),
        ],
        "stop_and_prune may only be called from the delete-with-erase flow"
    );
    // And there, only behind the erase choice recorded at delete time.
    let delete = std::fs::read_to_string(root.join("crates/controller/src/delete.rs")).unwrap();
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
    // The control plane's edge prunes on `prune=true` (a `StopQuery` with
    // `prune: true`); the only sender is
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
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("prune: true"))
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

/// Source text with comments, string and char literals blanked out, so that
/// only code is left to tokenise (a `"{"` or a `// stop_and_prune(` counts
/// for nothing).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(b.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(b.len(), |n| i + n + 2);
            i = end;
        } else if let Some(hashes) = raw_string_start(rest) {
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes; // r, hashes, quote
            let end = rest[body..]
                .find(&close)
                .map_or(b.len(), |n| i + body + n + close.len());
            out.push_str("\"\"");
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
        } else if b[i] == b'\'' && (rest.starts_with("'\\") || rest.chars().nth(2) == Some('\'')) {
            // A char literal ('{', '\n', '\''); a lifetime has no closing quote.
            let end = rest[2..].find('\'').map_or(b.len(), |n| i + 2 + n + 1);
            out.push_str("' '");
            i = end;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"…"`, `r#"…"#`: the number of hashes.
fn raw_string_start(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('r')?;
    let hashes = rest.chars().take_while(|c| *c == '#').count();
    rest[hashes..].starts_with('"').then_some(hashes)
}

/// Every `fn` of the `.rs` files under `dir`: name → (file, body), bodies
/// being the code between the function's braces.
fn functions(dir: &Path) -> Vec<(String, String, String)> {
    functions_under(dir, &[dir])
}

/// [`functions`] of several folders, each file named relative to `base`.
fn functions_under(base: &Path, dirs: &[&Path]) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(dir, &mut files);
    }
    // Sorted, so that the walk (and the chains it reports) is the same on
    // every file system.
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let mut from = 0;
        while let Some(at) = code[from..].find("fn ") {
            let start = from + at;
            from = start + 3;
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = code[start + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue;
            }
            // The body: from the first `{` (or a `;` for a declaration).
            let Some(open) = code[start..].find(['{', ';']).map(|n| start + n) else {
                continue;
            };
            if code.as_bytes()[open] == b';' {
                continue;
            }
            let mut depth = 0;
            let mut end = open;
            for (k, c) in code[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            out.push((name, rel.clone(), code[open..=end].to_owned()));
        }
    }
    out
}

fn identifiers(code: &str) -> std::collections::BTreeSet<&str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The names that mean erasing data: the control plane's prune, and the
/// platform function that dispatches a removal to it.
const ERASE_PATH: &[&str] = &["stop_and_prune", "finish_removal_locked", "finish_removal"];

/// Starting from every function defined in the files under `dir` whose
/// path starts with one of `roots`, follows every identifier that names a
/// function defined under `dir` (by name alone: a method and a free
/// function of the same name are one node, which can only add edges) and
/// returns each reachable function that names the erase path, with the
/// chain that reached it.
fn erase_path_reachable_from(dir: &Path, roots: &[&str]) -> Vec<String> {
    erase_path_reachable_in(functions(dir), roots)
}

/// [`erase_path_reachable_from`] over functions already gathered.
fn erase_path_reachable_in(fns: Vec<(String, String, String)>, roots: &[&str]) -> Vec<String> {
    let mut by_name: std::collections::HashMap<&str, Vec<&(String, String, String)>> =
        std::collections::HashMap::new();
    for f in &fns {
        by_name.entry(f.0.as_str()).or_default().push(f);
    }
    let mut seen = std::collections::HashSet::new();
    let mut queue: std::collections::VecDeque<(&(String, String, String), String)> = fns
        .iter()
        .filter(|f| roots.iter().any(|r| f.1.starts_with(r)))
        .map(|f| (f, format!("{}::{}", f.1, f.0)))
        .collect();
    let mut found = Vec::new();
    while let Some((f, chain)) = queue.pop_front() {
        if !seen.insert((f.0.as_str(), f.1.as_str(), f.2.len())) {
            continue;
        }
        let words = identifiers(&f.2);
        for bad in ERASE_PATH {
            if words.contains(bad) {
                found.push(format!("{chain} names {bad}"));
            }
        }
        for w in words {
            if w == f.0 {
                continue;
            }
            for callee in by_name.get(w).into_iter().flatten() {
                queue.push_back((callee, format!("{chain} -> {}::{}", callee.1, callee.0)));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_org_import_cannot_reach_the_erase_path() {
    // Everything the org module (import, export, their plan) calls, and
    // everything that calls, never names the prune nor the function that
    // dispatches a removal to it: a reconcile's removals go through
    // `finish_retaining_removal`, which only stops and retains.
    // The walk covers the platform (the handlers, the document, the plan)
    // and the controller (the import's write and the removals it finishes).
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs = [crates.join("platform/src"), crates.join("controller/src")];
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let fns = functions_under(&crates, &dirs);
    let reached = erase_path_reachable_in(
        fns.clone(),
        &[
            "platform/src/org.rs",
            "platform/src/org/",
            "controller/src/org.rs",
        ],
    );
    assert_eq!(reached, Vec::<String>::new());
    // The walk did see the org module, the controller's write and the
    // retaining removal it uses.
    assert!(
        fns.iter()
            .any(|f| f.0 == "import_org" && f.1 == "platform/src/org.rs")
    );
    assert!(
        fns.iter()
            .any(|f| f.0 == "apply_import" && f.1 == "controller/src/org.rs")
    );
    assert!(fns.iter().any(|f| f.0 == "finish_retaining_removal"));
    // And the removals it writes ask for no erase, by the SQL itself.
    let store = std::fs::read_to_string(crates.join("store/src/import.rs")).unwrap();
    assert!(store.contains("delete_erase = 0") && !store.contains("delete_erase = $"));
}

#[test]
fn the_reachability_check_sees_a_planted_call() {
    // Positive control: a scratch tree whose org module calls, two hops
    // away, the function that erases. The call hides behind a helper, and
    // decoys (a comment, a string) must not count.
    let dir = tempfile_dir().join("reach");
    std::fs::create_dir_all(dir.join("org")).unwrap();
    std::fs::write(
        dir.join("org.rs"),
        "pub async fn import_org(app: &App) {\n    // finish_removal_locked( in a comment\n    let s = \"stop_and_prune(\";\n    app.apply_plan().await;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("org/apply.rs"),
        "impl App {\n    async fn apply_plan(&self) { let c = '{'; self.helper().await }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("delete.rs"),
        "impl App {\n    async fn helper(&self) { self.finish_removal_locked(ws, \"x\").await }\n    \
         async fn finish_removal_locked(&self) { self.cp.stop_and_prune(id, None, \"x\").await }\n    \
         async fn unrelated(&self) { self.cp.stop_and_prune(id, None, \"x\").await }\n}\n",
    )
    .unwrap();
    let reached = erase_path_reachable_from(&dir, &["org.rs", "org/"]);
    assert_eq!(
        reached,
        vec![
            "org/apply.rs::apply_plan -> delete.rs::helper -> delete.rs::finish_removal_locked names stop_and_prune".to_owned(),
            "org/apply.rs::apply_plan -> delete.rs::helper names finish_removal_locked".to_owned(),
        ]
    );
    // Without the planted call, the same tree is clean.
    std::fs::write(
        dir.join("delete.rs"),
        "impl App {\n    async fn helper(&self) { self.cp.stop(id, None).await }\n    \
         async fn finish_removal_locked(&self) { self.cp.stop_and_prune(id, None, \"x\").await }\n}\n",
    )
    .unwrap();
    assert_eq!(
        erase_path_reachable_from(&dir, &["org.rs", "org/"]),
        Vec::<String>::new()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

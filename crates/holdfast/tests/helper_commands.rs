//! The programs a helper Pod runs over the API's exec (the Kubernetes
//! backend reads a claim with them): `holdfast census DIR` prints the count
//! of the tree, `holdfast archive DIR` writes its export to stdout, or
//! refuses with exit 3 and the reason before writing anything.

use std::process::Command;

fn holdfast(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .output()
        .expect("the holdfast binary runs")
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("memory")).unwrap();
    std::fs::write(dir.path().join("memory/notes.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join("top"), b"12345678").unwrap();
    dir
}

#[test]
fn archive_writes_the_export_of_the_dir_and_census_counts_it() {
    let dir = tree();
    let out = holdfast(&["archive".as_ref(), dir.path().as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&out.stdout[..]));
    let mut seen: Vec<String> = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut e, &mut body).unwrap();
        seen.push(format!("{name}={body}"));
    }
    seen.sort();
    assert_eq!(seen, ["memory/notes.txt=hello", "memory=", "top=12345678"]);
    let out = holdfast(&["census".as_ref(), dir.path().as_os_str()]);
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with("entries=3 bytes=13 "), "{line}");
}

#[test]
fn archive_refuses_a_socket_with_exit_3_and_writes_nothing() {
    let dir = tree();
    let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let out = holdfast(&["archive".as_ref(), dir.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent.sock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = holdfast(&["archive".as_ref()]);
    assert_eq!(out.status.code(), Some(2), "usage");
}

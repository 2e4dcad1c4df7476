//! `cargo xtask test`: every check CI runs, in order: formatting, lints, then
//! every test of the workspace (unit tests, the store and architecture tests,
//! and the black-box API suite against the real binary).

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;

fn run(root: &Path, what: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> {what}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn have_nextest(root: &Path) -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .current_dir(root)
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run_all(root: &Path) -> anyhow::Result<()> {
    run(root, "format", "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        root,
        "lints",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    if have_nextest(root) {
        // nextest does not run doc tests. They go first so that the run ends
        // on nextest's summary of every test.
        run(
            root,
            "doc tests",
            "cargo",
            &["test", "--workspace", "--doc"],
        )?;
        run(
            root,
            "tests",
            "cargo",
            &["nextest", "run", "--workspace", "--no-fail-fast"],
        )?;
    } else {
        eprintln!("cargo-nextest not found; falling back to cargo test");
        run(
            root,
            "tests",
            "cargo",
            &["test", "--workspace", "--no-fail-fast"],
        )?;
    }
    Ok(())
}

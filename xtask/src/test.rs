//! `cargo xtask test`: every check CI runs, in order: formatting, lints, then
//! every test of the workspace (unit tests, the store and architecture tests,
//! and the black-box API suite against the real binary), then the canvas's
//! browser tests (`tests/browser`, Debian's Chromium driven by playwright-core).
//! The API suite also runs against a remote control plane, on a throwaway
//! PostgreSQL cluster, and on the container backend against a throwaway
//! Podman (`podman.rs`); schemathesis checks the OpenAPI document against
//! a running server (`schemathesis.rs`); the Kubernetes manifests are
//! validated and played on Podman (`kubernetes.rs`).

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The control-plane contract on the container backend (nextest filters).
const CONTRACT_ON_CONTAINERS: &str = "binary(cp_contract) & test(/_on_containers$/)";
const CONTRACT_ON_CONTAINERS_EXCLUDED: &str = "not (binary(cp_contract) & test(/_on_containers$/))";

fn run(root: &Path, what: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_env(root, what, &[], program, args)
}

/// Like [`run`], with the environment variables `env` set for the command.
fn run_with_env(
    root: &Path,
    what: &str,
    env: &[(&str, &str)],
    program: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!(
        "==> {what}: {} {program} {}",
        vars.join(" "),
        args.join(" ")
    );
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
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
    // A throwaway PostgreSQL for the tests that need one (dropped, and so
    // stopped, when this function returns). Under CI a missing PostgreSQL
    // is installed, or the run fails.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let postgres = crate::postgres::Cluster::start(ci)?;
    // The sandbox tests need bubblewrap; under CI it is installed when
    // missing (outside CI those tests skip and say why).
    if ci && !on_path("bwrap") {
        run(
            root,
            "install bubblewrap",
            "sh",
            &["-c", "apt-get update && apt-get install -y bubblewrap"],
        )?;
    }
    let db_env: Vec<(&str, &str)> = postgres
        .as_ref()
        .map(|c| vec![("HOLDFAST_TEST_DATABASE_URL", c.url.as_str())])
        .unwrap_or_default();
    let api = [
        "nextest",
        "run",
        "-p",
        "holdfast",
        "--test",
        "api",
        "--no-fail-fast",
    ];
    if have_nextest(root) {
        // nextest does not run doc tests. They go first so that the run ends
        // on nextest's summary of every test.
        run(
            root,
            "doc tests",
            "cargo",
            &["test", "--workspace", "--doc"],
        )?;
        // The API suite twice more: against a `holdfast cp serve` of its own
        // per test (SPEC §9: the platform behaves the same with a remote
        // control plane), and on PostgreSQL. They run before the whole
        // workspace and their failures are reported after it, so that the
        // run still ends on nextest's summary of every test.
        let remote_env = [db_env.clone(), vec![("HOLDFAST_TEST_CP", "remote")]].concat();
        let remote = run_with_env(
            root,
            "API tests with a remote control plane",
            &remote_env,
            "cargo",
            &api,
        );
        let on_containers = containers(root, ci, &db_env, &api);
        let on_postgres = match &postgres {
            Some(_) => {
                let env = [db_env.clone(), vec![("HOLDFAST_TEST_STORE", "postgres")]].concat();
                run_with_env(root, "API tests on PostgreSQL", &env, "cargo", &api)
            }
            None => Ok(()),
        };
        // The store's tests and the replica tests use PostgreSQL through
        // HOLDFAST_TEST_DATABASE_URL. The contract's container subjects ran
        // in the container phase, against its engine: here they would have
        // none (and under CI that is a failure).
        run_with_env(
            root,
            "tests",
            &db_env,
            "cargo",
            &[
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "-E",
                CONTRACT_ON_CONTAINERS_EXCLUDED,
            ],
        )?;
        remote?;
        on_postgres?;
        on_containers?;
    } else {
        eprintln!("cargo-nextest not found; falling back to cargo test");
        run_with_env(
            root,
            "tests",
            &db_env,
            "cargo",
            &["test", "--workspace", "--no-fail-fast"],
        )?;
    }
    // Stopped before the browser tests, so that the run's last line is the
    // browser tests' summary (or nextest's).
    drop(postgres);
    // The Kubernetes backend's manifests: validated against the API
    // schemas, and run for real with podman kube play.
    crate::kubernetes::run(root, ci)?;
    // The OpenAPI document against the server it describes.
    crate::schemathesis::run(root, ci)?;
    // What an SDK generator makes of it, driven against the server.
    crate::sdk::run(root, ci)?;
    browser(root)
}

/// The API suite and the control-plane contract on the container backend,
/// against a Podman of its own (started here, stopped when this returns).
/// Outside CI a host without Podman skips them and says why.
fn containers(root: &Path, ci: bool, db_env: &[(&str, &str)], api: &[&str]) -> anyhow::Result<()> {
    run(
        root,
        "build holdfast",
        "cargo",
        &["build", "-p", "holdfast"],
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let Some(engine) = crate::podman::Engine::start(ci, &target.join("debug/holdfast"))? else {
        return Ok(());
    };
    let env = engine.test_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The replica tests need the throwaway PostgreSQL too.
    let env = [db_env, &env[..]].concat();
    let suite = run_with_env(
        root,
        "API tests on the container backend",
        &env,
        "cargo",
        api,
    );
    // SPEC §14: the control-plane contract holds on every backend.
    let contract = run_with_env(
        root,
        "control-plane contract on the container backend",
        &env,
        "cargo",
        &[
            "nextest",
            "run",
            "-p",
            "holdfast",
            "--test",
            "cp_contract",
            "--no-fail-fast",
            "-E",
            CONTRACT_ON_CONTAINERS,
        ],
    );
    suite?;
    contract
}

/// The canvas's browser tests. Outside CI a machine without Chromium skips
/// them (with a message saying how to get it); under CI they must run, so
/// Chromium is installed when missing and a failed install fails the run.
fn browser(root: &Path) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !Path::new(CHROMIUM).exists() {
        if !ci {
            eprintln!(
                "skipping browser tests: {CHROMIUM} not installed (apt-get install -y chromium)"
            );
            return Ok(());
        }
        run(root, "install chromium", "apt-get", &["update"])?;
        run(
            root,
            "install chromium",
            "apt-get",
            &["install", "-y", "chromium"],
        )?;
        if !Path::new(CHROMIUM).exists() {
            bail!("apt-get installed chromium but {CHROMIUM} is still missing");
        }
    }
    let dir = root.join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists()
        || !dir.join("node_modules/axe-core").exists()
    {
        run(
            &dir,
            "browser test dependencies",
            "npm",
            &["ci", "--no-audit", "--no-fund"],
        )?;
    }
    run(
        root,
        "build holdfast",
        "cargo",
        &["build", "-p", "holdfast"],
    )?;
    // Where cargo put it: CARGO_TARGET_DIR when set.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from);
    let bin = target.join("debug/holdfast");
    eprintln!("==> browser tests: node --test (in tests/browser)");
    // Node's TAP reporter closes with `# pass N` and `# fail M`; they are
    // echoed as they come and summed into the run's last line.
    let mut child = Command::new("node")
        .args(["--test", "--test-reporter=tap", "--test-concurrency=1"])
        .current_dir(&dir)
        .env("HOLDFAST_BIN", &bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("running node (the browser tests need Node.js 20 or newer)")?;
    let (mut passed, mut failed) = (None, None);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading the browser tests' output")?;
            println!("{line}");
            let count = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|n| n.trim().parse::<u64>().ok())
            };
            passed = count("# pass ").or(passed);
            failed = count("# fail ").or(failed);
        }
    }
    let status = child.wait().context("waiting for the browser tests")?;
    let (Some(passed), Some(failed)) = (passed, failed) else {
        bail!("the browser tests printed no summary ({status})");
    };
    println!("browser: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 || passed == 0 {
        bail!("browser tests failed ({status})");
    }
    Ok(())
}

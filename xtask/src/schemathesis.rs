//! `cargo xtask test`'s schemathesis step: the OpenAPI document is checked
//! against the server it describes. A release `holdfast serve` is started on
//! a free port with a fresh data dir, seeded with a few workspaces, and
//! schemathesis (pinned) runs every check against `/openapi.json`; any
//! failure fails the run.

use crate::bench::server::Server;
use anyhow::{Context, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// schemathesis, pinned exactly: its CLI and its checks change between
/// releases (3.x and 4.x differ a lot).
const PIN: &str = "4.32.5";

/// Test cases per operation and phase: enough to find what the schema gets
/// wrong, few enough to finish in a few minutes on two cores.
const MAX_EXAMPLES: &str = "25";

/// A fixed seed, so that a run is reproducible and CI's verdict on a commit
/// does not depend on luck; change it to explore further.
const SEED: &str = "7420";

const TOKEN: &str = "holdfast-schemathesis-admin-token";

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn installed(st: &Path) -> bool {
    Command::new(st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(PIN))
}

/// Installs the pinned schemathesis into a venv of its own under `target/`.
fn install(venv: &Path) -> anyhow::Result<()> {
    eprintln!("==> install schemathesis {PIN} into {}", venv.display());
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (schemathesis needs Python 3.9 or newer)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", &format!("schemathesis=={PIN}")])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install schemathesis=={PIN} failed ({status})");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
}

pub fn run(root: &Path, ci: bool) -> anyhow::Result<()> {
    let target = target_dir(root);
    let venv = target.join(format!("schemathesis-{PIN}"));
    let st = venv.join("bin/st");
    if !installed(&st)
        && let Err(e) = install(&venv)
    {
        if ci {
            return Err(e);
        }
        eprintln!("skipping the schemathesis step: {e:#}");
        return Ok(());
    }
    // HOLDFAST_BIN: check a binary already built (as the browser tests do).
    let bin = match std::env::var_os("HOLDFAST_BIN") {
        Some(b) => PathBuf::from(b),
        None => crate::bench::build_server(root)?,
    };
    let data_dir = target.join(format!("schemathesis-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run_against(root, &bin, &st, &data_dir));
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn run_against(root: &Path, bin: &Path, st: &Path, data_dir: &Path) -> anyhow::Result<()> {
    // The generated workspaces run the commands schemathesis makes up: in
    // bubblewrap where the host has it (CI installs it), so that a made-up
    // argv sees nothing of the host but /usr and /etc.
    let sandbox: &[&str] = if on_path("bwrap") {
        &["--sandbox", "bwrap"]
    } else {
        &[]
    };
    let server = Server::start_with_args(bin, data_dir, TOKEN.to_owned(), sandbox).await?;
    let outcome = seed_and_check(root, st, &server).await;
    if let Err(e) = server.stop().await {
        eprintln!("schemathesis: stopping holdfast serve: {e:#}");
    }
    outcome
}

async fn seed_and_check(root: &Path, st: &Path, server: &Server) -> anyhow::Result<()> {
    // Something for every kind of id to find: a command runtime, a parent
    // with a child, and a removed workspace (whose data is retained).
    let command = json!({ "command": ["sh", "-c", "exec sleep 1000"] });
    server
        .create_workspace(&json!({ "name": "lone", "runtime": command }))
        .await?;
    let (parent, _) = server
        .create_workspace(&json!({ "name": "parent", "runtime": command }))
        .await?;
    server
        .create_workspace(&json!({ "name": "child", "parent_id": parent.id, "runtime": command }))
        .await?;
    let (gone, _) = server
        .create_workspace(&json!({ "name": "gone", "runtime": command }))
        .await?;
    server.delete_workspace_keeping_data(&gone).await?;

    let config = root.join("xtask/schemathesis.toml");
    let schema = format!("{}/openapi.json", server.url);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let args: Vec<&str> = vec![
        "--config-file",
        config
            .to_str()
            .context("a UTF-8 path to xtask/schemathesis.toml")?,
        "run",
        &schema,
        "--checks",
        "all",
        // A removed workspace stays readable (status `removed`, its data
        // record, export and restore) for its retention grace: that is what
        // lets a delete be undone. use_after_free expects a 404 after a
        // DELETE.
        "--exclude-checks",
        "use_after_free",
        "-H",
        &auth,
        // An event stream never ends, and schemathesis reads a response
        // whole; the stream's events are covered by the API suite.
        "--exclude-path",
        "/events",
        // Likewise a followed log (`follow=true`) stays open for as long as
        // the client reads; the API suite covers the route, both ways.
        "--exclude-path",
        "/workspaces/{id}/logs",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        // One worker: Python 3.11's parser is not safe to use from several
        // threads at once, which hypothesis does with more.
        "--workers",
        "1",
        // A message to a starting runtime waits up to 30 s for it.
        "--request-timeout",
        "40",
    ];
    eprintln!("==> schemathesis: {} {}", st.display(), args.join(" "));
    let status = tokio::process::Command::new(st)
        .args(&args)
        .current_dir(root)
        .status()
        .await
        .context("running schemathesis")?;
    if !status.success() {
        eprintln!("holdfast serve's last output:\n{}", server.recent_output());
        bail!("schemathesis found failures ({status})");
    }
    Ok(())
}

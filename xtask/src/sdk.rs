//! `cargo xtask test`'s SDK step: a Python client is generated from the
//! server's `/openapi.json` by openapi-python-client (pinned, from PyPI),
//! and `xtask/sdk/check_client.py` drives the server through it: create,
//! get, list, a delete refused without the name, a delete with it, and a
//! restore. What SDK generators make of the document is checked, not only
//! the document.

use crate::bench::server::Server;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// openapi-python-client, pinned exactly: the names it gives modules and
/// functions are what the check script imports.
const PIN: &str = "0.29.1";

const TOKEN: &str = "holdfast-sdk-check-admin-token";

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn installed(venv: &Path) -> bool {
    Command::new(venv.join("bin/openapi-python-client"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(PIN))
}

fn install(venv: &Path) -> anyhow::Result<()> {
    eprintln!(
        "==> install openapi-python-client {PIN} into {}",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (openapi-python-client needs Python 3.9 or newer)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            &format!("openapi-python-client=={PIN}"),
        ])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install openapi-python-client=={PIN} failed ({status})");
    }
    Ok(())
}

pub fn run(root: &Path, ci: bool) -> anyhow::Result<()> {
    let target = target_dir(root);
    let venv = target.join(format!("openapi-python-client-{PIN}"));
    if !installed(&venv)
        && let Err(e) = install(&venv)
    {
        if ci {
            return Err(e);
        }
        eprintln!("skipping the SDK step: {e:#}");
        return Ok(());
    }
    // HOLDFAST_BIN: check a binary already built (as the browser tests do).
    let bin = match std::env::var_os("HOLDFAST_BIN") {
        Some(b) => PathBuf::from(b),
        None => crate::bench::build_server(root)?,
    };
    let work = target.join(format!("sdk-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run_against(root, &bin, &venv, &work));
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_against(root: &Path, bin: &Path, venv: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start_with_args(bin, &work.join("data"), TOKEN.to_owned(), &[]).await?;
    let outcome = generate_and_check(root, venv, work, &server).await;
    if let Err(e) = server.stop().await {
        eprintln!("sdk: stopping holdfast serve: {e:#}");
    }
    outcome
}

async fn generate_and_check(
    root: &Path,
    venv: &Path,
    work: &Path,
    server: &Server,
) -> anyhow::Result<()> {
    let doc = reqwest::Client::new()
        .get(format!("{}/openapi.json", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .context("fetching /openapi.json")?
        .error_for_status()
        .context("fetching /openapi.json")?
        .bytes()
        .await?;
    let spec = work.join("openapi.json");
    std::fs::write(&spec, &doc)?;
    let package = work.join("gen/holdfast_client");
    eprintln!("==> sdk: openapi-python-client {PIN} generate");
    let status = Command::new(venv.join("bin/openapi-python-client"))
        .arg("generate")
        .arg("--path")
        .arg(&spec)
        .args(["--meta", "none"])
        .arg("--output-path")
        .arg(&package)
        .status()
        .context("running openapi-python-client")?;
    if !status.success() {
        bail!("openapi-python-client generate failed ({status})");
    }
    for resource in ["workspaces", "data", "snapshots", "orgs", "admin"] {
        if !package.join("api").join(resource).is_dir() {
            bail!("the generated client has no api/{resource} module: the document's tags changed");
        }
    }
    eprintln!("==> sdk: xtask/sdk/check_client.py against the server");
    let status = Command::new(venv.join("bin/python"))
        .arg(root.join("xtask/sdk/check_client.py"))
        .arg(&server.url)
        .arg(TOKEN)
        .env("PYTHONPATH", work.join("gen"))
        .status()
        .context("running the check script")?;
    if !status.success() {
        bail!("the generated Python client's check failed ({status})");
    }
    Ok(())
}

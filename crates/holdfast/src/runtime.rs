//! `holdfast runtime`: the built-in workspace program. For now it only keeps
//! the workspace running until it is stopped; registration, heartbeats and
//! messages arrive with the reconciler work (issue 3).

use anyhow::Context;

pub async fn run() -> anyhow::Result<()> {
    let data_dir = std::env::var_os("HOLDFAST_DATA_DIR").context("HOLDFAST_DATA_DIR is not set")?;
    let data_dir = std::path::PathBuf::from(data_dir);
    std::fs::create_dir_all(&data_dir)?;
    eprintln!("holdfast runtime: data dir {}", data_dir.display());
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

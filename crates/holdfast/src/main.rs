//! The `holdfast` binary: `serve` (platform API with the embedded control
//! plane) and `runtime` (the built-in workspace program).

mod runtime;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Control plane for long-lived AI-agent workspaces and their saved data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform API with the embedded control plane.
    Serve(serve::ServeArgs),
    /// The built-in workspace runtime (spawned by the control plane).
    Runtime,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(args)),
        Command::Runtime => rt.block_on(runtime::run()),
    }
}

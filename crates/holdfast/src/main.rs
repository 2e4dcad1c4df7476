//! The `holdfast` binary: `serve` (platform API with the embedded control
//! plane), `runtime` (the built-in workspace program), and the CLI (`ws`,
//! `volumes`, `sweep`), a client of the API.

mod cli;
mod cp_cmd;
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
    Serve(Box<serve::ServeArgs>),
    /// The built-in workspace runtime (spawned by the control plane).
    Runtime,
    /// Workspaces (a client of the API).
    Ws {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::WsCommand,
    },
    /// Orgs and org tokens (a client of the API; admin token).
    Org {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::OrgCommand,
    },
    /// Snapshots: take, list, roll back to, export and delete (a client of
    /// the API).
    Snap {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::SnapCommand,
    },
    /// Volume records (a client of the API).
    Volumes {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::VolumesCommand,
    },
    /// The control plane as its own service.
    Cp {
        #[command(subcommand)]
        cmd: cp_cmd::CpCommand,
    },
    /// Run one sweeper pass now (a client of the API; admin token).
    Sweep {
        #[command(flatten)]
        conn: cli::Conn,
        /// Report what would be done without doing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a shell completion script (e.g. `holdfast completions bash >
    /// /etc/bash_completion.d/holdfast`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> std::process::ExitCode {
    // `holdfast contain … -- PROGRAM`: the launcher that puts a workspace
    // into its cgroup, then execs it. Handled before anything else starts
    // (no runtime, no argument parser) because it is on every workspace's
    // start path.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "contain") {
        let e = holdfast_cp::cgroup::contain_main(&args[2..]);
        eprintln!("holdfast contain: {e}");
        return std::process::ExitCode::from(125);
    }
    // `holdfast census DIR`: the container backend's helper counts a volume
    // with it (the independent tally its archive is checked against).
    if args.get(1).is_some_and(|a| a == "census") {
        return holdfast_cp::tree::census_main(&args[2..]);
    }
    // `holdfast archive DIR`: the Kubernetes backend's helper Pod streams a
    // claim's export with it, over the API's exec.
    if args.get(1).is_some_and(|a| a == "archive") {
        return holdfast_cp::export::archive_main(&args[2..]);
    }
    // Whatever the server inherited stays out of the workspaces it starts.
    holdfast_cp::cgroup::close_inherited_fds();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A sentence for the operator, not a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(*args)),
        Command::Runtime => rt.block_on(runtime::run()),
        Command::Ws { conn, cmd } => rt.block_on(cli::ws(conn, cmd)),
        Command::Volumes { conn, cmd } => rt.block_on(cli::volumes(conn, cmd)),
        Command::Snap { conn, cmd } => rt.block_on(cli::snap(conn, cmd)),
        Command::Org { conn, cmd } => rt.block_on(cli::org(conn, cmd)),
        Command::Sweep { conn, dry_run } => rt.block_on(cli::sweep(conn, dry_run)),
        Command::Cp { cmd } => rt.block_on(cp_cmd::run(cmd)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "holdfast",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and argument in `cmd`'s tree that has no help text,
    /// as `holdfast ws create --role`-like paths.
    fn missing_help(cmd: &clap::Command) -> Vec<String> {
        let mut cmd = cmd.clone();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, cmd.get_name(), &mut missing);
        missing
    }

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => format!("<{}>", arg.get_id()),
                };
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            // clap's own `help` subcommand lists the others again, bare.
            if sub.get_name() != "help" {
                walk(sub, &sub_path, missing);
            }
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_help() {
        let missing = missing_help(&Cli::command());
        assert!(
            missing.is_empty(),
            "these have no help text (add a /// doc comment):\n  {}",
            missing.join("\n  ")
        );
    }

    #[test]
    fn the_help_check_finds_what_lacks_help() {
        // A positive control: a tree with one undocumented subcommand and
        // one undocumented argument of each kind.
        let planted = clap::Command::new("t").about("documented").subcommand(
            clap::Command::new("bare")
                .arg(clap::Arg::new("id"))
                .arg(clap::Arg::new("flag").long("flag")),
        );
        assert_eq!(
            missing_help(&planted),
            vec!["t bare", "t bare <id>", "t bare --flag"]
        );
    }
}

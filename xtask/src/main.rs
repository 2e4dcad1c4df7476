//! `cargo xtask`: holdfast's developer tasks (`test`, `bench`), in plain Rust.
//!
//! The alias in `.cargo/config.toml` runs this binary in release mode, so the
//! measuring side of a benchmark is never the slow part of it.

mod bench;
mod kubernetes;
mod podman;
mod postgres;
mod schemathesis;
mod sdk;
mod test;

use std::process::ExitCode;

const HELP: &str = "\
Usage: cargo xtask <task> [options]

Tasks:
  test            Run every check CI runs: cargo fmt --check, clippy with
                  -D warnings, every test of the workspace, the API suite
                  again against a remote control plane and on a throwaway
                  PostgreSQL, schemathesis against the OpenAPI document,
                  a generated Python client against the server, and the
                  canvas's browser tests.
  schemathesis    Only the schemathesis step of `test`: a release server,
                  seeded, checked against its /openapi.json.
  sdk             Only the SDK step of `test`: a Python client generated
                  from /openapi.json by openapi-python-client (pinned)
                  drives create, get, delete with confirmation, restore.
  kubernetes      Only the Kubernetes step of `test`: kubernetes-validate
                  --strict of deploy/kubernetes/ (1.30 and 1.37), and
                  podman kube play of the golden claim and persist Pod.
  bench [--n N] [--only SECTION[,SECTION]] [--container-n N] [--delete-n N]
        [--erase-reps R] [--read-secs S] [--scale-n N] [--server-bin PATH]
                  Build holdfast in release and print the benchmark tables:
                  create_online (create -> online beside a bare spawn+mkdir
                  baseline), sandbox_start (beside bare bwrap),
                  container_start (--backend container beside the bare
                  engine's create+start on a throwaway Podman, and restart
                  with a 1 GiB volume beside an empty one), delete_latency
                  (DELETE with a 1 GiB volume),
                  erase_throughput (against rm -rf), sweep_pass (100,000
                  volume records), read_throughput (reads beside /health)
                  and scale (N running workspaces). See BENCHMARKS.md.
  help            Print this help.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "bench" => bench::Options::parse(rest).and_then(bench::run),
        "test" if rest.is_empty() => test::run_all(&bench::workspace_root()),
        "test" => Err(anyhow::anyhow!("`test` takes no options\n\n{HELP}")),
        "schemathesis" if rest.is_empty() => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            schemathesis::run(&bench::workspace_root(), ci)
        }
        "sdk" if rest.is_empty() => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            sdk::run(&bench::workspace_root(), ci)
        }
        "kubernetes" if rest.is_empty() => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            kubernetes::run(&bench::workspace_root(), ci)
        }
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(anyhow::anyhow!("unknown task {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

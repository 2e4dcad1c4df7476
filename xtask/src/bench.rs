//! `cargo xtask bench`: builds holdfast in release, starts it on a fresh data
//! dir, runs each benchmark section against it, and prints one table.
//!
//! A benchmark here is a measurement, not a test: missed targets print FAIL
//! but the exit code stays 0; only a run that could not measure fails.
//!
//! To add a section, write a module beside `create_online` whose `run`
//! returns a [`stats::Section`], name it in [`SectionName`], and call it from
//! [`run_section`]. `--only` runs a subset.

mod container_start;
mod create_online;
mod delete_latency;
mod disk;
mod erase_throughput;
mod load;
mod read_path;
mod sandbox_start;
pub(crate) mod server;
mod snapshots;
mod stats;
mod sweep_pass;

use anyhow::{Context, bail};
use server::Server;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The sections, in the order they run and are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SectionName {
    CreateOnline,
    SandboxStart,
    ContainerStart,
    DeleteLatency,
    EraseThroughput,
    SweepPass,
    ReadThroughput,
    Scale,
    Snapshots,
}

impl SectionName {
    const ALL: [SectionName; 9] = [
        SectionName::CreateOnline,
        SectionName::SandboxStart,
        SectionName::ContainerStart,
        SectionName::DeleteLatency,
        SectionName::EraseThroughput,
        SectionName::SweepPass,
        SectionName::ReadThroughput,
        SectionName::Scale,
        SectionName::Snapshots,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SectionName::CreateOnline => "create_online",
            SectionName::SandboxStart => "sandbox_start",
            SectionName::ContainerStart => "container_start",
            SectionName::DeleteLatency => "delete_latency",
            SectionName::EraseThroughput => "erase_throughput",
            SectionName::SweepPass => "sweep_pass",
            SectionName::ReadThroughput => "read_throughput",
            SectionName::Scale => "scale",
            SectionName::Snapshots => "snapshots",
        }
    }

    fn parse(s: &str) -> anyhow::Result<SectionName> {
        SectionName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .with_context(|| {
                let names: Vec<_> = SectionName::ALL.iter().map(|n| n.as_str()).collect();
                format!(
                    "--only: unknown section {s:?}; sections: {}",
                    names.join(", ")
                )
            })
    }
}

const USAGE: &str = "usage: cargo xtask bench [--n N] [--container-n N] [--delete-n N] \
     [--erase-reps R] [--read-secs S] [--scale-n N] [--only SECTION[,SECTION]] [--server-bin PATH]";

#[derive(Debug)]
pub struct Options {
    /// Measured creates of the create → online section.
    n: usize,
    /// Measured starts of each side in the container section.
    container_n: usize,
    /// Measured deletes of each kind in the delete latency section.
    delete_n: usize,
    /// Repetitions of each side in the erase throughput section.
    erase_reps: usize,
    /// Seconds of each load run of the read path sections.
    read_secs: usize,
    /// The largest fleet of the scale section (it measures at 1,000 first).
    scale_n: usize,
    /// The sections to run, in [`SectionName::ALL`] order.
    only: Vec<SectionName>,
    /// A holdfast binary to measure instead of building one: to compare two
    /// builds, or to measure while the tree does not build.
    server_bin: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut opts = Options {
            n: 200,
            container_n: 30,
            delete_n: 20,
            erase_reps: 3,
            read_secs: 5,
            scale_n: 10_000,
            only: SectionName::ALL.to_vec(),
            server_bin: None,
        };
        let mut only: Option<Vec<SectionName>> = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .with_context(|| format!("{flag} needs a value ({USAGE})"))
            };
            match flag {
                "--n" => opts.n = count(flag, &value()?)?,
                "--container-n" => opts.container_n = count(flag, &value()?)?,
                "--delete-n" => opts.delete_n = count(flag, &value()?)?,
                "--erase-reps" => opts.erase_reps = count(flag, &value()?)?,
                "--read-secs" => opts.read_secs = count(flag, &value()?)?,
                "--scale-n" => opts.scale_n = count(flag, &value()?)?,
                "--only" => {
                    let chosen = only.get_or_insert_with(Vec::new);
                    for name in value()?.split(',').filter(|s| !s.is_empty()) {
                        chosen.push(SectionName::parse(name)?);
                    }
                }
                "--server-bin" => opts.server_bin = Some(PathBuf::from(value()?)),
                other => bail!("bench: unknown argument {other:?} ({USAGE})"),
            }
        }
        if let Some(chosen) = only {
            if chosen.is_empty() {
                bail!("--only needs at least one section");
            }
            opts.only.retain(|n| chosen.contains(n));
        }
        Ok(opts)
    }
}

/// A count of at least 1.
fn count(flag: &str, v: &str) -> anyhow::Result<usize> {
    let n: usize = v
        .parse()
        .with_context(|| format!("{flag}: {v:?} is not a count"))?;
    if n == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(n)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let bin = match &opts.server_bin {
        Some(bin) => bin
            .canonicalize()
            .with_context(|| format!("--server-bin {}", bin.display()))?,
        None => build_server(&workspace_root())?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_with(&bin, &opts))
}

async fn run_with(bin: &Path, opts: &Options) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!(
        "holdfast-bench-{}-{}",
        std::process::id(),
        random_hex()
    ));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let header = format!(
        "holdfast bench: {}, {} cores, load avg {} at start, {}",
        utc_now(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        match &opts.server_bin {
            Some(_) => format!("binary {}", bin.display()),
            None => format!("commit {}, release build", commit(&workspace_root())),
        },
    );

    // Each section starts and stops its own server on its own data dir
    // under `scratch`, and cleans up after itself, so a later section never
    // measures what an earlier one left behind. A section that cannot
    // measure ends the run, but the sections already measured are printed.
    let mut sections = Vec::new();
    let mut failed = None;
    for name in &opts.only {
        eprintln!("bench: section {}", name.as_str());
        match run_section(*name, bin, &scratch, opts).await {
            Ok(s) => sections.push(s),
            Err(e) => {
                failed = Some(e.context(format!("section {}", name.as_str())));
                break;
            }
        }
    }
    print!("{}", stats::render(&header, &sections));
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        eprintln!("bench: could not remove {}: {e}", scratch.display());
    }
    failed.map_or(Ok(()), Err)
}

async fn run_section(
    name: SectionName,
    bin: &Path,
    scratch: &Path,
    opts: &Options,
) -> anyhow::Result<stats::Section> {
    match name {
        SectionName::CreateOnline => {
            // The unsandboxed start, against a bare spawn; the sandboxed one
            // is its own section.
            let server = Server::start_with_args(
                bin,
                &scratch.join("create-online"),
                format!("hfbench-{}", random_hex()),
                &["--sandbox", "none"],
            )
            .await?;
            eprintln!("bench: holdfast listening on {}", server.url);
            let measured = create_online::run(&server, scratch.to_path_buf(), opts.n).await;
            cleanup(server).await;
            measured
        }
        SectionName::SandboxStart => sandbox_start::run(bin, scratch, opts.n).await,
        SectionName::ContainerStart => container_start::run(bin, scratch, opts.container_n).await,
        SectionName::DeleteLatency => delete_latency::run(bin, scratch, opts.delete_n).await,
        SectionName::EraseThroughput => erase_throughput::run(bin, scratch, opts.erase_reps).await,
        SectionName::SweepPass => sweep_pass::run(bin, scratch).await,
        SectionName::ReadThroughput => {
            read_path::read_throughput(bin, scratch, opts.read_secs as u64).await
        }
        SectionName::Scale => {
            read_path::scale(bin, scratch, opts.scale_n, opts.read_secs as u64).await
        }
        SectionName::Snapshots => snapshots::run(bin, scratch).await,
    }
}

/// Deletes (with erase) every workspace a section created and left, then
/// stops the server with SIGTERM, which stops its workspaces' processes.
pub(crate) async fn cleanup(server: Server) {
    let (deleted, errors) = server.delete_remaining().await;
    eprintln!(
        "bench: cleanup deleted {deleted} workspaces, {} failed",
        errors.len()
    );
    for e in errors.iter().take(5) {
        eprintln!("  {e:#}");
    }
    match server.stop().await {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("bench: holdfast serve exited with {status}"),
        Err(e) => eprintln!("bench: stopping holdfast serve: {e:#}"),
    }
}

/// The repository root: xtask lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo build --release -p holdfast`, with its progress on the terminal.
pub(crate) fn build_server(root: &Path) -> anyhow::Result<PathBuf> {
    // `cargo xtask` is a `cargo run`, which sets CARGO to the cargo in use.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p holdfast");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "holdfast"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p holdfast failed ({status})");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release").join("holdfast");
    if !bin.is_file() {
        bail!("built, but {} is not there", bin.display());
    }
    Ok(bin)
}

/// The 1-minute load average: on a shared 2-core machine another build
/// running during the bench moves the numbers more than anything measured, so
/// the table says how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The short commit measured, with `+dirty` when the tree has changes.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{head}+dirty"),
            _ => head,
        },
        None => "?".to_owned(),
    }
}

/// 64 bits from the standard library's per-process random hasher keys: enough
/// for a temp dir name and a throwaway admin token, without a `rand` dependency.
pub(crate) fn random_hex() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_date(days: i64, expect: (i64, u32, u32)) {
        assert_eq!(civil_from_days(days), expect, "day {days}");
    }

    #[test]
    fn epoch() {
        check_date(0, (1970, 1, 1));
    }

    #[test]
    fn leap_day() {
        check_date(11_016, (2000, 2, 29));
    }

    #[test]
    fn new_year_2025() {
        check_date(20_089, (2025, 1, 1));
    }

    fn check_args(args: &[&str], expect_n: Option<usize>) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            Options::parse(&args).ok().map(|o| o.n),
            expect_n,
            "{args:?}"
        );
    }

    #[test]
    fn default_n() {
        check_args(&[], Some(200));
    }

    #[test]
    fn n_as_two_args_or_one() {
        check_args(&["--n", "50"], Some(50));
        check_args(&["--n=7"], Some(7));
    }

    #[test]
    fn bad_args() {
        check_args(&["--n"], None);
        check_args(&["--n", "0"], None);
        check_args(&["--n", "x"], None);
        check_args(&["--fast"], None);
        check_args(&["--delete-n", "0"], None);
        check_args(&["--only", "nope"], None);
        check_args(&["--only="], None);
    }

    fn check_only(args: &[&str], expect: &str) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = Options::parse(&args).expect("valid args");
        let names: Vec<_> = o.only.iter().map(|n| n.as_str()).collect();
        assert_eq!(names.join(","), expect, "{args:?}");
    }

    #[test]
    fn only_keeps_the_run_order() {
        check_only(
            &[],
            "create_online,sandbox_start,container_start,delete_latency,erase_throughput,sweep_pass,read_throughput,scale,snapshots",
        );
        check_only(&["--only", "sweep_pass"], "sweep_pass");
        check_only(
            &["--only=sweep_pass,create_online"],
            "create_online,sweep_pass",
        );
        check_only(
            &["--only", "erase_throughput", "--only", "delete_latency"],
            "delete_latency,erase_throughput",
        );
    }

    #[test]
    fn counts() {
        let args: Vec<String> = ["--delete-n", "5", "--erase-reps=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args).expect("valid args");
        assert_eq!((o.delete_n, o.erase_reps), (5, 2));
    }
}

//! Sandboxed create → online (issue 10): the same `POST /workspaces` as
//! `create_online`, on a server with `--sandbox bwrap`, beside the bare
//! cost of that sandbox and beside an unsandboxed server, in one run.
//!
//! The baseline is bubblewrap itself: mkdir of a data dir plus a spawn of
//! `bwrap` with exactly the arguments holdfast gave its own first
//! workspace (read back from `/proc`, with the data dir swapped for a fresh
//! one), until the spawn returns. What holdfast adds on top is its request
//! handling, the store writes, the cgroup and its launcher. Half of the
//! baseline's samples come before the servers are measured and half after.

use super::create_online::{COMMAND, create_until_online};
use super::server::Server;
use super::stats::{Samples, Section, verdict};
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::process::{Child, Command};

const WARMUP: usize = 5;
const TARGET_RATIO: f64 = 2.0;

pub async fn run(bin: &Path, scratch: &Path, n: usize) -> anyhow::Result<Section> {
    let mut children = Vec::new();
    let measured = measure(bin, scratch, n, &mut children).await;
    for c in &mut children {
        let _ = c.start_kill();
    }
    for mut c in children {
        let _ = c.wait().await;
    }
    let m = measured?;
    let bare = m.bare.summary();
    let boxed = m.sandboxed.summary();
    let plain = m.unsandboxed.summary();
    let mut section = Section::new(format!(
        "sandboxed create → online (issue 10), N={n}, runtime `{}`",
        COMMAND.join(" ")
    ));
    section.timing("bare bwrap: mkdir + spawn", &bare);
    section.timing("holdfast --sandbox bwrap create → online", &boxed);
    section.timing("holdfast --sandbox none create → online", &plain);
    section.ratio("sandboxed ÷ bare bwrap", &boxed, &bare);
    section.ratio("sandboxed ÷ unsandboxed", &boxed, &plain);
    let ratio = boxed.p50.as_secs_f64() / bare.p50.as_secs_f64();
    section.line(format!(
        "target: sandboxed p50 ≤ {TARGET_RATIO}× bare bwrap → {} ({ratio:.2}x); limits {}",
        verdict(ratio <= TARGET_RATIO),
        m.limits
    ));
    Ok(section)
}

struct Measured {
    bare: Samples,
    sandboxed: Samples,
    unsandboxed: Samples,
    limits: String,
}

async fn measure(
    bin: &Path,
    scratch: &Path,
    n: usize,
    children: &mut Vec<Child>,
) -> anyhow::Result<Measured> {
    let server = Server::start_with_args(
        bin,
        &scratch.join("sandboxed"),
        format!("hfbench-{}", super::random_hex()),
        &["--sandbox", "bwrap"],
    )
    .await?;
    let measured = async {
        let first = create_until_online(&server, "bench-sandbox-probe").await?;
        let argv = bwrap_argv(&first.id)?;
        let limits = server.workspace_field(&first.id, "limits").await?;
        let mut bare = Baseline {
            argv,
            root: scratch.join("bare-bwrap"),
            next: 0,
        };
        eprintln!("bench: bare bwrap, first half");
        bare.sample(WARMUP, children).await?;
        let mut base = bare.sample(n / 2, children).await?;
        eprintln!("bench: {n} sandboxed creates");
        let sandboxed = creates(&server, "boxed", n).await?;
        Ok::<_, anyhow::Error>((bare, std::mem::take(&mut base), sandboxed, limits))
    }
    .await;
    super::cleanup(server).await;
    let (mut bare, mut base, sandboxed, limits) = measured?;

    let server = Server::start_with_args(
        bin,
        &scratch.join("unsandboxed"),
        format!("hfbench-{}", super::random_hex()),
        &["--sandbox", "none"],
    )
    .await?;
    eprintln!("bench: {n} unsandboxed creates");
    let unsandboxed = creates(&server, "plain", n).await;
    super::cleanup(server).await;
    let unsandboxed = unsandboxed?;
    eprintln!("bench: bare bwrap, second half");
    base.extend(bare.sample(n - n / 2, children).await?);
    Ok(Measured {
        bare: base,
        sandboxed,
        unsandboxed,
        limits,
    })
}

async fn creates(server: &Server, prefix: &str, n: usize) -> anyhow::Result<Samples> {
    for i in 0..WARMUP {
        create_until_online(server, &format!("{prefix}-warmup-{i}")).await?;
    }
    let mut samples = Samples::default();
    for i in 0..n {
        samples.push(
            create_until_online(server, &format!("{prefix}-{i}"))
                .await?
                .online,
        );
    }
    Ok(samples)
}

/// The argv of the bwrap that runs workspace `id`, from `/proc`.
fn bwrap_argv(id: &str) -> anyhow::Result<Vec<OsString>> {
    let needle = format!("HOLDFAST_WORKSPACE_ID={id}");
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let p = entry.path();
            let is_bwrap =
                std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "bwrap");
            let ours = std::fs::read(p.join("environ"))
                .is_ok_and(|e| e.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()));
            if is_bwrap && ours {
                let cmdline = std::fs::read(p.join("cmdline"))?;
                let argv: Vec<OsString> = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| OsString::from_vec(a.to_vec()))
                    .collect();
                return Ok(argv);
            }
        }
        if Instant::now() > deadline {
            bail!("no bwrap process found for workspace {id}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

struct Baseline {
    argv: Vec<OsString>,
    root: PathBuf,
    next: usize,
}

impl Baseline {
    async fn sample(&mut self, count: usize, children: &mut Vec<Child>) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for _ in 0..count {
            let dir = self.root.join(self.next.to_string());
            self.next += 1;
            // The same arguments, with this round's data dir bound at /data.
            let mut argv = self.argv.clone();
            if let Some(i) = argv.iter().position(|a| a == "/data")
                && i > 0
            {
                argv[i - 1] = dir.clone().into_os_string();
            }
            let start = Instant::now();
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(&dir)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("spawning {:?}", argv[0]))?;
            samples.push(start.elapsed());
            children.push(child);
        }
        Ok(samples)
    }
}

//! The create → online benchmark (issue 2): N sequential `POST /workspaces`
//! with a trivial runtime (`sleep 3600`), each timed until the workspace is
//! `online`, beside a baseline of what the same start costs without holdfast.
//!
//! The baseline is `mkdir -p <dir>` plus spawning `sleep 3600` in it as its
//! own process group: the least any implementation has to do to start a
//! workspace's process with a data dir. Half of its N samples are taken
//! before the server is measured and half after, and pooled, so that drift
//! over the run (page cache, CPU frequency, other load) hits both sides
//! alike.

use super::server::Server;
use super::stats::{Samples, Section, ms, verdict};
use anyhow::{Context, bail};
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Unmeasured rounds first, of both sides, so that neither pays for first-use
/// costs (connection setup, SQLite page cache, allocator growth).
const WARMUP: usize = 5;
/// How often a workspace not yet online in the 201 is polled.
const POLL_EVERY: Duration = Duration::from_millis(1);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The targets on the 2-core reference machine.
const TARGET_P50_RATIO: f64 = 3.0;
const TARGET_P99_MS: f64 = 50.0;

/// What the workspaces run: the same command in both columns.
pub(super) const COMMAND: [&str; 2] = ["sleep", "3600"];

pub async fn run(server: &Server, scratch: PathBuf, n: usize) -> anyhow::Result<Section> {
    let mut baseline = Baseline {
        root: scratch.join("baseline"),
        children: Vec::new(),
        next: 0,
    };
    // The children are killed whatever happened, so a failed run leaves no
    // `sleep 3600` behind.
    let measured = measure(server, &mut baseline, n).await;
    baseline.kill_all().await;
    let m = measured?;

    let base = m.baseline.summary();
    let online = m.create_online.summary();
    let mut section = Section::new(format!(
        "create → online (issue 2), N={n}, runtime `{}`",
        COMMAND.join(" ")
    ));
    section.timing("baseline mkdir + spawn", &base);
    section.timing("holdfast create → online", &online);
    section.ratio("ratio", &online, &base);
    let p50_ratio = online.p50.as_secs_f64() / base.p50.as_secs_f64();
    section.line(format!(
        "targets: p50 ratio ≤ {TARGET_P50_RATIO} → {} ({p50_ratio:.2}x) ; p99 ≤ {TARGET_P99_MS} ms → {} ({:.2} ms)",
        verdict(p50_ratio <= TARGET_P50_RATIO),
        verdict(ms(online.p99) <= TARGET_P99_MS),
        ms(online.p99),
    ));
    // Where the time goes: the reference rows bound the part of a create
    // that is HTTP and request handling rather than starting a workspace.
    section.line("");
    section.line("for reference, same run (not part of the ratio):");
    section.timing("POST /workspaces → 201", &m.post.summary());
    section.timing("GET /health", &m.health.summary());
    section.timing("GET /workspaces/<id>", &m.get.summary());
    let polled = n - m.online_in_201;
    section.line(if polled == 0 {
        format!("all {n} creates were already online in their 201; none was polled")
    } else {
        format!(
            "{} of {n} creates were online in their 201; {polled} were polled ({} GETs in all)",
            m.online_in_201, m.polls
        )
    });
    Ok(section)
}

struct Measured {
    baseline: Samples,
    create_online: Samples,
    post: Samples,
    health: Samples,
    get: Samples,
    online_in_201: usize,
    polls: usize,
}

async fn measure(server: &Server, baseline: &mut Baseline, n: usize) -> anyhow::Result<Measured> {
    eprintln!("bench: baseline, first half ({} samples)", n / 2);
    baseline.sample(WARMUP).await?;
    let mut base = baseline.sample(n / 2).await?;

    eprintln!("bench: {n} creates (after {WARMUP} unmeasured)");
    for i in 0..WARMUP {
        create_until_online(server, &format!("bench-warmup-{i}")).await?;
    }
    let mut create_online = Samples::default();
    let mut post = Samples::default();
    let mut online_in_201 = 0;
    let mut polls = 0;
    let mut last_id = None;
    for i in 0..n {
        let c = create_until_online(server, &format!("bench-{i}")).await?;
        create_online.push(c.online);
        post.push(c.post);
        if c.polls == 0 {
            online_in_201 += 1;
        }
        polls += c.polls;
        last_id = Some(c.id);
    }

    eprintln!("bench: baseline, second half ({} samples)", n - n / 2);
    base.extend(baseline.sample(n - n / 2).await?);

    eprintln!("bench: reference requests");
    let mut health = Samples::default();
    let mut get = Samples::default();
    if let Some(id) = last_id {
        for _ in 0..WARMUP {
            server.health().await?;
            server.workspace_status(&id).await?;
        }
        for _ in 0..n {
            let t = Instant::now();
            server.health().await?;
            health.push(t.elapsed());
            let t = Instant::now();
            server.workspace_status(&id).await?;
            get.push(t.elapsed());
        }
    }
    Ok(Measured {
        baseline: base,
        create_online,
        post,
        health,
        get,
        online_in_201,
        polls,
    })
}

pub(super) struct Created {
    pub(super) id: String,
    /// From just before the POST is sent to the moment `online` was seen.
    pub(super) online: Duration,
    /// From just before the POST is sent to its 201 being read.
    post: Duration,
    polls: usize,
}

pub(super) async fn create_until_online(server: &Server, name: &str) -> anyhow::Result<Created> {
    let body = json!({
        "name": name,
        "runtime": {"command": COMMAND},
        "compute": {"data_persistence": "persist"},
    });
    let start = Instant::now();
    let (ws, mut status) = server.create_workspace(&body).await?;
    let post = start.elapsed();
    let mut polls = 0;
    while status != "online" {
        if status == "failed" {
            bail!(
                "workspace {name} ({}) failed to start; server output:\n{}",
                ws.id,
                server.recent_output()
            );
        }
        if start.elapsed() > ONLINE_TIMEOUT {
            bail!(
                "workspace {name} ({}) not online within {ONLINE_TIMEOUT:?} (status {status:?}); server output:\n{}",
                ws.id,
                server.recent_output()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
        status = server.workspace_status(&ws.id).await?;
        polls += 1;
    }
    Ok(Created {
        id: ws.id,
        online: start.elapsed(),
        post,
        polls,
    })
}

/// The baseline side: numbered dirs under `root`, and the `sleep` children
/// started in them, kept running (as holdfast's are) until the end.
struct Baseline {
    root: PathBuf,
    children: Vec<Child>,
    next: usize,
}

impl Baseline {
    /// Times `count` rounds of mkdir + spawn, each until `spawn` returns.
    async fn sample(&mut self, count: usize) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for _ in 0..count {
            let dir = self.root.join(self.next.to_string());
            self.next += 1;
            let start = Instant::now();
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let child = Command::new(COMMAND[0])
                .args(&COMMAND[1..])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("spawning {COMMAND:?}"))?;
            samples.push(start.elapsed());
            self.children.push(child);
        }
        Ok(samples)
    }

    async fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        for mut child in self.children.drain(..) {
            let _ = child.wait().await;
        }
    }
}

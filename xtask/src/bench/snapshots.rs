//! Snapshots against restic (issue 15), side by side in one run, on the
//! erase benchmark's tree (64 directories of 48 + 16 files of 256 KiB:
//! 4,096 files, 1 GiB of incompressible bytes), with restic's repository on
//! the same disk:
//!
//! - the full snapshot: `POST /workspaces/:id/snapshots` of a running
//!   workspace against `restic backup` of the same directory;
//! - 9 incremental ones, each after rewriting 1 % of the files (41) with new
//!   bytes, the same files for both, holdfast first then restic;
//! - the bytes each repository holds after those 10;
//! - a restore: a clone (`from_snapshot`, create → online) against
//!   `restic restore latest --target`;
//! - how long the workspace stayed frozen (`frozen_ms`), p50 and p99, over
//!   those 10 and 20 more snapshots of unchanged data.
//!
//! Targets (the issue's): full ≤ 1.0× restic, incremental ≤ 0.5×, stored ≤
//! 1.1×, restore ≤ 1.0×.

use super::disk::{self, MIB};
use super::server::Server;
use super::stats::{Samples, Section, verdict};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DIRS: usize = 64;
const TOP_FILES: usize = 48;
const DEEP_FILES: usize = 16;
const FILE_SIZE: u64 = 256 * 1024;
const SNAPSHOTS: usize = 10;
const CHANGED: usize = 41;
const EXTRA_FREEZES: usize = 20;

pub async fn run(bin: &Path, scratch: &Path) -> anyhow::Result<Section> {
    if Command::new("restic").arg("version").output().is_err() {
        bail!("restic is not installed (apt-get install restic)");
    }
    let root = scratch.join("snapshots");
    let server = Server::start_with_args(
        bin,
        &root.join("data"),
        format!("hfbench-{}", super::random_hex()),
        &["--sweep-interval", "1h", "--sandbox", "none"],
    )
    .await?;
    let measured = measure(&server, &root).await;
    super::cleanup(server).await;
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("bench: could not remove {}: {e}", root.display());
    }
    let m = measured?;
    let mut section = Section::new(format!(
        "snapshots vs restic {} (issue 15), {} MiB tree: {} files of {} KiB; {SNAPSHOTS} snapshots, {CHANGED} files (1 %) rewritten before each but the first",
        m.restic_version,
        m.bytes / MIB,
        DIRS * (TOP_FILES + DEEP_FILES),
        FILE_SIZE / 1024
    ));
    section.ratio("full snapshot", &one(m.hf_full), &one(m.restic_full));
    section.ratio(
        "incremental (1 % changed)",
        &m.hf_incr.summary(),
        &m.restic_incr.summary(),
    );
    section.ratio("restore", &one(m.hf_restore), &one(m.restic_restore));
    let stored = m.hf_stored as f64 / m.restic_stored as f64;
    section.line(format!(
        "stored after {SNAPSHOTS}: holdfast {} MiB, restic {} MiB, ratio {stored:.2}",
        m.hf_stored / MIB,
        m.restic_stored / MIB
    ));
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let incr = r(median(&m.hf_incr), median(&m.restic_incr));
    section.line(format!(
        "targets: full ≤ 1.0x → {} ({:.2}x); incremental ≤ 0.5x → {} ({incr:.2}x); stored ≤ 1.1x → {} ({stored:.2}x); restore ≤ 1.0x → {} ({:.2}x)",
        verdict(r(m.hf_full, m.restic_full) <= 1.0),
        r(m.hf_full, m.restic_full),
        verdict(incr <= 0.5),
        verdict(stored <= 1.1),
        verdict(r(m.hf_restore, m.restic_restore) <= 1.0),
        r(m.hf_restore, m.restic_restore),
    ));
    let mut frozen = m.frozen_ms.clone();
    frozen.sort_unstable();
    let pct = |p: f64| frozen[((frozen.len() - 1) as f64 * p).round() as usize];
    section.line(format!(
        "frozen: p50 {} ms, p99 {} ms over {} snapshots of the running workspace ({} of them past the freeze bound: crash_consistent)",
        pct(0.5),
        pct(0.99),
        frozen.len(),
        m.crash_consistent
    ));
    Ok(section)
}

fn one(d: Duration) -> super::stats::Summary {
    let mut s = Samples::default();
    s.push(d);
    s.summary()
}

fn median(s: &Samples) -> Duration {
    s.summary().p50
}

struct Measured {
    restic_version: String,
    bytes: u64,
    hf_full: Duration,
    restic_full: Duration,
    hf_incr: Samples,
    restic_incr: Samples,
    hf_stored: u64,
    restic_stored: u64,
    hf_restore: Duration,
    restic_restore: Duration,
    frozen_ms: Vec<i64>,
    crash_consistent: usize,
}

fn restic(repo: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = Command::new("restic")
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "holdfast-bench")
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .args(args)
        .output()
        .context("running restic")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "restic {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn du(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").args(["-sb"]).arg(dir).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du {}: {text}", dir.display()))
}

/// Rewrites `CHANGED` files of the tree with new bytes (a different choice
/// of files each round).
fn change(tree: &Path, round: usize) -> anyhow::Result<()> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (round as u64 + 1);
    let mut buf = vec![0u8; FILE_SIZE as usize];
    for k in 0..CHANGED {
        let n = round * CHANGED + k;
        let path = tree
            .join(format!("d{:02}", n % DIRS))
            .join(format!("f{}", (n / DIRS) % TOP_FILES));
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&buf))
            .with_context(|| format!("rewriting {}", path.display()))?;
    }
    disk::sync()
}

async fn post(server: &Server, path: &str, body: Value) -> anyhow::Result<Value> {
    let resp = server
        .client
        .post(format!("{}{path}", server.url))
        .header("Authorization", server.auth())
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {path} answered {status}: {v}");
    }
    Ok(v)
}

async fn measure(server: &Server, root: &Path) -> anyhow::Result<Measured> {
    let version = Command::new("restic").arg("version").output()?;
    let restic_version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_owned();
    let body = json!({
        "name": "bench-snapshots",
        "runtime": {"command": ["sleep", "3600"]},
        "compute": {"data_persistence": "persist"},
    });
    let (ws, status) = server.create_workspace(&body).await?;
    disk::wait_online(server, &ws.id, status).await?;
    let tree: PathBuf = disk::volume_dir(server, &ws.id).join("tree");
    eprintln!("bench: writing the 1 GiB tree");
    let bytes = {
        let tree = tree.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            // Every file its own bytes (the erase benchmark's writer seeds
            // by path length and index, so its tree holds ~100 MiB of
            // distinct data, which a deduplicating store would flatter).
            let mut bytes = 0;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            let mut buf = vec![0u8; FILE_SIZE as usize];
            for d in 0..DIRS {
                let dir = tree.join(format!("d{d:02}"));
                let deep = dir.join("sub").join("deeper");
                std::fs::create_dir_all(&deep)?;
                let files = (0..TOP_FILES)
                    .map(|i| dir.join(format!("f{i}")))
                    .chain((0..DEEP_FILES).map(|i| deep.join(format!("g{i}"))));
                for path in files {
                    for b in buf.chunks_mut(8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
                    }
                    std::fs::write(&path, &buf)
                        .with_context(|| format!("writing {}", path.display()))?;
                    bytes += FILE_SIZE;
                }
            }
            disk::sync()?;
            Ok(bytes)
        })
        .await??
    };
    let repo = root.join("restic-repo");
    restic(&repo, &["init", "--quiet"])?;
    let tree_arg = tree.to_str().context("a UTF-8 scratch path")?.to_owned();
    let snap_path = format!("/workspaces/{}/snapshots", ws.id);
    let mut frozen_ms = Vec::new();
    let mut crash_consistent = 0;
    let mut record = |v: &Value| {
        frozen_ms.push(v["frozen_ms"].as_i64().unwrap_or(0));
        if v["consistency"] == "crash_consistent" {
            crash_consistent += 1;
        }
    };
    let (mut hf_incr, mut restic_incr) = (Samples::default(), Samples::default());
    let (mut hf_full, mut restic_full) = (Duration::ZERO, Duration::ZERO);
    let mut last = Value::Null;
    for round in 0..SNAPSHOTS {
        if round > 0 {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || change(&tree, round)).await??;
        }
        eprintln!("bench: snapshot {}/{SNAPSHOTS}", round + 1);
        let start = Instant::now();
        last = post(server, &snap_path, json!({})).await?;
        let hf = start.elapsed();
        record(&last);
        let rs = restic(&repo, &["backup", "--quiet", &tree_arg])?;
        if round == 0 {
            (hf_full, restic_full) = (hf, rs);
        } else {
            hf_incr.push(hf);
            restic_incr.push(rs);
        }
    }
    let hf_stored = du(&server.data_dir.join("snapshots"))?;
    let restic_stored = du(&repo)?;
    for _ in 0..EXTRA_FREEZES {
        record(&post(server, &snap_path, json!({})).await?);
    }
    // Restores: a clone of the last snapshot, and restic's of its last.
    disk::sync()?;
    let start = Instant::now();
    let (clone, status) = server
        .create_workspace(&json!({
            "name": "bench-clone",
            "runtime": {"command": ["sleep", "3600"]},
            "from_snapshot": last["id"],
        }))
        .await?;
    disk::wait_online(server, &clone.id, status).await?;
    let hf_restore = start.elapsed();
    disk::sync()?;
    let target = root.join("restic-restore");
    let restic_restore = restic(
        &repo,
        &[
            "restore",
            "latest",
            "--quiet",
            "--target",
            target.to_str().unwrap_or("restic-restore"),
        ],
    )?;
    Ok(Measured {
        restic_version,
        bytes,
        hf_full,
        restic_full,
        hf_incr,
        restic_incr,
        hf_stored,
        restic_stored,
        hf_restore,
        restic_restore,
        frozen_ms,
        crash_consistent,
    })
}

//! Erase throughput (issue 4): the sweeper erasing a volume of ~1 GiB,
//! against `rm -rf` of the same tree in the same run; target ≥ 0.9× rm's
//! bytes per second.
//!
//! A template tree (64 directories, each with 48 files of 256 KiB and 16
//! more two levels down, 1 GiB in all) is written once. Each repetition
//! then, in alternating order:
//!
//! - **rm**: `cp -a` of the template to a scratch dir, `sync`, and the wall
//!   time of `rm -rf` on it;
//! - **holdfast**: a persist workspace is created, `cp -a` puts the template
//!   into its volume, it is deleted with erase, and once the 1 s erase grace
//!   has passed, `sync` and the wall time of `POST /admin/sweep` (the erase
//!   runs inside the pass; the report gives the bytes).
//!
//! Copying and `sync` are not timed; they put both deletions in the same
//! state: freshly written, clean, metadata and pages cached. The section runs
//! its own server with `--erase-grace 1s --sweep-interval 1h`, so that the
//! erasure is due quickly and only the timed pass performs it.

use super::disk::{self, MIB};
use super::server::Server;
use super::stats::{Samples, Section, verdict};
use anyhow::{Context, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const TARGET_RATIO: f64 = 0.9;
const DIRS: usize = 64;
const TOP_FILES: usize = 48;
const DEEP_FILES: usize = 16;
const FILE_SIZE: u64 = 256 * 1024;
const ERASE_GRACE: Duration = Duration::from_secs(1);

pub async fn run(bin: &Path, scratch: &Path, reps: usize) -> anyhow::Result<Section> {
    let root = scratch.join("erase-throughput");
    let template = root.join("template");
    eprintln!(
        "bench: writing the {} MiB template tree",
        (DIRS * (TOP_FILES + DEEP_FILES)) as u64 * FILE_SIZE / MIB
    );
    let tree = template.clone();
    let bytes = blocking(move || build_template(&tree)).await?;

    let grace = format!("{}s", ERASE_GRACE.as_secs());
    let server = Server::start_with_args(
        bin,
        &root.join("data"),
        format!("hfbench-{}", super::random_hex()),
        &["--erase-grace", &grace, "--sweep-interval", "1h"],
    )
    .await?;
    eprintln!("bench: erase throughput, server on {}", server.url);
    let measured = measure(&server, &root, &template, bytes, reps).await;
    super::cleanup(server).await;
    // The template and any copy left by a failure are a GiB each: free them
    // now rather than when the whole scratch dir goes.
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("bench: could not remove {}: {e}", root.display());
    }
    let reps_measured = measured?;

    let mut rm = Samples::default();
    let mut wall = Samples::default();
    let mut report = Samples::default();
    let mut rm_rates = Vec::new();
    let mut hf_rates = Vec::new();
    for r in &reps_measured {
        rm.push(r.rm);
        wall.push(r.holdfast);
        report.push(r.report);
        rm_rates.push(mb_per_s(bytes, r.rm));
        hf_rates.push(mb_per_s(r.holdfast_bytes, r.holdfast));
    }
    let files = DIRS * (TOP_FILES + DEEP_FILES);
    let mut section = Section::new(format!(
        "erase throughput vs rm -rf (issue 4), R={reps}, {} MiB tree: {files} files of {} KiB in {DIRS} dirs, {DEEP_FILES} per dir 2 levels down",
        bytes / MIB,
        FILE_SIZE / 1024
    ));
    section.timing("rm -rf (wall)", &rm.summary());
    section.timing("holdfast POST /admin/sweep (wall)", &wall.summary());
    section.timing("holdfast report duration_ms", &report.summary());
    for (i, r) in reps_measured.iter().enumerate() {
        section.line(format!(
            "rep {} ({} first): rm {:.0} MB/s, holdfast {:.0} MB/s ({} bytes erased), ratio {:.2}",
            i + 1,
            if r.rm_first { "rm" } else { "holdfast" },
            rm_rates[i],
            hf_rates[i],
            r.holdfast_bytes,
            hf_rates[i] / rm_rates[i],
        ));
    }
    let (rm_med, hf_med) = (median(&rm_rates), median(&hf_rates));
    let ratio = hf_med / rm_med;
    section.line(format!(
        "target: holdfast/rm throughput ≥ {TARGET_RATIO} → {} ({ratio:.2}x; medians {hf_med:.0} vs {rm_med:.0} MB/s)",
        verdict(ratio >= TARGET_RATIO),
    ));
    // On a shared machine another build's writeback makes a deletion take
    // several times longer (`sync` and the journal are shared by all); when
    // either side's repetitions disagree that much, the ratio says more
    // about that load than about holdfast.
    let spread = |times: Vec<Duration>| {
        let secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        let max = secs.iter().copied().fold(f64::MIN, f64::max);
        let min = secs.iter().copied().fold(f64::MAX, f64::min);
        max / min
    };
    let worst = spread(reps_measured.iter().map(|r| r.rm).collect())
        .max(spread(reps_measured.iter().map(|r| r.holdfast).collect()));
    if worst > 2.0 {
        section.line(format!(
            "warning: the slowest repetition of a side took {worst:.1}x its fastest: \
             the disk was busy, rerun on an idle machine before trusting the ratio"
        ));
    }
    Ok(section)
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The upper median: with an even count, the larger middle value.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn build_template(root: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for d in 0..DIRS {
        let dir = root.join(format!("d{d:02}"));
        bytes += disk::write_files(&dir, "f", TOP_FILES, FILE_SIZE)?;
        bytes += disk::write_files(&dir.join("sub").join("deeper"), "g", DEEP_FILES, FILE_SIZE)?;
    }
    disk::sync()?;
    Ok(bytes)
}

struct Rep {
    rm_first: bool,
    rm: Duration,
    holdfast: Duration,
    report: Duration,
    holdfast_bytes: u64,
}

async fn measure(
    server: &Server,
    root: &Path,
    template: &Path,
    bytes: u64,
    reps: usize,
) -> anyhow::Result<Vec<Rep>> {
    let mut out = Vec::new();
    for r in 0..reps {
        let rm_first = r % 2 == 0;
        eprintln!(
            "bench: erase rep {}/{reps} ({} first)",
            r + 1,
            if rm_first { "rm" } else { "holdfast" }
        );
        let (rm, (holdfast, report, holdfast_bytes)) = if rm_first {
            let rm = rm_once(root, template).await?;
            (rm, holdfast_once(server, template, r).await?)
        } else {
            let hf = holdfast_once(server, template, r).await?;
            (rm_once(root, template).await?, hf)
        };
        if holdfast_bytes != bytes {
            eprintln!("bench: holdfast erased {holdfast_bytes} bytes; the tree holds {bytes}");
        }
        out.push(Rep {
            rm_first,
            rm,
            holdfast,
            report,
            holdfast_bytes,
        });
    }
    Ok(out)
}

/// Copy, sync, then the wall time of `rm -rf`.
async fn rm_once(root: &Path, template: &Path) -> anyhow::Result<Duration> {
    let copy = root.join("rm-copy");
    let template = template.to_path_buf();
    blocking(move || {
        disk::copy_tree(&template, &copy)?;
        disk::sync()?;
        let took = disk::run("rm", &[Path::new("-rf"), &copy])?;
        if copy.exists() {
            bail!("{} still exists after rm -rf", copy.display());
        }
        Ok(took)
    })
    .await
}

/// Create, copy into the volume, delete with erase, wait out the grace,
/// sync, then the wall time of the sweep that erases it. Returns that wall
/// time, the report's `duration_ms` and the bytes the report says it erased.
async fn holdfast_once(
    server: &Server,
    template: &Path,
    rep: usize,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let body = json!({
        "name": format!("bench-erase-{rep}"),
        "runtime": {"command": ["sleep", "3600"]},
        "compute": {"data_persistence": "persist"},
    });
    let (ws, status) = server.create_workspace(&body).await?;
    disk::wait_online(server, &ws.id, status).await?;
    let vol = disk::volume_dir(server, &ws.id);
    let (from, to) = (template.to_path_buf(), vol.join("tree"));
    blocking(move || disk::copy_tree(&from, &to)).await?;
    let resp = server.delete_workspace(&ws).await?;
    if resp["data"] != "erase_pending" {
        bail!("DELETE ?erase_data=true of {} answered {resp}", ws.id);
    }
    tokio::time::sleep(ERASE_GRACE + Duration::from_millis(200)).await;
    blocking(disk::sync).await?;

    let start = Instant::now();
    let report = server.sweep().await?;
    let wall = start.elapsed();

    let items = report["items"].as_array().cloned().unwrap_or_default();
    let item = items
        .iter()
        .find(|it| it["workspace_id"].as_str() == Some(ws.id.as_str()))
        .with_context(|| format!("the sweep did not erase {}: {report}", ws.id))?;
    if item["outcome"] != "done" || item["action"] != "erase" {
        bail!("the sweep did not erase {}: {item}", ws.id);
    }
    if items.len() != 1 {
        eprintln!(
            "bench: the sweep did {} things, not just this erasure: {report}",
            items.len()
        );
    }
    if vol.exists() {
        bail!("{} still exists after the erasure", vol.display());
    }
    let bytes = item["bytes"].as_u64().unwrap_or(0);
    let report_ms = report["duration_ms"].as_u64().unwrap_or(0);
    Ok((wall, Duration::from_millis(report_ms), bytes))
}

/// Runs file work off the async workers, which also drain the server's
/// output.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task panicked")?
}

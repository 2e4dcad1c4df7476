//! DELETE latency of a workspace whose volume holds 1 GiB (issue 4): the
//! erasure is asynchronous, so `DELETE …?erase_data=true` should not cost
//! more because of what the volume holds.
//!
//! One persist workspace runs `sleep 3600`; its volume is filled with 256
//! files of 4 MiB written by the benchmark itself into
//! `<data-dir>/volumes/<id>/` (much faster than a workspace command writing
//! them, and the same files on disk). Then, N times, a delete with erase and
//! a delete without are timed, each followed by an untimed restore that
//! brings the same workspace and data back online. At the end it is deleted
//! with erase for good and the sweeper is run to check the GiB is gone.
//!
//! The section runs its own server with `--erase-grace 10s`: a restore
//! comes within milliseconds of its delete, far inside the grace, and the
//! short grace lets the final erasure run before the section ends, so the GiB
//! does not sit on disk through the sections after it. The grace is only a
//! timestamp in the DELETE's store write, so it does not change what is timed.
//! `--sweep-interval 1h` keeps a background pass out of the measurements.

use super::disk::{self, MIB};
use super::server::{Server, Workspace};
use super::stats::{Samples, Section, ms, verdict};
use anyhow::{Context, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The target for the delete with erase, on the 2-core machine.
const TARGET_P50_MS: f64 = 20.0;
const FILES: usize = 256;
const FILE_SIZE: u64 = 4 * MIB;
const ERASE_GRACE: Duration = Duration::from_secs(10);
/// Unmeasured delete/restore rounds first (connection, SQLite page cache).
const WARMUP: usize = 2;

pub async fn run(bin: &Path, scratch: &Path, n: usize) -> anyhow::Result<Section> {
    let grace = format!("{}s", ERASE_GRACE.as_secs());
    let server = Server::start_with_args(
        bin,
        &scratch.join("delete-latency"),
        format!("hfbench-{}", super::random_hex()),
        &["--erase-grace", &grace, "--sweep-interval", "1h"],
    )
    .await?;
    eprintln!("bench: delete latency, server on {}", server.url);
    let measured = measure(&server, n).await;
    super::cleanup(server).await;
    let m = measured?;

    let erase = m.erase.summary();
    let keep = m.keep.summary();
    let mut section = Section::new(format!(
        "DELETE latency, {} MiB volume ({FILES} files × {} MiB) (issue 4), N={n}",
        m.bytes / MIB,
        FILE_SIZE / MIB
    ));
    section.timing("DELETE ?erase_data=true", &erase);
    section.timing("DELETE (data retained)", &keep);
    section.line(format!(
        "target: p50 of DELETE with erase ≤ {TARGET_P50_MS} ms → {} ({:.2} ms)",
        verdict(ms(erase.p50) <= TARGET_P50_MS),
        ms(erase.p50),
    ));
    section.line("");
    section.line("for reference, same run (not a target):");
    section.timing("POST /restore → 200", &m.restore.summary());
    section.line(format!(
        "final delete with erase, then after the {}s grace one sweep: {} bytes erased, \
         POST /admin/sweep {:.0} ms (report {} ms); volume dir gone: {}, trash empty: {}",
        ERASE_GRACE.as_secs(),
        m.final_erase.bytes,
        ms(m.final_erase.wall),
        m.final_erase.report_ms,
        yes_no(m.final_erase.volume_gone),
        yes_no(m.final_erase.trash_empty),
    ));
    Ok(section)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

struct Measured {
    bytes: u64,
    erase: Samples,
    keep: Samples,
    restore: Samples,
    final_erase: FinalErase,
}

struct FinalErase {
    bytes: i64,
    wall: Duration,
    report_ms: u64,
    volume_gone: bool,
    trash_empty: bool,
}

async fn measure(server: &Server, n: usize) -> anyhow::Result<Measured> {
    let body = json!({
        "name": "bench-delete-1g",
        "runtime": {"command": ["sleep", "3600"]},
        "compute": {"data_persistence": "persist"},
    });
    let (ws, status) = server.create_workspace(&body).await?;
    disk::wait_online(server, &ws.id, status).await?;
    let vol = disk::volume_dir(server, &ws.id);
    if !vol.is_dir() {
        bail!("the workspace's volume {} does not exist", vol.display());
    }
    eprintln!(
        "bench: writing {FILES} × {} MiB into {}",
        FILE_SIZE / MIB,
        vol.display()
    );
    let dir = vol.join("d");
    let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let bytes = disk::write_files(&dir, "f", FILES, FILE_SIZE)?;
        disk::sync()?;
        Ok(bytes)
    })
    .await??;

    let mut erase = Samples::default();
    let mut keep = Samples::default();
    let mut restore = Samples::default();
    eprintln!(
        "bench: {n} × (delete with erase, restore, delete, restore) after {WARMUP} unmeasured"
    );
    for i in 0..WARMUP + n {
        let mut round = Round::default();
        // The order alternates so that neither kind always follows the
        // other's restore.
        if i % 2 == 0 {
            round.erase = delete_and_restore(server, &ws, Kind::Erase, &mut round.restore).await?;
            round.keep = delete_and_restore(server, &ws, Kind::Keep, &mut round.restore).await?;
        } else {
            round.keep = delete_and_restore(server, &ws, Kind::Keep, &mut round.restore).await?;
            round.erase = delete_and_restore(server, &ws, Kind::Erase, &mut round.restore).await?;
        }
        if i >= WARMUP {
            erase.push(round.erase);
            keep.push(round.keep);
            restore.extend(round.restore);
        }
    }

    eprintln!("bench: final delete with erase; sweeping after the grace");
    server.delete_workspace(&ws).await?;
    tokio::time::sleep(ERASE_GRACE + Duration::from_millis(500)).await;
    let start = Instant::now();
    let report = server.sweep().await?;
    let wall = start.elapsed();
    let item = report["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|it| it["workspace_id"].as_str() == Some(ws.id.as_str()))
        })
        .with_context(|| format!("the sweep did not erase {}: {report}", ws.id))?;
    if item["outcome"] != "done" {
        bail!("the sweep's erasure of {} did not succeed: {item}", ws.id);
    }
    Ok(Measured {
        bytes,
        erase,
        keep,
        restore,
        final_erase: FinalErase {
            bytes: item["bytes"].as_i64().unwrap_or(-1),
            wall,
            report_ms: report["duration_ms"].as_u64().unwrap_or(0),
            volume_gone: !vol.exists(),
            trash_empty: disk::entries(&server.data_dir.join("trash"))? == 0,
        },
    })
}

#[derive(Default)]
struct Round {
    erase: Duration,
    keep: Duration,
    restore: Samples,
}

#[derive(Clone, Copy)]
enum Kind {
    Erase,
    Keep,
}

/// Times one DELETE of `kind`, then restores the workspace (the restore is
/// timed into `restore`) and waits until it is online again.
async fn delete_and_restore(
    server: &Server,
    ws: &Workspace,
    kind: Kind,
    restore: &mut Samples,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let resp = match kind {
        Kind::Erase => server.delete_workspace(ws).await?,
        Kind::Keep => server.delete_workspace_keeping_data(ws).await?,
    };
    let took = start.elapsed();
    let expected = match kind {
        Kind::Erase => "erase_pending",
        Kind::Keep => "retained",
    };
    if resp["data"] != expected {
        bail!(
            "DELETE of {} answered data {}, expected {expected:?}: {resp}",
            ws.id,
            resp["data"]
        );
    }
    let start = Instant::now();
    let status = server.restore_workspace(ws).await?;
    restore.push(start.elapsed());
    disk::wait_online(server, &ws.id, status).await?;
    Ok(took)
}

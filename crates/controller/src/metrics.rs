//! Metrics as Prometheus text. Gauges (workspaces by status, volumes by
//! state, bytes held) are read from the store at scrape time; counters and
//! latency sums live in memory since the server started.

use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_domain::{SweepAction, SweepOutcome};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// op → (count, total seconds)
    lifecycle: BTreeMap<&'static str, (u64, f64)>,
    sweeps: u64,
    sweep_seconds: f64,
    erasures: u64,
    bytes_erased: u64,
    adopted: u64,
}

impl Metrics {
    pub fn observe_op(&self, op: &'static str, took: Duration) {
        let mut m = self.inner.lock().expect("metrics");
        let e = m.lifecycle.entry(op).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    pub fn observe_sweep(&self, report: &holdfast_cp::sweep::SweepReport) {
        let mut m = self.inner.lock().expect("metrics");
        m.sweeps += 1;
        m.sweep_seconds += report.duration_ms as f64 / 1000.0;
        for item in report
            .items
            .iter()
            .filter(|i| i.outcome == SweepOutcome::Done)
        {
            match item.action {
                SweepAction::Erase | SweepAction::ResumeErase => {
                    m.erasures += 1;
                    m.bytes_erased += item.bytes.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
                }
                SweepAction::Adopt => m.adopted += 1,
                SweepAction::Retain => {}
                // Snapshot work is audited per snapshot; the volume
                // counters stay about volumes.
                SweepAction::Snapshot
                | SweepAction::Prune
                | SweepAction::EraseSnapshot
                | SweepAction::ReportOrphan => {}
            }
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Controller {
    /// Every metric as Prometheus text (the admin's only).
    pub async fn render_metrics(&self, caller: &Caller) -> Result<String> {
        if *caller != Caller::Admin {
            return Err(Error::NotFound(Resource::Route));
        }
        let app = self;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP holdfast_workspaces Workspaces by status.\n# TYPE holdfast_workspaces gauge"
        );
        for (status, n) in app.store.count_workspaces_by_status().await? {
            let _ = writeln!(
                w,
                "holdfast_workspaces{{status=\"{}\"}} {n}",
                escape(&status)
            );
        }
        // From the control plane: with a remote one, volumes live in its store.
        let stats = app.cp.volume_stats().await?;
        let _ = writeln!(
            w,
            "# HELP holdfast_volumes Volume records by state.\n# TYPE holdfast_volumes gauge"
        );
        for (state, n, _) in &stats {
            let _ = writeln!(w, "holdfast_volumes{{state=\"{}\"}} {n}", escape(state));
        }
        let _ = writeln!(
            w,
            "# HELP holdfast_volume_bytes Bytes held by volumes, by state (as of their last measurement).\n# TYPE holdfast_volume_bytes gauge"
        );
        for (state, _, bytes) in &stats {
            let _ = writeln!(
                w,
                "holdfast_volume_bytes{{state=\"{}\"}} {bytes}",
                escape(state)
            );
        }
        let retained: i64 = stats
            .iter()
            .filter(|(s, _, _)| s == "retained" || s == "erase_pending")
            .map(|(_, _, b)| *b)
            .sum();
        let _ = writeln!(
            w,
            "# HELP holdfast_bytes_retained Bytes kept for deleted or detached workspaces (retained or erase_pending).\n# TYPE holdfast_bytes_retained gauge\nholdfast_bytes_retained {retained}"
        );
        let cache = app.store.cache_stats();
        if cache.enabled {
            let _ = writeln!(
                w,
                "# HELP holdfast_store_cache_lookups_total Point reads asked of the store's read cache, by result.\n\
             # TYPE holdfast_store_cache_lookups_total counter\n\
             holdfast_store_cache_lookups_total{{result=\"hit\"}} {}\n\
             holdfast_store_cache_lookups_total{{result=\"miss\"}} {}\n\
             # HELP holdfast_store_writes_total Writes through the store, each of which invalidates its read cache.\n\
             # TYPE holdfast_store_writes_total counter\n\
             holdfast_store_writes_total {}",
                cache.hits, cache.misses, cache.writes
            );
        }
        let m = app.metrics.inner.lock().expect("metrics");
        let _ = writeln!(
            w,
            "# HELP holdfast_erasures_total Volumes erased by this server.\n# TYPE holdfast_erasures_total counter\nholdfast_erasures_total {}",
            m.erasures
        );
        let _ = writeln!(
            w,
            "# HELP holdfast_bytes_erased_total Bytes erased by this server.\n# TYPE holdfast_bytes_erased_total counter\nholdfast_bytes_erased_total {}",
            m.bytes_erased
        );
        let _ = writeln!(
            w,
            "# HELP holdfast_volumes_adopted_total Orphan directories adopted.\n# TYPE holdfast_volumes_adopted_total counter\nholdfast_volumes_adopted_total {}",
            m.adopted
        );
        let _ = writeln!(
            w,
            "# HELP holdfast_sweeper_runs_total Sweeper passes.\n# TYPE holdfast_sweeper_runs_total counter\nholdfast_sweeper_runs_total {}",
            m.sweeps
        );
        let _ = writeln!(
            w,
            "# HELP holdfast_sweeper_duration_seconds Time spent in sweeper passes.\n# TYPE holdfast_sweeper_duration_seconds summary\nholdfast_sweeper_duration_seconds_sum {}\nholdfast_sweeper_duration_seconds_count {}",
            m.sweep_seconds, m.sweeps
        );
        let _ = writeln!(
            w,
            "# HELP holdfast_lifecycle_duration_seconds Latency of lifecycle operations, by operation.\n# TYPE holdfast_lifecycle_duration_seconds summary"
        );
        for (op, (count, sum)) in &m.lifecycle {
            let _ = writeln!(
                w,
                "holdfast_lifecycle_duration_seconds_sum{{op=\"{op}\"}} {sum}"
            );
            let _ = writeln!(
                w,
                "holdfast_lifecycle_duration_seconds_count{{op=\"{op}\"}} {count}"
            );
        }
        drop(m);
        Ok(out)
    }
}

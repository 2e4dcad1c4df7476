//! A sweeper pass over 100,000 volume records (issue 4): target ≤ 1 s.
//!
//! A server is started once on its own data dir (so the migrations run and
//! the default org exists) and stopped; then 100,000 workspaces with one
//! volume each are written straight into its SQLite file by a python3
//! script in one transaction (python3's `sqlite3` keeps xtask free of a
//! SQLite dependency). None of them may run: a live workspace that should
//! be running would be started at boot. The mix:
//!
//! - 1,000 paused workspaces with an `active` volume,
//! - 88,000 removed workspaces with a `retained` volume due in 6 days,
//! - 10,000 removed (with erase) with an `erase_pending` volume due in 1 h,
//! - 1,000 removed workspaces whose `retained` volume expired yesterday.
//!
//! No directory exists for any of them, so the sweep reads records only and
//! erasing one is just its record updates. The server is started again; its
//! start-up pass erases the 1,000 expired ones (reported as its own row,
//! from `/metrics`, not a target). Then nothing is due, and R passes and R
//! dry runs of `POST /admin/sweep` are timed: client wall time and the
//! report's `duration_ms`.
//!
//! Then, as a second, informative measurement, the server is stopped, 59,000
//! of the retained workspaces are made paused (live) with an `active`
//! volume, and the passes are timed again with 60,000 live workspaces:
//! the reconciler lists every live workspace on each of its passes, on the
//! store's single connection, and the sweeper waits behind it.

use super::disk;
use super::server::Server;
use super::stats::{Samples, Section, ms, verdict};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TARGET_MS: f64 = 1000.0;
const PAUSED: u64 = 1_000;
const RETAINED: u64 = 88_000;
const PENDING: u64 = 10_000;
const DUE: u64 = 1_000;
/// Retained workspaces made live (paused) for the second measurement.
const REVIVED: u64 = 59_000;
const REPS: usize = 5;
const REPS_MANY_LIVE: usize = 3;
const STARTUP_SWEEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Inserts the records. Arguments: db path, now (unix ms), then the four
/// counts of the mix (paused, retained, pending, due). Times are unix millis, as the store writes them.
const SEED: &str = r#"
import sqlite3, sys, uuid
db = sys.argv[1]
now, paused, retained, pending, due = map(int, sys.argv[2:7])
DAY = 86_400_000
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA busy_timeout = 5000")
org = con.execute("SELECT id FROM orgs WHERE is_default = 1").fetchone()[0]
runtime, env, compute = '{"command":["true"]}', '{}', '{}'
ws, vols, hist = [], [], []
def add(i, kind):
    wid, vid = str(uuid.uuid4()), str(uuid.uuid4())
    created = now - 30 * DAY + i
    name = f"sweep-bench-{i}"
    if kind == "paused":
        ws.append((wid, org, name, runtime, env, compute, "paused", "paused", None, created, now - DAY, None))
        vols.append((vid, wid, "active", None, None, None, created, created))
        hist.append((vid, created, None, "active", "admin", None))
        return
    if kind == "pending":
        removed, erase = now - 60_000, 1
        state, retain_until, erase_after, reason = "erase_pending", None, now + 3_600_000, "delete_with_erase"
    elif kind == "retained":
        removed, erase = now - DAY, 0
        state, retain_until, erase_after, reason = "retained", removed + 7 * DAY, None, "workspace_deleted"
    else:
        removed, erase = now - 8 * DAY, 0
        state, retain_until, erase_after, reason = "retained", removed + 7 * DAY, None, "workspace_deleted"
    ws.append((wid, org, name, runtime, env, compute, "removed", "removed", erase, created, removed, removed))
    vols.append((vid, wid, state, retain_until, erase_after, reason, created, removed))
    hist.append((vid, created, None, "active", "admin", None))
    hist.append((vid, removed, "active", state, "admin", reason))
i = 0
for kind, count in (("paused", paused), ("retained", retained), ("pending", pending), ("due", due)):
    for _ in range(count):
        add(i, kind)
        i += 1
con.execute("BEGIN")
con.executemany(
    "INSERT INTO workspaces (id, org_id, name, tier, runtime, env, compute, resolved_mode, desired, status, "
    "delete_erase, compute_released, created_at, updated_at, removed_at) "
    "VALUES (?, ?, ?, 2, ?, ?, ?, 'persist', ?, ?, ?, 1, ?, ?, ?)", ws)
con.executemany(
    "INSERT INTO volumes (id, workspace_id, state, bytes, retain_until, erase_after, reason, created_at, updated_at) "
    "VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)", vols)
con.executemany(
    "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) VALUES (?, ?, ?, ?, ?, ?)", hist)
con.execute("COMMIT")
print(con.execute("SELECT count(*) FROM volumes").fetchone()[0])
"#;

/// Makes N removed workspaces with a retained volume (not yet due) paused
/// and live again, their volume `active`. Arguments: db path, now, N.
const REVIVE: &str = r#"
import sqlite3, sys
db = sys.argv[1]
now, n = map(int, sys.argv[2:4])
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA busy_timeout = 5000")
rows = con.execute(
    "SELECT v.id, v.workspace_id FROM volumes v JOIN workspaces w ON w.id = v.workspace_id "
    "WHERE v.state = 'retained' AND v.retain_until > ? AND w.removed_at IS NOT NULL LIMIT ?", (now, n)).fetchall()
con.execute("BEGIN")
con.executemany(
    "UPDATE volumes SET state = 'active', retain_until = NULL, reason = NULL, updated_at = ? WHERE id = ?",
    [(now, v) for v, _ in rows])
con.executemany(
    "UPDATE workspaces SET removed_at = NULL, desired = 'paused', status = 'paused', delete_erase = NULL, "
    "updated_at = ? WHERE id = ?",
    [(now, w) for _, w in rows])
con.execute("COMMIT")
print(con.execute("SELECT count(*) FROM workspaces WHERE removed_at IS NULL").fetchone()[0])
"#;

pub async fn run(bin: &Path, scratch: &Path) -> anyhow::Result<Section> {
    let data = scratch.join("sweep-pass");
    let token = format!("hfbench-{}", super::random_hex());
    // The first start creates the schema and the default org.
    let server = Server::start(bin, &data, token.clone()).await?;
    let db = server.data_dir.join("holdfast.db");
    let status = server.stop().await?;
    if !status.success() {
        bail!("the first start of the sweep server exited with {status}");
    }

    let total = PAUSED + RETAINED + PENDING + DUE;
    eprintln!(
        "bench: inserting {total} workspaces and volumes into {}",
        db.display()
    );
    let seeded = Instant::now();
    let counts = [PAUSED, RETAINED, PENDING, DUE].map(|c| c.to_string());
    let volumes = python(SEED, &db, &counts).await?;
    if volumes != total {
        bail!("seeded {volumes} volume records, expected {total}");
    }
    let seed_time = seeded.elapsed();

    let server = Server::start(bin, &data, token.clone()).await?;
    eprintln!("bench: sweep pass, server on {}", server.url);
    let measured = measure(&server, REPS, true).await;
    super::cleanup(server).await;
    let m = measured?;

    eprintln!("bench: making {REVIVED} retained workspaces live (paused)");
    let live = python(REVIVE, &db, &[REVIVED.to_string()]).await?;
    let server = Server::start(bin, &data, token).await?;
    eprintln!(
        "bench: sweep pass with {live} live workspaces, server on {}",
        server.url
    );
    let measured = measure(&server, REPS_MANY_LIVE, false).await;
    super::cleanup(server).await;
    let many = measured?;

    let wall = m.wall.summary();
    let mut section = Section::new(format!(
        "sweeper pass over {total} volume records (issue 4), R={REPS}"
    ));
    section.timing("POST /admin/sweep (wall)", &wall);
    section.timing("  report duration_ms", &m.report.summary());
    section.timing("dry run (wall)", &m.dry_wall.summary());
    section.timing("  report duration_ms", &m.dry_report.summary());
    section.line(format!(
        "target: every pass ≤ {TARGET_MS:.0} ms → {} (p50 {:.1} ms, max {:.1} ms)",
        verdict(ms(wall.max) <= TARGET_MS),
        ms(wall.p50),
        ms(wall.max),
    ));
    section.line(format!(
        "records: {PAUSED} paused + active, {RETAINED} removed + retained (due in 6 d), \
         {PENDING} removed + erase_pending (due in 1 h), {DUE} removed + retained, expired \
         (seeded in {:.1} s)",
        seed_time.as_secs_f64(),
    ));
    section.line(format!(
        "each timed pass acted on {} records (nothing due); volumes/ holds {} entries; \
         server CPU while idle: {} of one core",
        m.acted, m.volume_dirs, m.idle_cpu,
    ));
    section.line("");
    section.line("not targets, same run:");
    section.line(format!(
        "start-up pass with {DUE} due: {:.0} ms (holdfast_sweeper_duration_seconds_sum), {}",
        ms(m.startup_pass),
        m.startup_actions,
    ));
    section.line(format!(
        "with {live} live (paused) workspaces instead of {PAUSED}, R={REPS_MANY_LIVE} \
         (server CPU while idle: {} of one core):",
        many.idle_cpu
    ));
    section.timing("POST /admin/sweep (wall)", &many.wall.summary());
    section.timing("  report duration_ms", &many.report.summary());
    section.timing("dry run (wall)", &many.dry_wall.summary());
    Ok(section)
}

/// Runs a python3 script on the database with `now` (unix ms) and `args`;
/// returns the count it prints.
async fn python(script: &'static str, db: &Path, args: &[String]) -> anyhow::Result<u64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut argv = vec!["-".to_owned(), db.display().to_string(), now.to_string()];
    argv.extend_from_slice(args);
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut child = Command::new("python3")
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running python3 (needed to seed the sweep benchmark's database)")?;
        child
            .stdin
            .take()
            .context("python3 stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("the python3 script failed ({}): {text}", out.status);
        }
        text.trim()
            .parse()
            .with_context(|| format!("the python3 script printed {text:?}"))
    })
    .await?
}

struct Measured {
    wall: Samples,
    report: Samples,
    dry_wall: Samples,
    dry_report: Samples,
    startup_pass: Duration,
    startup_actions: String,
    acted: usize,
    volume_dirs: usize,
    idle_cpu: String,
}

/// Waits for the start-up pass, then times `reps` passes and dry runs.
/// With `warm`, one of each goes unmeasured first.
async fn measure(server: &Server, reps: usize, warm: bool) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let metrics = loop {
        let text = server.metrics().await?;
        if metric(&text, "holdfast_sweeper_runs_total").is_some_and(|v| v >= 1.0) {
            break text;
        }
        if start.elapsed() > STARTUP_SWEEP_TIMEOUT {
            bail!(
                "no sweeper pass within {STARTUP_SWEEP_TIMEOUT:?} of start; server output:\n{}",
                server.recent_output()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let startup_pass = Duration::from_secs_f64(
        metric(&metrics, "holdfast_sweeper_duration_seconds_sum").unwrap_or(0.0),
    );
    // The server logs `sweeper pass actions=N duration_ms=…` for a pass that
    // did something.
    let startup_actions = strip_ansi(&server.recent_output())
        .lines()
        .find(|l| l.contains("sweeper pass"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("actions=")))
        .map_or_else(
            || "no `sweeper pass` line logged".to_owned(),
            |a| format!("the server logged {a}"),
        );
    let volume_dirs = disk::entries(&server.data_dir.join("volumes"))?;
    let idle_cpu = idle_cpu(server).await;

    let mut wall = Samples::default();
    let mut report = Samples::default();
    let mut dry_wall = Samples::default();
    let mut dry_report = Samples::default();
    let mut acted = 0;
    eprintln!("bench: {reps} sweeps and {reps} dry runs");
    let skip = usize::from(warm);
    for i in 0..reps + skip {
        let t = Instant::now();
        let r = server.sweep().await?;
        let w = t.elapsed();
        let t = Instant::now();
        let d = server.sweep_dry_run().await?;
        let dw = t.elapsed();
        if i < skip {
            continue;
        }
        wall.push(w);
        report.push(report_duration(&r));
        dry_wall.push(dw);
        dry_report.push(report_duration(&d));
        acted = acted.max(r["items"].as_array().map_or(0, Vec::len));
    }
    Ok(Measured {
        wall,
        report,
        dry_wall,
        dry_report,
        startup_pass,
        startup_actions,
        acted,
        volume_dirs,
        idle_cpu,
    })
}

/// The text without its ANSI colour sequences (`ESC [ … m`), which the
/// server's log lines carry around each field.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn report_duration(report: &serde_json::Value) -> Duration {
    Duration::from_millis(report["duration_ms"].as_u64().unwrap_or(0))
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The server's CPU use over 2 idle seconds, as a share of one core: the
/// reconciler's background passes over the live workspaces are the load
/// every request competes with.
async fn idle_cpu(server: &Server) -> String {
    let Some(pid) = server.pid() else {
        return "?".to_owned();
    };
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the `(comm)`, which may hold spaces: utime and stime
        // are the 14th and 15th fields of the line, 12th and 13th after it.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let (Some(a), t) = (ticks(), Instant::now()) else {
        return "?".to_owned();
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let Some(b) = ticks() else {
        return "?".to_owned();
    };
    // USER_HZ is 100 on every Linux this runs on.
    let share = (b - a) as f64 / 100.0 / t.elapsed().as_secs_f64();
    format!("{:.0} %", share * 100.0)
}

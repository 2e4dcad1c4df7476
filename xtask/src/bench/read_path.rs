//! The read path and the fleet at scale (issue 12): requests per second of
//! `GET /health`, `GET /workspaces/:id` and a wrong token on one server in
//! one run, and, with many running workspaces, how long they take to come
//! online, the p99 of `GET /workspaces/:id`, the server's RSS and its CPU
//! while idle.

use super::load::{self, Load};
use super::server::Server;
use super::stats::{Section, ms, verdict};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// `GET /workspaces/:id` must reach this share of `/health`'s req/s.
const TARGET_READ_RATIO: f64 = 0.5;
/// A request with a wrong token must reach this share of `/health`'s.
const TARGET_WRONG_TOKEN_RATIO: f64 = 0.8;
/// p99 of `GET /workspaces/:id` with the fleet running.
const TARGET_P99_MS: f64 = 2.0;
/// The first idle reading: a whole resync period of the server (60 s by
/// default), which is every periodic pass at 1,000 workspaces.
const IDLE: Duration = Duration::from_secs(65);
/// The whole idle window beyond 1,000 workspaces. The usage pass spaces
/// itself out as the fleet grows (about 175 s apart at 10,000), so a 65 s
/// window holds it once or not at all, depending on where it falls; 300 s
/// holds it in proportion.
const IDLE_LARGE: Duration = Duration::from_secs(300);
/// From the last workspace online to the idle window: the creates' last
/// events and the first resync after growth are not idling.
const SETTLE: Duration = Duration::from_secs(30);
/// The fleet must be online within this long of its creation.
const TARGET_ONLINE_S: f64 = 15.0;
const TARGET_RSS_MIB: f64 = 150.0;
/// Idle CPU, % of one core, at the largest fleet and at 1,000.
const TARGET_IDLE_CPU: f64 = 1.0;
const TARGET_IDLE_CPU_1000: f64 = 0.3;

/// Keep-alive connections of every load run (as the wrk run).
const CONNECTIONS: usize = 32;
/// How many distinct wrong tokens the flood row cycles through.
const DISTINCT_WRONG_TOKENS: u64 = 300_000;
/// A token of the right shape that no one was ever given.
const WRONG_TOKEN: &str = "hfo_00000000000000000000000000000000000000000000000000000000deadbeef";

/// The cheap workspace program of these sections.
fn sleeper(name: &str) -> Value {
    json!({ "name": name, "runtime": { "command": ["sleep", "100000"] } })
}

fn addr_of(server: &Server) -> anyhow::Result<SocketAddr> {
    server
        .url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {}", server.url))
}

/// An org and a token of it, through the admin API.
async fn org_token(server: &Server) -> anyhow::Result<(String, String)> {
    let post = |path: String, body: Value| async move {
        let resp = server
            .client
            .post(format!("{}{path}", server.url))
            .header("Authorization", server.auth())
            .json(&body)
            .send()
            .await?;
        let code = resp.status();
        let text = resp.text().await?;
        if code != reqwest::StatusCode::CREATED {
            bail!("POST {path} answered {code}: {text}");
        }
        Ok::<Value, anyhow::Error>(serde_json::from_str(&text)?)
    };
    let org = post("/orgs".into(), json!({ "name": "bench" })).await?;
    let org_id = org["id"].as_str().context("org id")?.to_owned();
    let minted = post(format!("/orgs/{org_id}/tokens"), json!({})).await?;
    let token = minted["token"].as_str().context("org token")?.to_owned();
    Ok((org_id, token))
}

async fn wait_online(server: &Server, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = server.workspace_status(id).await?;
        if status == "online" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("workspace {id} is still {status} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A load run and the server's CPU time it cost.
struct Measured {
    load: Load,
    /// Server CPU (user + system) per request, in microseconds.
    cpu_us: Option<f64>,
}

async fn measure(
    pid: Option<u32>,
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    d: Duration,
    expect: u16,
) -> anyhow::Result<Measured> {
    let before = pid.and_then(cpu_ticks);
    let load = load::run(addr, requests, CONNECTIONS, d, expect).await?;
    let after = pid.and_then(cpu_ticks);
    let cpu_us = match (before, after) {
        // USER_HZ is 100: a tick is 10 ms.
        (Some(a), Some(b)) if load.requests > 0 => {
            Some((b - a) as f64 * 10_000.0 / load.requests as f64)
        }
        _ => None,
    };
    Ok(Measured { load, cpu_us })
}

fn rate_line(section: &mut Section, label: &str, m: &Measured) {
    let l = &m.load;
    let s = l.latencies.summary();
    section.line(format!(
        "{label:<44} {:>9.0} req/s   p50 {:>6.2} ms  p99 {:>6.2} ms   server CPU {} µs/req{}",
        l.per_second(),
        ms(s.p50),
        ms(s.p99),
        m.cpu_us.map_or("?".to_owned(), |c| format!("{c:.1}")),
        if l.unexpected > 0 {
            format!("  ({} unexpected answers!)", l.unexpected)
        } else {
            String::new()
        }
    ));
}

/// Throughput of the three requests, on one server, in one run.
pub async fn read_throughput(bin: &Path, scratch: &Path, secs: u64) -> anyhow::Result<Section> {
    let server = Server::start_with_args(
        bin,
        &scratch.join("read-throughput"),
        format!("hfbench-{}", super::random_hex()),
        &["--sandbox", "none"],
    )
    .await?;
    let measured = measure_reads(&server, secs).await;
    super::cleanup(server).await;
    measured
}

async fn measure_reads(server: &Server, secs: u64) -> anyhow::Result<Section> {
    let addr = addr_of(server)?;
    let admin = server.auth();
    let admin = admin.strip_prefix("Bearer ").unwrap_or(&admin).to_owned();
    let (org_id, org) = org_token(server).await?;
    let (ws, _) = server.create_workspace(&sleeper("reader")).await?;
    let mut body = sleeper("org-reader");
    body["org_id"] = json!(org_id);
    let (org_ws, _) = server.create_workspace(&body).await?;
    wait_online(server, &ws.id).await?;
    wait_online(server, &org_ws.id).await?;
    let d = Duration::from_secs(secs);
    let health = load::get(addr, "/health", None);
    let one = |path: &str, token: Option<&str>| vec![load::get(addr, path, token)];
    // Distinct well-formed wrong tokens, more than the server can keep in
    // memory for as long as a round of them takes: each is a store lookup,
    // as a flood of guesses would be.
    let distinct: Vec<Vec<u8>> = (0..DISTINCT_WRONG_TOKENS)
        .map(|i| load::get(addr, "/workspaces", Some(&format!("hfo_{i:064x}"))))
        .collect();

    eprintln!("bench: read throughput, {CONNECTIONS} connections, {secs} s per request kind");
    let pid = server.pid();
    load::run(
        addr,
        vec![health.clone()],
        CONNECTIONS,
        Duration::from_secs(1),
        200,
    )
    .await?;
    let h1 = measure(pid, addr, vec![health.clone()], d, 200).await?;
    let ws_admin = measure(
        pid,
        addr,
        one(&format!("/workspaces/{}", ws.id), Some(&admin)),
        d,
        200,
    )
    .await?;
    let ws_org = measure(
        pid,
        addr,
        one(&format!("/workspaces/{}", org_ws.id), Some(&org)),
        d,
        200,
    )
    .await?;
    let wrong = measure(pid, addr, one("/workspaces", Some(WRONG_TOKEN)), d, 401).await?;
    let wrong_many = measure(pid, addr, distinct, d, 401).await?;
    let h2 = measure(pid, addr, vec![health], d, 200).await?;

    let health_rps = (h1.load.per_second() + h2.load.per_second()) / 2.0;
    let mut s = Section::new(format!(
        "read path throughput (issue 12), {CONNECTIONS} keep-alive connections from one thread, {secs} s each, one server"
    ));
    rate_line(&mut s, "GET /health (first)", &h1);
    rate_line(&mut s, "GET /workspaces/<id> (admin token)", &ws_admin);
    rate_line(&mut s, "GET /workspaces/<id> (org token)", &ws_org);
    rate_line(&mut s, "GET /workspaces, one wrong token", &wrong);
    rate_line(
        &mut s,
        &format!("GET /workspaces, {DISTINCT_WRONG_TOKENS} distinct wrong tokens"),
        &wrong_many,
    );
    rate_line(&mut s, "GET /health (last)", &h2);
    let r_admin = ws_admin.load.per_second() / health_rps;
    let r_org = ws_org.load.per_second() / health_rps;
    let r_wrong = wrong.load.per_second() / health_rps;
    s.line(format!(
        "ratios to /health (mean of both runs, {health_rps:.0} req/s): admin read {r_admin:.2}x, org read {r_org:.2}x, \
         wrong token {r_wrong:.2}x, distinct wrong tokens {:.2}x",
        wrong_many.load.per_second() / health_rps
    ));
    // When the generator's one thread is what limits every kind alike, the
    // req/s ratios flatter the slower kinds; the server's CPU per request
    // does not depend on the generator.
    let health_cpu = match (h1.cpu_us, h2.cpu_us) {
        (Some(a), Some(b)) => Some((a + b) / 2.0),
        _ => None,
    };
    if let (Some(h), Some(a), Some(o), Some(w)) =
        (health_cpu, ws_admin.cpu_us, ws_org.cpu_us, wrong.cpu_us)
    {
        s.line(format!(
            "server CPU per request relative to /health ({h:.1} µs): admin read {:.2}x, org read {:.2}x, wrong token {:.2}x \
             (the req/s ratios hold only while the server, not the generator, is the bottleneck)",
            a / h,
            o / h,
            w / h
        ));
    }
    s.line(format!(
        "targets: GET /workspaces/<id> ≥ {TARGET_READ_RATIO}x → {} (org token {r_org:.2}x, admin {r_admin:.2}x); \
         wrong token ≥ {TARGET_WRONG_TOKEN_RATIO}x → {} ({r_wrong:.2}x)",
        verdict(r_org.min(r_admin) >= TARGET_READ_RATIO),
        verdict(r_wrong >= TARGET_WRONG_TOKEN_RATIO),
    ));
    Ok(s)
}

/// The server's resident set, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The server's CPU over `window` of idling, in % of one core.
async fn idle_cpu(pid: u32, window: Duration) -> Option<f64> {
    let a = cpu_ticks(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    cpu_share(a, cpu_ticks(pid)?, t.elapsed())
}

/// Ticks `a` to `b` over `elapsed`, in % of one core.
fn cpu_share(a: u64, b: u64, elapsed: Duration) -> Option<f64> {
    // USER_HZ is 100 on every Linux this runs on.
    Some(b.checked_sub(a)? as f64 / 100.0 / elapsed.as_secs_f64() * 100.0)
}

/// What one fleet size measured.
struct Step {
    count: usize,
    created_in: Duration,
    online_in: Duration,
    rss: Option<f64>,
    /// Over the whole idle window (`IDLE`, or `IDLE_LARGE` beyond 1,000).
    idle_cpu: Option<f64>,
    /// Over its first `IDLE`.
    idle_first: Option<f64>,
    idle_window: Duration,
    sequential: Load,
    loaded: Load,
    /// Cache hits, misses and store writes during the two load runs.
    cache: Option<(f64, f64, f64)>,
}

/// A sample of `/metrics`: `name` or `name{labels}`, as written.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Hits, misses and writes of the server's read cache so far.
async fn cache_counters(server: &Server) -> Option<(f64, f64, f64)> {
    let text = server.metrics().await.ok()?;
    Some((
        metric(&text, "holdfast_store_cache_lookups_total{result=\"hit\"}")?,
        metric(&text, "holdfast_store_cache_lookups_total{result=\"miss\"}")?,
        metric(&text, "holdfast_store_writes_total")?,
    ))
}

/// The fleet at scale: grows to 1,000 running workspaces, then to `max`,
/// measuring at each size.
pub async fn scale(bin: &Path, scratch: &Path, max: usize, secs: u64) -> anyhow::Result<Section> {
    let data_dir = scratch.join("scale");
    let server = Server::start_with_args(
        bin,
        &data_dir,
        format!("hfbench-{}", super::random_hex()),
        &["--sandbox", "none"],
    )
    .await?;
    let mut steps = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut stopped_by = None;
    let sizes: Vec<usize> = if max > 1000 {
        vec![1000, max]
    } else {
        vec![max]
    };
    for size in sizes {
        match grow_and_measure(&server, &mut ids, size, secs).await {
            Ok(step) => steps.push(step),
            Err(e) => {
                stopped_by = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let data_dir = server.data_dir.clone();
    // 10,000 deletes would take longer than the measurement; a graceful stop
    // stops every workspace, and what it leaves is killed by its recorded pid.
    match server.stop().await {
        Ok(_) => {}
        Err(e) => eprintln!("bench: stopping the scale server: {e:#}"),
    }
    kill_leftovers(&data_dir);

    let mut s = Section::new(format!(
        "running workspaces at scale (issue 12), runtime `sleep 100000`, --sandbox none, up to {max}"
    ));
    for st in &steps {
        s.line(format!(
            "{} running: created in {:.1} s, all online {:.1} s after the first create ({:.0} creates/s); \
             RSS {}; idle CPU {} of one core ({} s, from {} s after online{})",
            st.count,
            st.created_in.as_secs_f64(),
            st.online_in.as_secs_f64(),
            st.count as f64 / st.online_in.as_secs_f64(),
            st.rss.map_or("?".into(), |r| format!("{r:.0} MiB")),
            st.idle_cpu.map_or("?".into(), |c| format!("{c:.2} %")),
            st.idle_window.as_secs(),
            SETTLE.as_secs(),
            if st.idle_window > IDLE {
                format!(
                    "; its first {} s: {}",
                    IDLE.as_secs(),
                    st.idle_first.map_or("?".into(), |c| format!("{c:.2} %"))
                )
            } else {
                String::new()
            },
        ));
        let seq = st.sequential.latencies.summary();
        s.timing(
            format!("{}: GET /workspaces/<id>, 1 connection", st.count),
            &seq,
        );
        let lo = st.loaded.latencies.summary();
        s.timing(
            format!(
                "{}: GET /workspaces/<id>, {CONNECTIONS} connections",
                st.count
            ),
            &lo,
        );
        s.line(format!(
            "  ({:.0} req/s on one connection, {:.0} req/s on {CONNECTIONS}, random ids of the fleet{})",
            st.sequential.per_second(),
            st.loaded.per_second(),
            st.cache.map_or(String::new(), |(hits, misses, writes)| format!(
                "; store read cache {:.0} % hits, {writes:.0} store writes meanwhile",
                hits * 100.0 / (hits + misses).max(1.0)
            ))
        ));
    }
    if let Some(why) = &stopped_by {
        s.line(format!(
            "stopped growing at {} workspaces: {why}",
            ids.len()
        ));
    }
    if let Some(last) = steps.last() {
        let p99_one = ms(last.sequential.latencies.summary().p99);
        let p99_loaded = ms(last.loaded.latencies.summary().p99);
        let cpu_1000 = steps
            .iter()
            .find(|s| s.count == 1000)
            .and_then(|s| s.idle_cpu);
        s.line(format!(
            "targets at {}: online ≤ {TARGET_ONLINE_S} s → {} ; RSS ≤ {TARGET_RSS_MIB} MiB → {} ; \
             idle CPU ≤ {TARGET_IDLE_CPU} % → {} ; at 1000 ≤ {TARGET_IDLE_CPU_1000} % → {} ; \
             p99 ≤ {TARGET_P99_MS} ms → {} on 1 connection ({p99_one:.2} ms), {} on {CONNECTIONS} ({p99_loaded:.2} ms)",
            last.count,
            verdict(last.online_in.as_secs_f64() <= TARGET_ONLINE_S),
            verdict(last.rss.is_some_and(|r| r <= TARGET_RSS_MIB)),
            verdict(last.idle_cpu.is_some_and(|c| c <= TARGET_IDLE_CPU)),
            cpu_1000.map_or("not measured", |c| verdict(c <= TARGET_IDLE_CPU_1000)),
            verdict(p99_one <= TARGET_P99_MS),
            verdict(p99_loaded <= TARGET_P99_MS),
        ));
    }
    if steps.is_empty() {
        bail!(
            "no fleet size could be measured: {}",
            stopped_by.unwrap_or_default()
        );
    }
    Ok(s)
}

async fn grow_and_measure(
    server: &Server,
    ids: &mut Vec<String>,
    size: usize,
    secs: u64,
) -> anyhow::Result<Step> {
    let pid = server.pid().context("the server has no pid")?;
    let from = ids.len();
    eprintln!("bench: growing the fleet from {from} to {size}");
    let start = Instant::now();
    // Creates from a few clients at once, as a fleet is created.
    let next = std::sync::atomic::AtomicUsize::new(from);
    let created = std::sync::Mutex::new(Vec::new());
    let creators = (0..8).map(|_| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= size {
                return Ok::<(), anyhow::Error>(());
            }
            let (ws, status) = server.create_workspace(&sleeper(&format!("s{i}"))).await?;
            created.lock().expect("created").push((ws.id, status));
        }
    });
    let results = futures_join_all(creators).await;
    let created_in = start.elapsed();
    let created = created.into_inner().expect("created");
    let mut pending: Vec<String> = Vec::new();
    for (id, status) in created {
        if status != "online" {
            pending.push(id.clone());
        }
        ids.push(id);
    }
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.context(format!("creating workspace {} of {size}", ids.len() + 1)));
    }
    // Then until the last one is online.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let status = server.workspace_status(&id).await?;
            match status.as_str() {
                "online" => {}
                "failed" => bail!("workspace {id} failed to start"),
                _ => still.push(id),
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bail!("{} workspaces still not online after 600 s", pending.len());
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let online_in = start.elapsed();
    let window = if size > 1000 { IDLE_LARGE } else { IDLE };
    eprintln!(
        "bench: {size} online after {:.1} s; settling {} s, then {} s of idle",
        online_in.as_secs_f64(),
        SETTLE.as_secs(),
        window.as_secs()
    );
    tokio::time::sleep(SETTLE).await;
    let idle_from = cpu_ticks(pid).map(|t| (t, Instant::now()));
    let idle_first = idle_cpu(pid, IDLE).await;
    let idle_cpu = if window > IDLE {
        tokio::time::sleep(window - IDLE).await;
        idle_from.and_then(|(a, t)| cpu_share(a, cpu_ticks(pid)?, t.elapsed()))
    } else {
        idle_first
    };
    let rss = rss_mib(pid);

    let addr = addr_of(server)?;
    let auth = server.auth();
    let token = auth.strip_prefix("Bearer ").unwrap_or(&auth);
    // Every running workspace, in a shuffled order, so that reads spread
    // over the fleet rather than hitting one row.
    let mut order: Vec<&String> = ids.iter().collect();
    shuffle(&mut order);
    let reqs: Vec<Vec<u8>> = order
        .iter()
        .map(|id| load::get(addr, &format!("/workspaces/{id}"), Some(token)))
        .collect();
    let d = Duration::from_secs(secs);
    let before = cache_counters(server).await;
    let sequential = load::run(addr, reqs.clone(), 1, d, 200).await?;
    let loaded = load::run(addr, reqs, CONNECTIONS, d, 200).await?;
    let after = cache_counters(server).await;
    let cache = match (before, after) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1, b.2 - a.2)),
        _ => None,
    };
    Ok(Step {
        count: ids.len(),
        created_in,
        online_in,
        rss,
        idle_cpu,
        idle_first,
        idle_window: window,
        sequential,
        loaded,
        cache,
    })
}

/// Awaits every future, concurrently, on this task.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(futs.iter_mut()) {
            if let Some(f) = fut {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *fut = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// A Fisher–Yates shuffle from the standard library's random hasher keys.
fn shuffle<T>(v: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..v.len()).rev() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Kills, by the pid each recorded, the workspace processes a server left
/// (its stop gives up on a fleet this size after a minute). Only pids whose
/// start time still matches the record are signalled.
fn kill_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("run")) else {
        return;
    };
    let mut killed = 0;
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut parts = text.split_whitespace();
        let (Some(pid), start) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next(),
        ) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let started = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19).map(str::to_owned));
        if start.is_some() && started.as_deref() != start {
            continue;
        }
        let ok = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        killed += usize::from(ok);
    }
    if killed > 0 {
        eprintln!("bench: killed {killed} workspace processes the server left");
    }
}

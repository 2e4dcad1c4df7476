//! The container backend (issue 13), on a throwaway Podman started here as
//! `cargo xtask test` starts it (`podman.rs`), in one run:
//!
//! - create → online through `holdfast serve --backend container`, beside
//!   the bare engine doing the same start: the Engine API's volume create,
//!   container create (the same image, command, mount and confinement as
//!   holdfast's) and start, sent over the same socket by this program, half
//!   of its samples before holdfast is measured and half after. A
//!   `podman run -d` of the same image and command is a reference row (it
//!   adds the CLI's own start-up).
//! - restart of a workspace whose volume holds 1 GiB, beside one whose
//!   volume is empty, alternating: the ratio says whether data size reaches
//!   the restart path (it must not: nothing is copied).

use super::create_online::COMMAND;
use super::server::Server;
use super::stats::{Samples, Section, ms, verdict};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WARMUP: usize = 3;
const TARGET_START_RATIO: f64 = 1.2;
const TARGET_RESTART_RATIO: f64 = 1.1;
const BIG_BYTES: u64 = 1 << 30;
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(bin: &Path, scratch: &Path, n: usize) -> anyhow::Result<Section> {
    let Some(engine) = crate::podman::Engine::start(false, bin)? else {
        bail!(
            "the container section needs podman, runc and busybox-static \
             (apt-get install -y podman runc busybox-static)"
        );
    };
    // The engine (and everything on it) goes when it is dropped, measured
    // or not.
    let m = measure(bin, scratch, n, &engine).await?;
    drop(engine);

    let bare = m.bare.summary();
    let holdfast = m.holdfast.summary();
    let cli = m.cli.summary();
    let empty = m.restart_empty.summary();
    let big = m.restart_big.summary();
    let mut section = Section::new(format!(
        "container create → online (issue 13), Podman {} over its Docker API, N={n}, runtime `{}`",
        m.version,
        COMMAND.join(" ")
    ));
    section.timing("bare engine: volume + create + start", &bare);
    section.timing("holdfast --backend container create → online", &holdfast);
    section.ratio("holdfast ÷ bare engine", &holdfast, &bare);
    let ratio = holdfast.p50.as_secs_f64() / bare.p50.as_secs_f64();
    section.line(format!(
        "target: holdfast p50 ≤ {TARGET_START_RATIO}× the bare engine → {} ({ratio:.2}x)",
        verdict(ratio <= TARGET_START_RATIO)
    ));
    section.timing("reference: podman run -d (CLI)", &cli);
    section.line(format!(
        "p95: bare engine {:.2} ms, holdfast {:.2} ms ({:.2}x), podman run -d {:.2} ms",
        ms(bare.p95),
        ms(holdfast.p95),
        holdfast.p95.as_secs_f64() / bare.p95.as_secs_f64(),
        ms(cli.p95)
    ));
    section.line("");
    section.line(format!(
        "restart (POST /workspaces/<id>/restart → online), {} rounds each, alternating:",
        m.rounds
    ));
    section.timing("restart, empty volume", &empty);
    section.timing("restart, volume with 1 GiB", &big);
    section.ratio("1 GiB ÷ empty", &big, &empty);
    section.line(format!(
        "p95: empty {:.2} ms, 1 GiB {:.2} ms ({:.2}x)",
        ms(empty.p95),
        ms(big.p95),
        big.p95.as_secs_f64() / empty.p95.as_secs_f64()
    ));
    let restart_ratio = big.p50.as_secs_f64() / empty.p50.as_secs_f64();
    section.line(format!(
        "target: 1 GiB ÷ empty p50 ≤ {TARGET_RESTART_RATIO} → {} ({restart_ratio:.2}x); the 1 GiB volume still held {} bytes after",
        verdict(restart_ratio <= TARGET_RESTART_RATIO),
        m.big_after
    ));
    Ok(section)
}

struct Measured {
    version: String,
    bare: Samples,
    holdfast: Samples,
    cli: Samples,
    restart_empty: Samples,
    restart_big: Samples,
    rounds: usize,
    big_after: u64,
}

async fn measure(
    bin: &Path,
    scratch: &Path,
    n: usize,
    engine: &crate::podman::Engine,
) -> anyhow::Result<Measured> {
    let socket = PathBuf::from(
        engine
            .host
            .strip_prefix("unix://")
            .context("the engine listens on a unix socket")?,
    );
    let mut bare = Bare {
        socket: socket.clone(),
        next: 0,
    };
    let version = bare.version().await?;
    eprintln!("bench: bare engine, first half");
    bare.sample(WARMUP).await?;
    let mut base = bare.sample(n / 2).await?;

    let server = Server::start_with_args(
        bin,
        &scratch.join("container"),
        format!("hfbench-{}", super::random_hex()),
        &[
            "--backend",
            "container",
            "--container-host",
            &engine.host,
            "--container-image",
            crate::podman::IMAGE,
        ],
    )
    .await?;
    let measured = async {
        eprintln!("bench: {n} creates on the container backend");
        for i in 0..WARMUP {
            create_until_online(&server, &format!("warmup-{i}")).await?;
        }
        let mut holdfast = Samples::default();
        for i in 0..n {
            holdfast.push(create_until_online(&server, &format!("c-{i}")).await?.1);
        }

        eprintln!("bench: restarts, 1 GiB beside empty");
        let (empty_id, _) = create_until_online(&server, "restart-empty").await?;
        let (big_id, _) = create_until_online(&server, "restart-big").await?;
        let big_file = engine
            .volumes
            .join(format!("holdfast-{big_id}"))
            .join("_data")
            .join("big.bin");
        write_big(&big_file)?;
        let rounds = n.clamp(5, 20);
        let (mut restart_empty, mut restart_big) = (Samples::default(), Samples::default());
        for _ in 0..WARMUP {
            restart_until_online(&server, &empty_id).await?;
            restart_until_online(&server, &big_id).await?;
        }
        for _ in 0..rounds {
            restart_empty.push(restart_until_online(&server, &empty_id).await?);
            restart_big.push(restart_until_online(&server, &big_id).await?);
        }
        let big_after = std::fs::metadata(&big_file).map_or(0, |m| m.len());
        Ok::<_, anyhow::Error>((holdfast, restart_empty, restart_big, rounds, big_after))
    }
    .await;
    super::cleanup(server).await;
    let (holdfast, restart_empty, restart_big, rounds, big_after) = measured?;

    eprintln!("bench: bare engine, second half");
    base.extend(bare.sample(n - n / 2).await?);
    eprintln!("bench: podman run -d, for reference");
    let cli = podman_run(&engine.host, n).await?;
    Ok(Measured {
        version,
        bare: base,
        holdfast,
        cli,
        restart_empty,
        restart_big,
        rounds,
        big_after,
    })
}

/// A create, timed until the workspace is `online`.
async fn create_until_online(server: &Server, name: &str) -> anyhow::Result<(String, Duration)> {
    let body = json!({
        "name": name,
        "runtime": {"command": COMMAND},
        "compute": {"data_persistence": "persist"},
    });
    let start = Instant::now();
    let (ws, mut status) = server.create_workspace(&body).await?;
    while status != "online" {
        if status == "failed" || start.elapsed() > ONLINE_TIMEOUT {
            bail!(
                "workspace {name} is {status}; server output:\n{}",
                server.recent_output()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        status = server.workspace_status(&ws.id).await?;
    }
    Ok((ws.id, start.elapsed()))
}

/// A restart, timed until a new instance is `online`.
async fn restart_until_online(server: &Server, id: &str) -> anyhow::Result<Duration> {
    let before = server.workspace_field(id, "instance_id").await?;
    let start = Instant::now();
    let view = server.restart_workspace(id).await?;
    let mut seen = (
        view["status"].as_str().unwrap_or_default().to_owned(),
        view["instance_id"].as_str().unwrap_or_default().to_owned(),
    );
    while seen.0 != "online" || seen.1 == before {
        if start.elapsed() > ONLINE_TIMEOUT {
            bail!(
                "restart of {id}: still {seen:?}; server output:\n{}",
                server.recent_output()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        seen = (
            server.workspace_status(id).await?,
            server.workspace_field(id, "instance_id").await?,
        );
    }
    Ok(start.elapsed())
}

/// 1 GiB of real (not sparse) bytes, on disk before the restarts begin.
fn write_big(path: &Path) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    for _ in 0..BIG_BYTES / chunk.len() as u64 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

/// The bare engine: Engine API calls over its socket, one connection each.
struct Bare {
    socket: PathBuf,
    next: usize,
}

impl Bare {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} /v1.41{path} HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, text))
    }

    async fn version(&self) -> anyhow::Result<String> {
        let (status, text) = self.call("GET", "/version", None).await?;
        if status != 200 {
            bail!("GET /version answered {status}: {text}");
        }
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        // The body may be chunked: the JSON is between the first `{` and
        // the last `}`.
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
        Ok(v["Version"].as_str().unwrap_or("?").to_owned())
    }

    /// `count` starts, each a named volume, a container mounting it with
    /// holdfast's confinement, and its start.
    async fn sample(&mut self, count: usize) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for _ in 0..count {
            let name = format!("hfbare-{}", self.next);
            self.next += 1;
            let start = Instant::now();
            let (s, t) = self
                .call("POST", "/volumes/create", Some(&json!({"Name": name})))
                .await?;
            if s != 201 {
                bail!("volume create answered {s}: {t}");
            }
            let body = json!({
                "Image": crate::podman::IMAGE,
                "Entrypoint": [COMMAND[0]],
                "Cmd": &COMMAND[1..],
                "WorkingDir": "/data",
                "Labels": {"holdfast.bench": "bare"},
                "HostConfig": {
                    "Binds": [format!("{name}:/data:rw")],
                    "NetworkMode": "host",
                    "Privileged": false,
                    "CapDrop": ["ALL"],
                    "SecurityOpt": ["no-new-privileges"],
                    "ReadonlyRootfs": true,
                    "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
                    "Init": true,
                    "Memory": 536_870_912,
                    "MemorySwap": 536_870_912,
                    "PidsLimit": 128,
                    "CpuShares": 1024,
                },
            });
            let (s, t) = self
                .call(
                    "POST",
                    &format!("/containers/create?name={name}"),
                    Some(&body),
                )
                .await?;
            if s != 201 {
                bail!("container create answered {s}: {t}");
            }
            let (s, t) = self
                .call("POST", &format!("/containers/{name}/start"), None)
                .await?;
            if s != 204 {
                bail!("container start answered {s}: {t}");
            }
            samples.push(start.elapsed());
        }
        Ok(samples)
    }
}

/// `podman --url … run -d` of the same image and command, `count` times.
async fn podman_run(host: &str, count: usize) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for i in 0..WARMUP + count {
        let name = format!("hfcli-{i}");
        let start = Instant::now();
        let out = tokio::process::Command::new("podman")
            .args([
                "--url",
                host,
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "host",
            ])
            .args(["-v", &format!("{name}:/data"), "-w", "/data"])
            .arg(crate::podman::IMAGE)
            .args(COMMAND)
            .output()
            .await
            .context("running podman run")?;
        if !out.status.success() {
            bail!(
                "podman run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    Ok(samples)
}

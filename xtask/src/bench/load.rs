//! A small wrk-like load generator: N keep-alive HTTP/1.1 connections, each
//! sending its next request as soon as the previous answer is read, for a
//! fixed time, on one thread of its own (as `wrk -t1` would), so that the
//! server keeps the machine's other core and the generator's own cost is
//! small and the same for every request measured.
//!
//! It writes raw requests and reads answers by `Content-Length`, which is
//! all holdfast's JSON answers use; an answer without one (chunked) is an
//! error, not a guess.

use super::stats::Samples;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one run measured.
#[derive(Debug)]
pub struct Load {
    pub requests: u64,
    /// Answers whose status was not the one expected.
    pub unexpected: u64,
    pub elapsed: Duration,
    /// The latency of every request, from writing it to reading its answer.
    pub latencies: Samples,
}

impl Load {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// A `GET path` request with an optional bearer token, as bytes.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Runs `connections` connections against `addr` for `duration`; connection
/// `i` starts `i * len / connections` into the list of requests and walks it
/// round, so that the connections spread over a list of many requests
/// rather than moving through it together. Every answer must have status
/// `expect`.
pub async fn run(
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    connections: usize,
    duration: Duration,
    expect: u16,
) -> anyhow::Result<Load> {
    if requests.is_empty() {
        bail!("no requests to send");
    }
    // A thread and a runtime of its own: the bench's main runtime is busy
    // with nothing, but this keeps the generator at one core, always.
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let requests = std::sync::Arc::new(requests);
            let start = Instant::now();
            let deadline = start + duration;
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..connections {
                let requests = requests.clone();
                let first = i * requests.len() / connections;
                tasks.spawn(connection(addr, requests, first, deadline, expect));
            }
            let mut total = Load {
                requests: 0,
                unexpected: 0,
                elapsed: Duration::ZERO,
                latencies: Samples::default(),
            };
            while let Some(done) = tasks.join_next().await {
                let one = done.context("a load connection panicked")??;
                total.requests += one.requests;
                total.unexpected += one.unexpected;
                total.latencies.extend(one.latencies);
            }
            total.elapsed = start.elapsed();
            Ok(total)
        })
    })
    .await
    .context("the load thread panicked")?
}

async fn connection(
    addr: SocketAddr,
    requests: std::sync::Arc<Vec<Vec<u8>>>,
    first: usize,
    deadline: Instant,
    expect: u16,
) -> anyhow::Result<Load> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8192);
    let mut out = Load {
        requests: 0,
        unexpected: 0,
        elapsed: Duration::ZERO,
        latencies: Samples::default(),
    };
    let mut k = first;
    while Instant::now() < deadline {
        let req = &requests[k % requests.len()];
        k += 1;
        let sent = Instant::now();
        stream.write_all(req).await.context("writing a request")?;
        let status = read_answer(&mut stream, &mut buf).await?;
        out.latencies.push(sent.elapsed());
        out.requests += 1;
        if status != expect {
            out.unexpected += 1;
        }
    }
    Ok(out)
}

/// Reads one answer (head and `Content-Length` body) and returns its
/// status. `buf` keeps bytes of the next answer, if any arrived early.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end]).context("answer head")?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no status in {head:?}"))?;
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .with_context(|| format!("an answer without Content-Length: {head:?}"))?;
            let total = head_end + 4 + length;
            while buf.len() < total {
                fill(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        fill(stream, buf).await?;
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.context("reading an answer")?;
    if n == 0 {
        bail!("the server closed the connection");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

//! `holdfast runtime`: the built-in workspace program.
//!
//! It keeps a memory worth keeping: every message it is sent is appended to
//! `<data dir>/memory/messages.jsonl`, and every answer includes the history
//! it remembers. It serves that on a loopback HTTP port, registers the port
//! with the platform using its workspace token, and heartbeats. A token the
//! platform has revoked (the workspace was restarted or deleted) makes it
//! exit, so an old instance never lingers beside a new one.

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub text: String,
    pub at: String,
}

struct Memory {
    path: PathBuf,
    /// Serialises appends so that lines never interleave.
    lock: Mutex<()>,
}

impl Memory {
    async fn history(&self) -> anyhow::Result<Vec<Message>> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        // A line torn by a crash mid-write is skipped, not fatal.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    async fn append(&self, msgs: &[Message]) -> anyhow::Result<()> {
        let _g = self.lock.lock().await;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        let mut buf = String::new();
        for m in msgs {
            buf.push_str(&serde_json::to_string(m)?);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).await?;
        f.sync_data().await?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Incoming {
    text: String,
}

#[derive(Debug, Serialize)]
struct Reply {
    reply: Message,
    history: Vec<Message>,
}

#[derive(Debug, Serialize)]
struct HistoryBody {
    messages: Vec<Message>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

type Err500 = (axum::http::StatusCode, String);

fn internal(e: anyhow::Error) -> Err500 {
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("{e:#}"),
    )
}

async fn post_message(
    State(mem): State<Arc<Memory>>,
    Json(m): Json<Incoming>,
) -> Result<Json<Reply>, Err500> {
    let before = mem.history().await.map_err(internal)?;
    let remembered = before.iter().filter(|m| m.role == "user").count();
    let user = Message {
        role: "user".into(),
        text: m.text.clone(),
        at: now(),
    };
    let reply = Message {
        role: "agent".into(),
        text: format!(
            "You said {:?}. I remember {} earlier message(s).",
            m.text, remembered
        ),
        at: now(),
    };
    mem.append(&[user, reply.clone()]).await.map_err(internal)?;
    let history = mem.history().await.map_err(internal)?;
    Ok(Json(Reply { reply, history }))
}

async fn get_messages(State(mem): State<Arc<Memory>>) -> Result<Json<HistoryBody>, Err500> {
    Ok(Json(HistoryBody {
        messages: mem.history().await.map_err(internal)?,
    }))
}

/// What the platform answers to a registration.
#[derive(Debug, Deserialize)]
struct Registered {
    heartbeat_interval_ms: u64,
}

enum Outcome {
    Ok(reqwest::Response),
    /// The token is no longer valid: this instance has been replaced.
    Revoked,
    Unreachable,
}

async fn call(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Outcome {
    match client.post(url).bearer_auth(token).json(&body).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => Outcome::Revoked,
        Ok(r) if r.status().is_success() => Outcome::Ok(r),
        Ok(r) => {
            eprintln!("holdfast runtime: {url} answered {}", r.status());
            Outcome::Unreachable
        }
        Err(e) => {
            eprintln!("holdfast runtime: {url}: {e}");
            Outcome::Unreachable
        }
    }
}

pub async fn run() -> anyhow::Result<()> {
    let data_dir = PathBuf::from(
        std::env::var_os("HOLDFAST_DATA_DIR").context("HOLDFAST_DATA_DIR is not set")?,
    );
    let platform =
        std::env::var("HOLDFAST_PLATFORM_URL").context("HOLDFAST_PLATFORM_URL is not set")?;
    let token = std::env::var("HOLDFAST_TOKEN").context("HOLDFAST_TOKEN is not set")?;
    let memory_dir = data_dir.join("memory");
    tokio::fs::create_dir_all(&memory_dir).await?;
    let mem = Arc::new(Memory {
        path: memory_dir.join("messages.jsonl"),
        lock: Mutex::new(()),
    });

    let app = Router::new()
        .route("/messages", get(get_messages).post(post_message))
        .with_state(mem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let my_url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let body = serde_json::json!({ "url": my_url });
    let register_url = format!("{platform}/registry/register");
    let heartbeat_url = format!("{platform}/registry/heartbeat");
    let mut backoff = Duration::from_millis(50);
    let interval = loop {
        match call(&client, &register_url, &token, body.clone()).await {
            Outcome::Ok(r) => {
                let reg: Registered = r.json().await.context("reading the registration answer")?;
                break Duration::from_millis(reg.heartbeat_interval_ms.clamp(100, 60_000));
            }
            Outcome::Revoked => anyhow::bail!("the platform refused this workspace token; exiting"),
            Outcome::Unreachable => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    eprintln!("holdfast runtime: registered at {my_url}");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                if let Outcome::Revoked = call(&client, &heartbeat_url, &token, serde_json::json!({})).await {
                    anyhow::bail!("the platform revoked this workspace token; exiting");
                }
            }
        }
    }
    server.abort();
    Ok(())
}

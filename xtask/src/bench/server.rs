//! A release `holdfast serve` started for a benchmark: its process, its URL,
//! one keep-alive HTTP client, and the workspaces the benchmark created on it.

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The server stops its workspaces' processes on SIGTERM (10 s grace each),
/// so this only has to cover a slow stop, not a hung one.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the server's last output lines are kept to explain a failure.
const KEPT_LINES: usize = 60;

/// A workspace this benchmark created and has not deleted yet.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: String,
    pub name: String,
}

pub struct Server {
    child: Child,
    pub url: String,
    token: String,
    pub client: reqwest::Client,
    output: Arc<Mutex<VecDeque<String>>>,
    created: Mutex<Vec<Workspace>>,
}

impl Server {
    /// Starts `<bin> serve` on a free port with a fresh data dir and waits
    /// for its `listening on http://…` line.
    pub async fn start(bin: &Path, data_dir: &Path, token: String) -> anyhow::Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--admin-token")
            .arg(&token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A backstop only: the normal stop is SIGTERM, which lets the
            // server stop its workspaces' processes itself.
            .kill_on_drop(true);
        // Flags also read HOLDFAST_* variables; the caller's environment must
        // not change what is measured (HOLDFAST_LOG=debug would, a lot).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOLDFAST_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;

        // Both pipes are drained for the server's whole life: a full pipe
        // would block its logging and so skew, then stall, the benchmark.
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = oneshot::channel();
        drain(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&output),
            Some(url_tx),
        );
        drain(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&output),
            None,
        );

        let url = match tokio::time::timeout(STARTUP_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                bail!(
                    "holdfast serve exited ({status:?}) before printing `listening on http://…`; output:\n{}",
                    tail(&output)
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "holdfast serve did not print `listening on http://…` within {STARTUP_TIMEOUT:?}; output:\n{}",
                    tail(&output)
                );
            }
        };

        let client = reqwest::Client::builder()
            // A proxy from the environment would be measured too.
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Server {
            child,
            url,
            token,
            client,
            output,
            created: Mutex::new(Vec::new()),
        })
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The server's last output lines, for error messages.
    pub fn recent_output(&self) -> String {
        tail(&self.output)
    }

    /// `POST /workspaces`; returns the workspace and its `status` in the 201.
    pub async fn create_workspace(&self, body: &Value) -> anyhow::Result<(Workspace, String)> {
        let resp = self
            .client
            .post(format!("{}/workspaces", self.url))
            .header("Authorization", self.auth())
            .json(body)
            .send()
            .await
            .context("POST /workspaces")?;
        let code = resp.status();
        let text = resp
            .text()
            .await
            .context("reading the POST /workspaces response")?;
        if code != reqwest::StatusCode::CREATED {
            bail!("POST /workspaces answered {code}, expected 201 Created: {text}");
        }
        let view: Value = serde_json::from_str(&text)
            .with_context(|| format!("POST /workspaces body: {text}"))?;
        let field = |k: &str| {
            view[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("POST /workspaces: no string {k:?} in {text}"))
        };
        let ws = Workspace {
            id: field("id")?,
            name: field("name")?,
        };
        let status = field("status")?;
        self.created.lock().expect("created lock").push(ws.clone());
        Ok((ws, status))
    }

    /// `GET /workspaces/<id>`; returns its `status`.
    pub async fn workspace_status(&self, id: &str) -> anyhow::Result<String> {
        let resp = self
            .client
            .get(format!("{}/workspaces/{id}", self.url))
            .header("Authorization", self.auth())
            .send()
            .await
            .with_context(|| format!("GET /workspaces/{id}"))?;
        let code = resp.status();
        let text = resp.text().await?;
        if code != reqwest::StatusCode::OK {
            bail!("GET /workspaces/{id} answered {code}: {text}");
        }
        let view: Value = serde_json::from_str(&text)?;
        view["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("GET /workspaces/{id}: no status in {text}"))
    }

    /// `GET /health`, unauthenticated: the HTTP round trip with no work.
    pub async fn health(&self) -> anyhow::Result<()> {
        let resp = self
            .client
            .get(format!("{}/health", self.url))
            .send()
            .await
            .context("GET /health")?;
        if !resp.status().is_success() {
            bail!("GET /health answered {}", resp.status());
        }
        resp.bytes().await?;
        Ok(())
    }

    /// `DELETE /workspaces/<id>?erase_data=true` with the name confirmed.
    pub async fn delete_workspace(&self, ws: &Workspace) -> anyhow::Result<()> {
        let resp = self
            .client
            .delete(format!("{}/workspaces/{}?erase_data=true", self.url, ws.id))
            .header("Authorization", self.auth())
            .header("X-Confirm-Name", &ws.name)
            .send()
            .await
            .with_context(|| format!("DELETE /workspaces/{}", ws.id))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            bail!(
                "DELETE /workspaces/{} ({}) answered {code}: {text}",
                ws.id,
                ws.name
            );
        }
        self.created
            .lock()
            .expect("created lock")
            .retain(|w| w.id != ws.id);
        Ok(())
    }

    /// Deletes every workspace still recorded as created. Returns how many
    /// were deleted and the errors of those that were not.
    pub async fn delete_remaining(&self) -> (usize, Vec<anyhow::Error>) {
        let remaining = self.created.lock().expect("created lock").clone();
        let mut deleted = 0;
        let mut errors = Vec::new();
        for ws in &remaining {
            match self.delete_workspace(ws).await {
                Ok(()) => deleted += 1,
                Err(e) => errors.push(e),
            }
        }
        (deleted, errors)
    }

    /// SIGTERM, then wait; SIGKILL if it does not stop in time.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            // std has no way to send SIGTERM, and a libc/nix dependency for
            // one call is not worth it.
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if !sent.is_ok_and(|s| s.success()) {
                eprintln!("bench: `kill -TERM {pid}` failed; killing the server");
                self.child.start_kill()?;
            }
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                let status = self.child.wait().await?;
                bail!(
                    "holdfast serve did not stop within {SHUTDOWN_TIMEOUT:?} of SIGTERM (killed: {status})"
                )
            }
        }
    }
}

/// Reads `pipe` line by line into the kept output until it closes; the first
/// `listening on http://…` URL goes to `url`.
fn drain(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<VecDeque<String>>>,
    mut url: Option<oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(found) = listening_url(&line)
                && let Some(tx) = url.take()
            {
                let _ = tx.send(found);
            }
            let mut kept = output.lock().expect("output lock");
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
}

/// The URL in a `holdfast listening on http://127.0.0.1:PORT` line.
fn listening_url(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("listening on ")?;
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://").then(|| url.to_owned())
}

fn tail(output: &Mutex<VecDeque<String>>) -> String {
    let kept = output.lock().expect("output lock");
    kept.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

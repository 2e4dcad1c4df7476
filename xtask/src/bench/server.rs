//! A release `holdfast serve` started for a benchmark: its process, its URL,
//! one keep-alive HTTP client, and the workspaces the benchmark created on it.

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
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
    /// The `--data-dir` it was started with, canonical (as the server keeps
    /// it), so that a benchmark can put data where the server looks for it.
    pub data_dir: PathBuf,
    token: String,
    pub client: reqwest::Client,
    output: Arc<Mutex<VecDeque<String>>>,
    created: Mutex<Vec<Workspace>>,
}

impl Server {
    /// Starts `<bin> serve` on a free port with a fresh data dir and waits
    /// for its `listening on http://…` line.
    pub async fn start(bin: &Path, data_dir: &Path, token: String) -> anyhow::Result<Server> {
        Server::start_with_args(bin, data_dir, token, &[]).await
    }

    /// [`Server::start`] with more `serve` flags, e.g. a short erase grace.
    pub async fn start_with_args(
        bin: &Path,
        data_dir: &Path,
        token: String,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--admin-token")
            .arg(&token)
            .args(extra)
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
            data_dir,
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
        self.workspace_field(id, "status").await
    }

    /// One string field of `GET /workspaces/<id>`.
    pub async fn workspace_field(&self, id: &str, field: &str) -> anyhow::Result<String> {
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
        view[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("GET /workspaces/{id}: no {field} in {text}"))
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
    /// Returns the response body (`data` says `erase_pending`).
    pub async fn delete_workspace(&self, ws: &Workspace) -> anyhow::Result<Value> {
        self.delete(ws, "?erase_data=true").await
    }

    /// `DELETE /workspaces/<id>` without erase: the data is `retained`.
    pub async fn delete_workspace_keeping_data(&self, ws: &Workspace) -> anyhow::Result<Value> {
        self.delete(ws, "").await
    }

    async fn delete(&self, ws: &Workspace, query: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .delete(format!("{}/workspaces/{}{query}", self.url, ws.id))
            .header("Authorization", self.auth())
            .header("X-Confirm-Name", &ws.name)
            .send()
            .await
            .with_context(|| format!("DELETE /workspaces/{}{query}", ws.id))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            bail!(
                "DELETE /workspaces/{}{query} ({}) answered {code}: {text}",
                ws.id,
                ws.name
            );
        }
        self.created
            .lock()
            .expect("created lock")
            .retain(|w| w.id != ws.id);
        serde_json::from_str(&text)
            .with_context(|| format!("DELETE /workspaces/{}{query} body: {text}", ws.id))
    }

    /// `POST /workspaces/<id>/restore`; returns the restored workspace's
    /// `status`. The workspace is the benchmark's to delete again.
    pub async fn restore_workspace(&self, ws: &Workspace) -> anyhow::Result<String> {
        let view = self
            .post_json(&format!("/workspaces/{}/restore", ws.id), &Value::Null)
            .await?;
        let mut created = self.created.lock().expect("created lock");
        if !created.iter().any(|w| w.id == ws.id) {
            created.push(ws.clone());
        }
        view["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("restore of {}: no status in {view}", ws.id))
    }

    /// `POST /workspaces/<id>/restart`; returns the workspace as answered.
    pub async fn restart_workspace(&self, id: &str) -> anyhow::Result<Value> {
        self.post_json(&format!("/workspaces/{id}/restart"), &Value::Null)
            .await
    }

    /// `POST /admin/sweep` with `{}`: one sweeper pass; returns its report.
    pub async fn sweep(&self) -> anyhow::Result<Value> {
        self.post_json("/admin/sweep", &serde_json::json!({})).await
    }

    /// `POST /admin/sweep` with `{"dry_run": true}`: the plan, nothing done.
    pub async fn sweep_dry_run(&self) -> anyhow::Result<Value> {
        self.post_json("/admin/sweep", &serde_json::json!({"dry_run": true}))
            .await
    }

    /// A POST with the admin token and an optional JSON body (`null`: none);
    /// any 2xx is parsed as JSON.
    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("Authorization", self.auth());
        if !body.is_null() {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            bail!("POST {path} answered {code}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path} body: {text}"))
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let resp = self
            .client
            .get(format!("{}/metrics", self.url))
            .header("Authorization", self.auth())
            .send()
            .await
            .context("GET /metrics")?;
        let code = resp.status();
        let text = resp.text().await?;
        if !code.is_success() {
            bail!("GET /metrics answered {code}: {text}");
        }
        Ok(text)
    }

    /// The server's process id, to read its CPU time from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Deletes every workspace still recorded as created. Returns how many
    /// were deleted and the errors of those that were not.
    pub async fn delete_remaining(&self) -> (usize, Vec<anyhow::Error>) {
        let remaining = self.created.lock().expect("created lock").clone();
        let mut deleted = 0;
        let mut errors = Vec::new();
        for ws in &remaining {
            match self.delete_workspace(ws).await {
                Ok(_) => deleted += 1,
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

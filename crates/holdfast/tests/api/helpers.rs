//! The test harness: spawns one `holdfast serve` per test (port 0, fresh data
//! dir), wraps its HTTP API in typed helpers and offers polling helpers for the
//! files and processes a workspace leaves on disk.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "holdfast-test-admin-token-5f0c2b";

/// How long a server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the polling helpers wait for a condition before failing the test.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The shell line of [`recording_runtime`]: it appends one line to `data.txt`
/// on every start (so the line count tells how many starts the data dir has
/// seen) and then writes its pid, which `exec` keeps for `sleep`. The pid is
/// written last, so a fresh pid file means `data.txt` is already written.
pub const RECORDING_SCRIPT: &str = "echo started >> data.txt; echo $$ > pid; exec sleep 600";

/// A command runtime that records each start in its data dir; see
/// [`RECORDING_SCRIPT`].
pub fn recording_runtime() -> Value {
    json!({ "command": ["sh", "-c", RECORDING_SCRIPT] })
}

/// A minimal valid create body for a workspace running [`recording_runtime`].
pub fn workspace_body(name: &str) -> Value {
    json!({ "name": name, "runtime": recording_runtime() })
}

/// The same, as a child of `parent_id`.
pub fn child_body(name: &str, parent_id: &str) -> Value {
    json!({ "name": name, "parent_id": parent_id, "runtime": recording_runtime() })
}

/// The same, with an explicit `compute.data_persistence`.
pub fn workspace_body_with_persistence(name: &str, mode: &str) -> Value {
    json!({
        "name": name,
        "runtime": recording_runtime(),
        "compute": { "data_persistence": mode },
    })
}

/// The `id` field of a workspace (or any record) as a string.
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `id` in {v}"))
        .to_owned()
}

/// A status code and the parsed JSON body (or `null` when the body is not
/// JSON; the raw text is kept for messages).
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl ApiResponse {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected HTTP {status}, got {} with body {}",
            self.status,
            self.text
        );
        self.body
    }

    /// Asserts an error answer of the contract's shape:
    /// `{"error": "<sentence>", "code": "<code>"}` with the given status.
    /// Returns the body for further checks.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        let text = self.text.clone();
        let body = self.expect_status(status);
        assert_eq!(body["code"], json!(code), "wrong error code in {text}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            !error.trim().is_empty(),
            "error answer without an `error` sentence: {text}"
        );
        body
    }

    /// Like [`Self::expect_error`], and the `error` sentence mentions `word`.
    #[track_caller]
    pub fn expect_error_mentioning(self, status: u16, code: &str, word: &str) -> Value {
        let body = self.expect_error(status, code);
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(word),
            "expected the error to mention {word:?}, got {body}"
        );
        body
    }
}

/// A running `holdfast serve` with its own data dir. Dropping it sends
/// SIGTERM, waits for the server to exit (SIGKILL after 10 s) and then kills
/// anything left in its process group.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    server: Child,
    extra_args: Vec<String>,
    log: Arc<Mutex<String>>,
    // Declared last so that it is removed after the server is gone.
    data_dir: tempfile::TempDir,
}

impl TestApp {
    /// A server with default flags (so auto data persistence means persist).
    pub async fn spawn() -> TestApp {
        Self::spawn_with_args(Vec::new())
    }

    /// A server started with `--default-data-persistence <mode>`.
    pub async fn spawn_with_default_persistence(mode: &str) -> TestApp {
        Self::spawn_with_args(vec![
            "--default-data-persistence".to_owned(),
            mode.to_owned(),
        ])
    }

    fn spawn_with_args(extra_args: Vec<String>) -> TestApp {
        let data_dir = tempfile::tempdir().expect("create a temp data dir");
        let log = Arc::new(Mutex::new(String::new()));
        let (server, base_url) = start_server(data_dir.path(), &extra_args, &log);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build the HTTP client");
        TestApp {
            base_url,
            client,
            server,
            extra_args,
            log,
            data_dir,
        }
    }

    /// Stops the server with SIGTERM (as an operator would) and starts a new
    /// one on the same data dir and flags. The new one listens on a new port.
    pub async fn restart_server(&mut self) {
        stop_server(&mut self.server);
        self.start_again();
    }

    /// Kills the server and all its workspace processes with SIGKILL, as a
    /// host crash would, and starts a new server on the same data dir.
    pub async fn crash_and_restart_server(&mut self) {
        kill_process_group(self.server.id());
        let _ = self.server.wait();
        self.start_again();
    }

    fn start_again(&mut self) {
        self.log
            .lock()
            .unwrap()
            .push_str("---- server restarted ----\n");
        let (server, base_url) = start_server(self.data_dir.path(), &self.extra_args, &self.log);
        self.server = server;
        self.base_url = base_url;
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// `<data-dir>/volumes`.
    pub fn volumes_root(&self) -> PathBuf {
        self.data_dir().join("volumes")
    }

    /// A persist workspace's volume: `<data-dir>/volumes/<id>`.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.volumes_root().join(id)
    }

    /// An ephemeral workspace's data dir: `<data-dir>/scratch/<id>`.
    pub fn scratch_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join("scratch").join(id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// A request with the admin token.
    pub fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: RequestBuilder) -> ApiResponse {
        let response = request.send().await.expect("HTTP request to holdfast");
        let status = response.status();
        let text = response.text().await.expect("read the response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        ApiResponse { status, body, text }
    }

    pub async fn get(&self, path: &str) -> ApiResponse {
        self.send(self.authed(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> ApiResponse {
        self.send(self.authed(Method::POST, path).json(body)).await
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> ApiResponse {
        self.send(self.authed(Method::PATCH, path).json(body)).await
    }

    /// `POST /workspaces` with a raw body (for malformed or oversized JSON).
    pub async fn create_workspace_raw(&self, body: impl Into<reqwest::Body>) -> ApiResponse {
        let request = self
            .authed(Method::POST, "/workspaces")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(request).await
    }

    /// `POST /workspaces`.
    pub async fn create_workspace(&self, body: &Value) -> ApiResponse {
        self.post_json("/workspaces", body).await
    }

    /// `POST /workspaces`, asserting 201, then waits until the workspace is
    /// `online` and returns its current record.
    pub async fn create_online_workspace(&self, body: &Value) -> Value {
        let created = self.create_workspace(body).await.expect_status(201);
        self.wait_online(&id_of(&created)).await
    }

    /// `GET /workspaces/:id`.
    pub async fn get_workspace(&self, id: &str) -> ApiResponse {
        self.get(&format!("/workspaces/{id}")).await
    }

    /// `GET /workspaces/:id`, asserting 200.
    pub async fn workspace(&self, id: &str) -> Value {
        self.get_workspace(id).await.expect_status(200)
    }

    /// `GET /workspaces`, asserting 200 and a JSON array.
    pub async fn list_workspaces(&self) -> Vec<Value> {
        self.list_at("/workspaces").await
    }

    /// `GET /workspaces?include_removed=true`.
    pub async fn list_workspaces_including_removed(&self) -> Vec<Value> {
        self.list_at("/workspaces?include_removed=true").await
    }

    async fn list_at(&self, path: &str) -> Vec<Value> {
        match self.get(path).await.expect_status(200) {
            Value::Array(items) => items,
            other => panic!("GET {path} must answer a JSON array, got {other}"),
        }
    }

    /// `PATCH /workspaces/:id`.
    pub async fn patch_workspace(&self, id: &str, body: &Value) -> ApiResponse {
        self.patch_json(&format!("/workspaces/{id}"), body).await
    }

    /// `POST /workspaces/:id/restart`.
    pub async fn restart_workspace(&self, id: &str) -> ApiResponse {
        self.send(self.authed(Method::POST, &format!("/workspaces/{id}/restart")))
            .await
    }

    /// `GET /workspaces/:id/data`.
    pub async fn workspace_data(&self, id: &str) -> ApiResponse {
        self.get(&format!("/workspaces/{id}/data")).await
    }

    /// A `DELETE /workspaces/:id` to be shaped with the builder's methods.
    pub fn delete_workspace<'a>(&'a self, id: &str) -> DeleteRequest<'a> {
        DeleteRequest {
            app: self,
            id: id.to_owned(),
            confirm_name: None,
            confirm_children: false,
            erase_data: false,
        }
    }

    /// Polls `GET /workspaces/:id` until the status is `online`.
    pub async fn wait_online(&self, id: &str) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + POLL_TIMEOUT;
        while Instant::now() < deadline {
            last = self.workspace(id).await;
            if last["status"] == "online" {
                return last;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("workspace {id} did not become online within {POLL_TIMEOUT:?}; last seen: {last}");
    }

    /// Everything the server printed so far.
    pub fn server_log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        stop_server(&mut self.server);
        if std::thread::panicking() {
            eprintln!("---- holdfast serve output ----\n{}", self.server_log());
        }
    }
}

/// Starts `holdfast serve` on port 0 and waits for its listening line.
/// Returns the child and its base URL; its output goes to `log`.
fn start_server(
    data_dir: &Path,
    extra_args: &[String],
    log: &Arc<Mutex<String>>,
) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--admin-token", ADMIN_TOKEN])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the harness can reap workspace
        // processes a misbehaving server leaves behind, and simulate a crash.
        .process_group(0);
    // Flags also read HOLDFAST_* variables; keep the caller's environment
    // from changing what the test starts.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOLDFAST_") {
            cmd.env_remove(key);
        }
    }
    let mut server = cmd.spawn().expect("spawn holdfast serve");

    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stdout = server.stdout.take().expect("piped stdout");
    let stderr = server.stderr.take().expect("piped stderr");
    drain(stdout, Arc::clone(log), Some(lines_tx));
    drain(stderr, Arc::clone(log), None);

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = listening_url(&line) {
                    return (server, url);
                }
            }
            Err(_) => {
                kill_process_group(server.id());
                let _ = server.wait();
                panic!(
                    "holdfast serve did not print `listening on http://…` within {:?}; output:\n{}",
                    STARTUP_TIMEOUT,
                    log.lock().unwrap()
                );
            }
        }
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL; finally kills whatever is left
/// in the server's process group (nothing, for a well-behaved server).
fn stop_server(server: &mut Child) {
    let pid = server.id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
            _ => {
                let _ = server.kill();
                let _ = server.wait();
                break;
            }
        }
    }
    kill_process_group(pid);
}

/// SIGKILL to the process group led by `pid` (the server was started as the
/// leader of its own group).
fn kill_process_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Copies a pipe into the shared log, line by line, forwarding each line to
/// `lines` while someone listens. Runs until the pipe closes, so the server
/// never blocks on a full pipe.
fn drain(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

/// The URL in a `… listening on http://127.0.0.1:PORT …` line.
fn listening_url(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("listening on ")?;
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://")
        .then(|| url.trim_end_matches('/').to_owned())
}

/// The shape of `DELETE /workspaces/:id[?confirm=true][&erase_data=true]`
/// with an optional `X-Confirm-Name` header.
pub struct DeleteRequest<'a> {
    app: &'a TestApp,
    id: String,
    confirm_name: Option<Vec<u8>>,
    confirm_children: bool,
    erase_data: bool,
}

impl DeleteRequest<'_> {
    /// Sends `X-Confirm-Name: <name>`.
    pub fn confirm_name(self, name: &str) -> Self {
        self.confirm_name_bytes(name.as_bytes())
    }

    /// Sends `X-Confirm-Name` with raw bytes (for non-ASCII near misses).
    pub fn confirm_name_bytes(mut self, name: &[u8]) -> Self {
        self.confirm_name = Some(name.to_vec());
        self
    }

    /// Adds `confirm=true` (delete live children too).
    pub fn confirm_children(mut self) -> Self {
        self.confirm_children = true;
        self
    }

    /// Adds `erase_data=true`.
    pub fn erase_data(mut self) -> Self {
        self.erase_data = true;
        self
    }

    pub async fn send(self) -> ApiResponse {
        let mut query = Vec::new();
        if self.confirm_children {
            query.push("confirm=true");
        }
        if self.erase_data {
            query.push("erase_data=true");
        }
        let mut path = format!("/workspaces/{}", self.id);
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let mut request = self.app.authed(Method::DELETE, &path);
        if let Some(name) = self.confirm_name {
            let value = reqwest::header::HeaderValue::from_bytes(&name)
                .expect("a header value the HTTP client can send");
            request = request.header("X-Confirm-Name", value);
        }
        self.app.send(request).await
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after
/// the poll timeout.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {POLL_TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The pid in `<dir>/pid` once it is there and differs from `previous`
/// (`None`: any pid).
async fn wait_for_pid_file(dir: &Path, previous: Option<u32>) -> u32 {
    let file = dir.join("pid");
    eventually(&format!("a new pid in {}", file.display()), || {
        let file = file.clone();
        async move {
            let text = std::fs::read_to_string(&file).ok()?;
            let pid: u32 = text.trim().parse().ok()?;
            (Some(pid) != previous).then_some(pid)
        }
    })
    .await
}

/// Waits for the [`recording_runtime`] of a first start to write its pid in
/// `dir` and returns it.
pub async fn wait_for_pid(dir: &Path) -> u32 {
    wait_for_pid_file(dir, None).await
}

/// Waits for a later start to write a pid other than `previous` in `dir`.
pub async fn wait_for_pid_other_than(dir: &Path, previous: u32) -> u32 {
    wait_for_pid_file(dir, Some(previous)).await
}

/// The lines of a text file (empty when it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// True when `pid` is running (present in `/proc` and not a zombie).
pub fn process_is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone (or a zombie awaiting its parent's wait).
pub async fn wait_process_gone(pid: u32) {
    eventually(&format!("process {pid} to exit"), || async move {
        (!process_is_running(pid)).then_some(())
    })
    .await
}

/// Waits until `path` no longer exists.
pub async fn wait_path_gone(path: &Path) {
    eventually(
        &format!("{} to be removed", path.display()),
        || async move { (!path.exists()).then_some(()) },
    )
    .await
}

/// The names of the entries of `dir` (empty when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

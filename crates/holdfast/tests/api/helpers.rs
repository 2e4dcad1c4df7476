//! The test harness: spawns one `holdfast serve` per test (port 0, fresh data
//! dir), wraps its HTTP API in typed helpers and offers polling helpers for the
//! files and processes a workspace leaves on disk.
//!
//! With `HOLDFAST_TEST_CP=remote` in the environment every [`TestApp`] also
//! starts a `holdfast cp serve` of its own and points the platform at it, so
//! that the same suite checks that the platform behaves the same with a
//! remote control plane (SPEC §9).
//!
//! With `HOLDFAST_TEST_BACKEND=container` every server (or its control
//! plane) runs workspaces on the container backend, at the engine
//! `HOLDFAST_TEST_CONTAINER_HOST` with the image
//! `HOLDFAST_TEST_CONTAINER_IMAGE` (`cargo xtask test` starts a Podman and
//! builds the image). Tests that read a volume's files find them at
//! `HOLDFAST_TEST_CONTAINER_VOLUMES/<volume name>/_data` (Podman's local
//! driver): test-only knowledge, which holdfast itself never assumes.

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

/// The environment variable that selects the control plane the suite runs
/// against: `remote` for a `holdfast cp serve` per test, anything else (or
/// unset) for the control plane embedded in `holdfast serve`.
pub const CP_MODE_ENV: &str = "HOLDFAST_TEST_CP";

/// The shared secret every test control plane is started with.
pub const CP_SHARED_SECRET: &str = "holdfast-test-cp-secret-7d41e9";

/// Flags that belong to the control plane in remote mode: the platform would
/// ignore them there, so they go to `holdfast cp serve` instead.
const CP_ONLY_FLAGS: &[&str] = &[
    "--backend",
    "--container-host",
    "--container-image",
    "--erase-grace",
    "--retention-grace",
    "--default-data-persistence",
    "--stop-timeout",
    "--sandbox",
];

/// Flags that both processes get in remote mode: the control plane sweeps on
/// its own interval, and the platform asks it to sweep on its own.
const SHARED_FLAGS: &[&str] = &["--sweep-interval", "--usage-interval"];

/// Set to `postgres` to run the suite on PostgreSQL: each server gets a
/// fresh database on the server `HOLDFAST_TEST_DATABASE_URL` names.
const STORE_ENV: &str = "HOLDFAST_TEST_STORE";

/// Whether this run of the suite stores the platform's state in PostgreSQL.
pub fn postgres_mode() -> bool {
    std::env::var(STORE_ENV).is_ok_and(|s| s == "postgres")
}

/// `--database-url` of a fresh, empty PostgreSQL database (created with
/// `psql` on the test server), or nothing outside PostgreSQL mode.
pub fn database_flags() -> Vec<String> {
    if !postgres_mode() {
        return Vec::new();
    }
    let admin = std::env::var("HOLDFAST_TEST_DATABASE_URL")
        .expect("HOLDFAST_TEST_STORE=postgres needs HOLDFAST_TEST_DATABASE_URL (a PostgreSQL server to create databases on)");
    vec!["--database-url".to_owned(), fresh_database(&admin)]
}

/// Creates an empty database on the server `admin_url` names; returns its URL.
pub fn fresh_database(admin_url: &str) -> String {
    let name = format!("holdfast_api_{}", uuid::Uuid::new_v4().simple());
    let out = std::process::Command::new("psql")
        .arg(admin_url)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql (PostgreSQL's client) to create a test database");
    assert!(
        out.status.success(),
        "CREATE DATABASE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, String::new()), |(b, q)| (b, format!("?{q}")));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = base[host_start..]
        .find('/')
        .map_or(base, |slash| &base[..host_start + slash]);
    format!("{base}/{name}{query}")
}

/// Selects the backend the suite runs workspaces on: `container`, or the
/// process backend (unset, anything else).
pub const BACKEND_ENV: &str = "HOLDFAST_TEST_BACKEND";

/// Whether this run of the suite runs workspaces in containers.
pub fn container_mode() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|b| b == "container")
}

/// On the container backend, prints why the calling test does not apply
/// and returns true (the test then returns at once). For tests that watch
/// host processes, host pids or the process backend's directories.
pub fn skip_on_container_backend(why: &str) -> bool {
    let skip = container_mode();
    if skip {
        eprintln!("skipping on the container backend: {why}");
    }
    skip
}

fn container_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{BACKEND_ENV}=container needs {key}"))
}

/// The image the container backend's runs use by default.
pub fn container_image() -> String {
    container_env("HOLDFAST_TEST_CONTAINER_IMAGE")
}

/// The engine of the container backend's runs.
pub fn container_host() -> String {
    container_env("HOLDFAST_TEST_CONTAINER_HOST")
}

/// The flags that put a server on the suite's backend.
fn backend_flags() -> Vec<String> {
    if !container_mode() {
        return Vec::new();
    }
    vec![
        "--backend".to_owned(),
        "container".to_owned(),
        "--container-host".to_owned(),
        container_host(),
        "--container-image".to_owned(),
        container_env("HOLDFAST_TEST_CONTAINER_IMAGE"),
    ]
}

/// Where the engine keeps a named volume's files on this host (Podman's
/// local driver).
fn engine_volume_dir(name: &str) -> PathBuf {
    PathBuf::from(container_env("HOLDFAST_TEST_CONTAINER_VOLUMES"))
        .join(name)
        .join("_data")
}

/// `podman --url <engine> ARGS…`: the tests' own look at the engine.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--url")
        .arg(container_host())
        .args(args)
        .output()
        .expect("run podman (the container backend's tests need its CLI)");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of the containers (any state) labelled for workspace `id`.
pub fn containers_of(id: &str) -> Vec<String> {
    podman(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=holdfast.workspace={id}"),
        "--filter",
        "label=holdfast.kind=workspace",
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_owned)
    .filter(|l| !l.is_empty())
    .collect()
}

/// Removes every container and volume of the control plane whose data dir
/// is `cp_data_dir` from the engine (a test's end).
fn remove_engine_objects_of(cp_data_dir: &Path) {
    let Ok(scope) = std::fs::read_to_string(cp_data_dir.join("cp-id")) else {
        return;
    };
    let filter = format!("label=holdfast.cp={}", scope.trim());
    let run = |args: &[&str]| {
        Command::new("podman")
            .arg("--url")
            .arg(container_host())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let containers = run(&["ps", "-aq", "--filter", &filter]);
    let containers: Vec<&str> = containers.split_whitespace().collect();
    if !containers.is_empty() {
        run(&[&["rm", "-f", "-t", "0"], &containers[..]].concat());
    }
    let volumes = run(&["volume", "ls", "-q", "--filter", &filter]);
    let volumes: Vec<&str> = volumes.split_whitespace().collect();
    if !volumes.is_empty() {
        run(&[&["volume", "rm", "-f"], &volumes[..]].concat());
    }
}

/// Whether this run of the suite uses a remote control plane.
pub fn remote_mode() -> bool {
    std::env::var(CP_MODE_ENV).is_ok_and(|mode| mode == "remote")
}

/// In remote mode, prints why the calling test does not apply and returns
/// true (the test then returns at once). For behaviour that belongs to the
/// control plane embedded in `holdfast serve`, and only to it.
pub fn skip_in_remote_mode(why: &str) -> bool {
    let skip = remote_mode();
    if skip {
        eprintln!("skipping in remote mode: {why}");
    }
    skip
}

/// Splits test flags between the platform and the control plane for remote
/// mode: `(platform flags, control plane flags)`. Both `--flag value` and
/// `--flag=value` are understood.
fn split_flags(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut platform, mut cp) = (Vec::new(), Vec::new());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, _)) => (name, true),
            None => (arg.as_str(), false),
        };
        let to_cp = CP_ONLY_FLAGS.contains(&name);
        let to_both = SHARED_FLAGS.contains(&name);
        if !to_cp && !to_both {
            platform.push(arg.clone());
            continue;
        }
        let mut flag = vec![arg.clone()];
        if !inline_value && let Some(value) = args.next() {
            flag.push(value.clone());
        }
        if to_both {
            platform.extend(flag.iter().cloned());
        }
        cp.extend(flag);
    }
    (platform, cp)
}

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
/// anything left in its process group; in remote mode it then stops its
/// control plane the same way.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    server: Child,
    /// The platform's own flags (in remote mode with `--cp-url` and friends,
    /// and without the flags that belong to the control plane).
    extra_args: Vec<String>,
    /// Variables set on the server process on top of the cleaned environment
    /// (for failpoints); empty for an ordinary server.
    extra_env: Vec<(String, String)>,
    log: Arc<Mutex<String>>,
    /// Where volumes, scratch dirs and the trash live: the server's data dir
    /// with the embedded control plane, the control plane's otherwise.
    cp_data_dir: PathBuf,
    /// Whether the server uses a remote control plane.
    remote: bool,
    /// Whether its workspaces run on the container backend.
    on_containers: bool,
    /// The control plane this app started and owns (remote mode); dropped,
    /// and so stopped, after the server.
    cp: Option<CpServer>,
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

    /// A server started with the given extra flags
    /// (e.g. `["--restart-backoff", "200ms"]`).
    pub async fn spawn_with(args: &[&str]) -> TestApp {
        Self::spawn_with_args(args.iter().map(|a| (*a).to_owned()).collect())
    }

    fn spawn_with_args(extra_args: Vec<String>) -> TestApp {
        // On PostgreSQL each server gets a database of its own; restarts of
        // the same server keep it (it is part of the flags).
        let extra_args = [extra_args, database_flags(), backend_flags()].concat();
        if !remote_mode() {
            let data_dir = tempfile::tempdir().expect("create a temp data dir");
            let cp_data_dir = data_dir.path().to_path_buf();
            return Self::start(extra_args, data_dir, cp_data_dir, None);
        }
        let (platform_args, cp_args) = split_flags(&extra_args);
        let (cp, tokens) = CpServer::start_with_args(&["test-platform"], cp_args);
        let platform_args = [cp.platform_flags(&tokens[0]), platform_args].concat();
        let data_dir = tempfile::tempdir().expect("create a temp data dir");
        let cp_data_dir = cp.data_dir().to_path_buf();
        Self::start(platform_args, data_dir, cp_data_dir, Some(cp))
    }

    /// A server that uses the control plane `cp`, which the caller owns and
    /// must keep running while the server lives (declare it first, so that
    /// it is dropped last), as tenant `tenant_token`, with extra platform
    /// flags `args`. Whatever the mode of the suite.
    pub async fn spawn_on_cp(cp: &CpServer, tenant_token: &str, args: &[&str]) -> TestApp {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let platform_args = [cp.platform_flags(tenant_token), args].concat();
        let data_dir = tempfile::tempdir().expect("create a temp data dir");
        let mut app = Self::start(platform_args, data_dir, cp.data_dir().to_path_buf(), None);
        app.remote = true;
        // The caller's control plane runs processes, whatever the suite's mode.
        app.on_containers = false;
        app
    }

    fn start(
        extra_args: Vec<String>,
        data_dir: tempfile::TempDir,
        cp_data_dir: PathBuf,
        cp: Option<CpServer>,
    ) -> TestApp {
        let log = Arc::new(Mutex::new(String::new()));
        let (server, base_url) = start_server(data_dir.path(), &extra_args, &[], &log);
        TestApp {
            base_url,
            client: http_client(),
            server,
            extra_args,
            extra_env: Vec::new(),
            log,
            cp_data_dir,
            remote: cp.is_some(),
            on_containers: container_mode(),
            cp,
            data_dir,
        }
    }

    /// Whether this server uses a remote control plane.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Stops the server with SIGTERM (as an operator would) and starts a new
    /// one on the same data dir and flags. The new one listens on a new port.
    pub async fn restart_server(&mut self) {
        stop_server(&mut self.server);
        self.start_again();
    }

    /// Like [`Self::restart_server`], but fails the test when the server has
    /// not exited on its own within the poll timeout after SIGTERM (where
    /// `restart_server` would fall back to SIGKILL without a word).
    pub async fn restart_server_expecting_graceful_exit(&mut self) {
        let pid = self.server.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + POLL_TIMEOUT;
        while self
            .server
            .try_wait()
            .expect("poll the server process")
            .is_none()
        {
            if Instant::now() >= deadline {
                // SIGKILL at once: `stop_server` would wait another 10 s.
                kill_process_group(pid);
                let _ = self.server.wait();
                panic!(
                    "the server did not exit within {POLL_TIMEOUT:?} of SIGTERM; output:\n{}",
                    self.server_log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        kill_process_group(pid);
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
        let (server, base_url) = start_server(
            self.data_dir.path(),
            &self.extra_args,
            &self.extra_env,
            &self.log,
        );
        self.server = server;
        self.base_url = base_url;
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir,
    /// on the container backend with an engine that is not there (a socket
    /// nobody listens on), so that every route that needs the engine meets
    /// an unreachable one. For the embedded control plane.
    pub async fn restart_server_on_unreachable_engine(&mut self) {
        stop_server(&mut self.server);
        let mut args = Vec::new();
        let mut old = self.extra_args.iter();
        while let Some(arg) = old.next() {
            if ["--backend", "--container-host", "--container-image"].contains(&arg.as_str()) {
                old.next();
                continue;
            }
            args.push(arg.clone());
        }
        // A socket file nobody listens on (bound, then closed): the engine
        // was there and is gone, so every connection is refused.
        let socket = self.data_dir.path().join("no-engine.sock");
        let _ = std::fs::remove_file(&socket);
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a unix socket"));
        args.extend([
            "--backend".to_owned(),
            "container".to_owned(),
            "--container-host".to_owned(),
            format!("unix://{}", socket.display()),
            "--container-image".to_owned(),
            "localhost/holdfast-absent:0".to_owned(),
        ]);
        self.extra_args = args;
        self.start_again();
    }

    /// Like [`Self::crash_and_restart_server`], but the new server also gets
    /// the environment `env` (e.g. `HOLDFAST_FAILPOINTS`). A failpoint may
    /// abort the new server while it boots, even before it listens, so this
    /// returns once it listens *or* has exited; follow with
    /// [`Self::expect_server_abort`] when a crash is expected.
    pub async fn crash_and_restart_server_with_env(&mut self, env: &[(&str, &str)]) {
        kill_process_group(self.server.id());
        let _ = self.server.wait();
        self.extra_env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.log
            .lock()
            .unwrap()
            .push_str(&format!("---- server restarted with {env:?} ----\n"));
        let (server, url) = launch_server(
            self.data_dir.path(),
            &self.extra_args,
            &self.extra_env,
            &self.log,
        );
        self.server = server;
        if let Some(url) = url {
            self.base_url = url;
        }
    }

    /// Waits for the server to end on its own and asserts that it aborted
    /// (SIGABRT, as a failpoint does) and said so naming `failpoint`: proof
    /// that the crash window under test was really reached.
    pub async fn expect_server_abort(&mut self, failpoint: &str) {
        expect_abort(&mut self.server, &self.log, "the server", failpoint).await;
    }

    /// Like [`Self::crash_and_restart_server_with_env`], for the process that
    /// runs the control plane (whose failpoints are those of the erase path):
    /// the server itself in embedded mode; in remote mode the
    /// `holdfast cp serve`, started again on its address while the server
    /// keeps running (workspaces outlive it, as they outlive a server).
    pub async fn crash_and_restart_control_plane_with_env(&mut self, env: &[(&str, &str)]) {
        match &mut self.cp {
            Some(cp) => cp.crash_and_restart_with_env(env),
            None => self.crash_and_restart_server_with_env(env).await,
        }
    }

    /// Like [`Self::expect_server_abort`], for the process that runs the
    /// control plane.
    pub async fn expect_control_plane_abort(&mut self, failpoint: &str) {
        match &mut self.cp {
            Some(cp) => cp.expect_abort(failpoint).await,
            None => self.expect_server_abort(failpoint).await,
        }
    }

    /// Like [`Self::start_server_again_without_env`], for the process that
    /// runs the control plane.
    pub async fn start_control_plane_again_without_env(&mut self) {
        match &mut self.cp {
            Some(cp) => cp.start_again_without_env(),
            None => self.start_server_again_without_env().await,
        }
    }

    /// Starts a new server on the same data dir and flags after the previous
    /// one ended on its own, without the environment given to
    /// [`Self::crash_and_restart_server_with_env`].
    pub async fn start_server_again_without_env(&mut self) {
        assert!(
            self.server
                .try_wait()
                .expect("poll the server process")
                .is_some(),
            "the previous server is still running"
        );
        self.extra_env.clear();
        self.start_again();
    }

    /// Sends a request that may get no answer at all (the server aborts while
    /// handling it): the transport error instead of a panic.
    pub async fn try_send(&self, request: RequestBuilder) -> Result<ApiResponse, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(ApiResponse { status, body, text })
    }

    /// The data dir of the control plane, where volumes, scratch dirs and
    /// the trash live: the server's own with the embedded control plane.
    /// The platform's own `--data-dir` (its admin token, its SQLite file).
    /// The pid of the `holdfast serve` process.
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    pub fn platform_data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn cp_data_dir(&self) -> &Path {
        &self.cp_data_dir
    }

    /// `<cp-data-dir>/volumes`.
    pub fn volumes_root(&self) -> PathBuf {
        self.cp_data_dir().join("volumes")
    }

    /// A persist workspace's volume: `<cp-data-dir>/volumes/<id>`, or on the
    /// container backend the files of its named volume `holdfast-<id>`.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        if self.on_containers {
            return engine_volume_dir(&format!("holdfast-{id}"));
        }
        self.volumes_root().join(id)
    }

    /// An ephemeral workspace's data dir: `<cp-data-dir>/scratch/<id>`, or
    /// on the container backend the files of its current scratch volume.
    pub fn scratch_dir(&self, id: &str) -> PathBuf {
        if self.on_containers {
            return engine_volume_dir(&format!("holdfast-{id}-scratch"));
        }
        self.cp_data_dir().join("scratch").join(id)
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
        send_request(request).await
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

    pub async fn list_at(&self, path: &str) -> Vec<Value> {
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

    /// Waits until the server has printed `needle`: a line reaches the log
    /// through a pipe, so it can arrive after the response that followed it.
    pub async fn server_logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            if self.server_log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Makes another org named `name` and mints a token of it: a caller
    /// that must see nothing of the admin's default org.
    pub async fn other_org_token(&self, name: &str) -> String {
        let org = self
            .post_json("/orgs", &json!({ "name": name }))
            .await
            .expect_status(201);
        self.post_json(&format!("/orgs/{}/tokens", id_of(&org)), &json!({}))
            .await
            .expect_status(201)["token"]
            .as_str()
            .expect("a minted token")
            .to_owned()
    }

    /// A request authenticated with `token` instead of the admin token.
    pub fn with_token(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// Polls `GET /workspaces/:id` until the status is `status`.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + POLL_TIMEOUT;
        while Instant::now() < deadline {
            last = self.workspace(id).await;
            if last["status"] == status {
                return last;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("workspace {id} did not become {status} within {POLL_TIMEOUT:?}; last seen: {last}");
    }

    async fn post_empty(&self, path: &str) -> ApiResponse {
        self.send(self.authed(Method::POST, path)).await
    }

    /// `POST /workspaces/:id/pause`.
    pub async fn pause_workspace(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/pause")).await
    }

    /// `POST /workspaces/:id/pause?cascade=true`.
    pub async fn pause_workspace_cascade(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/pause?cascade=true"))
            .await
    }

    /// `POST /workspaces/:id/resume`.
    pub async fn resume_workspace(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/resume")).await
    }

    /// `POST /workspaces/:id/resume?cascade=true`.
    pub async fn resume_workspace_cascade(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/resume?cascade=true"))
            .await
    }

    /// `POST /workspaces/:id/hibernate`.
    pub async fn hibernate_workspace(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/hibernate"))
            .await
    }

    /// `POST /workspaces/:id/hibernate?cascade=true`.
    pub async fn hibernate_workspace_cascade(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/hibernate?cascade=true"))
            .await
    }

    /// `POST /workspaces/:id/wake`.
    pub async fn wake_workspace(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/wake")).await
    }

    /// `POST /workspaces/:id/messages` with `{"text": text}`.
    pub async fn send_message(&self, id: &str, text: &str) -> ApiResponse {
        self.post_json(
            &format!("/workspaces/{id}/messages"),
            &json!({ "text": text }),
        )
        .await
    }

    /// `POST /workspaces/:id/messages`, asserting 200; returns the reply's
    /// text.
    pub async fn say(&self, id: &str, text: &str) -> String {
        let answer = self.send_message(id, text).await.expect_status(200);
        answer["reply"]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `reply.text` in {answer}"))
            .to_owned()
    }

    /// `GET /workspaces/:id/messages`.
    pub async fn get_messages(&self, id: &str) -> ApiResponse {
        self.get(&format!("/workspaces/{id}/messages")).await
    }

    /// `GET /workspaces/:id/messages`, asserting 200; the `messages` array.
    pub async fn messages(&self, id: &str) -> Vec<Value> {
        let body = self.get_messages(id).await.expect_status(200);
        match &body["messages"] {
            Value::Array(items) => items.clone(),
            _ => panic!("GET messages must answer {{\"messages\": [...]}}, got {body}"),
        }
    }

    /// Subscribes to `GET /events` with the admin token. The subscription is
    /// live when this returns (the server has sent the response head), so
    /// every status change caused afterwards is delivered.
    ///
    /// The stream is read over a plain socket with HTTP/1.0 (so the body is
    /// the raw event text, delimited by the connection's end) by a thread of
    /// its own; dropping the [`EventStream`] shuts the socket down at once,
    /// even while the test's async runtime is blocked in [`TestApp`]'s drop.
    pub async fn subscribe_events(&self) -> EventStream {
        use std::io::Write;
        let authority = self
            .base_url
            .strip_prefix("http://")
            .expect("an http:// base URL")
            .to_owned();
        let mut socket = std::net::TcpStream::connect(&authority).expect("connect for GET /events");
        socket
            .set_read_timeout(Some(STARTUP_TIMEOUT))
            .expect("set a read timeout");
        write!(
            socket,
            "GET /events HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send GET /events");
        let mut reader = BufReader::new(socket.try_clone().expect("clone the socket"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read the response head");
            assert!(
                n > 0,
                "GET /events: connection closed in the head: {head:?}"
            );
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        assert!(
            head.first()
                .is_some_and(|status| status.split_whitespace().nth(1) == Some("200")),
            "GET /events must answer 200: {head:?}"
        );
        assert!(
            head.iter().any(|h| {
                let h = h.to_ascii_lowercase();
                h.starts_with("content-type:") && h.contains("text/event-stream")
            }),
            "GET /events must be text/event-stream: {head:?}"
        );
        // Events are read without a deadline from here on; the test's own
        // waits bound how long it listens.
        socket
            .set_read_timeout(None)
            .expect("clear the read timeout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(value) = serde_json::from_str::<Value>(data.trim())
                    && tx.send(value).is_err()
                {
                    break;
                }
            }
        });
        EventStream { rx, socket }
    }
}

/// A live `GET /events` subscription; each event is the parsed JSON of a
/// `data:` line.
pub struct EventStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    socket: std::net::TcpStream,
}

impl EventStream {
    /// The next event about workspace `id` (others are skipped), failing the
    /// test after the poll timeout.
    pub async fn next_for(&mut self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no event for workspace {id} within {POLL_TIMEOUT:?}"))
                .expect("the event stream ended");
            if event["workspace_id"] == id {
                return event;
            }
        }
    }

    /// Reads the events of workspace `id` until one of type `last` and
    /// returns their types in order (`last` included).
    pub async fn types_for_until(&mut self, id: &str, last: &str) -> Vec<String> {
        let mut types = Vec::new();
        loop {
            let event = self.next_for(id).await;
            assert!(event["at"].is_string(), "an event without `at`: {event}");
            let kind = event["type"]
                .as_str()
                .unwrap_or_else(|| panic!("an event without a string `type`: {event}"))
                .to_owned();
            let done = kind == last;
            types.push(kind);
            if done {
                return types;
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Also ends the reading thread, whose read now fails.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        stop_server(&mut self.server);
        // A server that crashed on its own (a failpoint) and was never started
        // again leaves its workspace processes, which live in process groups of
        // their own, behind; do not let them outlive the test. (In remote mode
        // the control plane's own drop, which follows, reaps its processes.)
        reap_processes_of(self.data_dir.path());
        if self.on_containers && self.cp.is_none() {
            remove_engine_objects_of(&self.cp_data_dir);
        }
        if std::thread::panicking() {
            eprintln!("---- holdfast serve output ----\n{}", self.server_log());
        }
    }
}

/// SIGKILL to every process left running by a control plane whose data dir
/// is `data_dir` (those with `HOLDFAST_CP_ROOT=<data dir>`).
fn reap_processes_of(data_dir: &Path) {
    for pid in processes_with_env(&format!(
        "HOLDFAST_CP_ROOT={}",
        canonical(data_dir).display()
    )) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A `holdfast` command with the caller's `HOLDFAST_*` variables removed:
/// flags also read them, and they must not change what a test starts.
fn holdfast_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOLDFAST_") {
            cmd.env_remove(key);
        }
    }
    // Most tests watch workspace processes by their host pids, which a
    // sandbox's pid namespace hides: they run unsandboxed. The isolation
    // tests (and any test passing `--sandbox`) run sandboxed, the default.
    cmd.env("HOLDFAST_SANDBOX", "none");
    cmd
}

/// The HTTP client of the tests: no proxy, a generous timeout.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

/// Waits for `child` to end on its own and asserts that it aborted (SIGABRT,
/// as a failpoint does) and, since its last start, printed to `log` a line
/// naming `failpoint`. `what` names the process in messages.
async fn expect_abort(child: &mut Child, log: &Arc<Mutex<String>>, what: &str, failpoint: &str) {
    let log_text = || log.lock().unwrap().clone();
    let deadline = Instant::now() + POLL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll a holdfast process") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not abort at failpoint {failpoint} within {POLL_TIMEOUT:?}; output:\n{}",
            log_text()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(6),
        "{what} must end by SIGABRT at failpoint {failpoint}, got {status}; output:\n{}",
        log_text()
    );
    let log = log_text();
    let since_restart = log.rsplit("---- server restarted").next().unwrap_or("");
    assert!(
        since_restart.contains(failpoint),
        "{what} aborted without naming failpoint {failpoint}; output:\n{log}"
    );
}

/// Starts `holdfast serve` on port 0 and waits for its listening line.
/// Returns the child and its base URL; its output goes to `log`.
fn start_server(
    data_dir: &Path,
    extra_args: &[String],
    extra_env: &[(String, String)],
    log: &Arc<Mutex<String>>,
) -> (Child, String) {
    let (server, url) = launch_server(data_dir, extra_args, extra_env, log);
    expect_listening("holdfast serve", server, url, log)
}

/// Starts `holdfast serve` and waits for its listening line; `None` when its
/// output ends first (it is exiting). Panics after the startup timeout.
fn launch_server(
    data_dir: &Path,
    extra_args: &[String],
    extra_env: &[(String, String)],
    log: &Arc<Mutex<String>>,
) -> (Child, Option<String>) {
    let mut cmd = holdfast_command();
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--admin-token", ADMIN_TOKEN])
        .args(extra_args);
    launch("holdfast serve", cmd, extra_env, log)
}

/// Spawns `cmd` (a `holdfast` server) in a process group of its own with
/// `extra_env`, copies its output to `log` and waits for its listening line;
/// `None` when its output ends first (it is exiting). Panics after the
/// startup timeout. `what` names it in messages.
fn launch(
    what: &str,
    mut cmd: Command,
    extra_env: &[(String, String)],
    log: &Arc<Mutex<String>>,
) -> (Child, Option<String>) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the harness can reap workspace
        // processes a misbehaving server leaves behind, and simulate a crash.
        .process_group(0);
    // Set after the clean-up of `holdfast_command`, so that a test's own
    // choice survives it.
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    let mut server = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));

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
                    return (server, Some(url));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return (server, None),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_process_group(server.id());
                let _ = server.wait();
                panic!(
                    "{what} did not print `listening on http://…` within {:?}; output:\n{}",
                    STARTUP_TIMEOUT,
                    log.lock().unwrap()
                );
            }
        }
    }
}

/// A server that must be listening, with its URL: on `None` (it exited
/// before its listening line), reaps it and fails the test with its output.
fn expect_listening(
    what: &str,
    mut server: Child,
    url: Option<String>,
    log: &Arc<Mutex<String>>,
) -> (Child, String) {
    match url {
        Some(url) => (server, url),
        None => {
            kill_process_group(server.id());
            let _ = server.wait();
            panic!(
                "{what} did not print `listening on http://…` within {:?}; output:\n{}",
                STARTUP_TIMEOUT,
                log.lock().unwrap()
            );
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

/// Sends a request and reads the whole answer.
pub async fn send_request(request: RequestBuilder) -> ApiResponse {
    let response = request.send().await.expect("HTTP request to holdfast");
    let status = response.status();
    let text = response.text().await.expect("read the response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    ApiResponse { status, body, text }
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
            // In a container the script wrote the pid its namespace shows:
            // the tests watch and signal the host's view of that process.
            let pid = if container_mode()
                && file.starts_with(container_env("HOLDFAST_TEST_CONTAINER_VOLUMES"))
            {
                host_pid_of(&file, pid)?
            } else {
                pid
            };
            (Some(pid) != previous).then_some(pid)
        }
    })
    .await
}

/// The host pid of the process that has pid `ns_pid` in the container of the
/// workspace whose volume holds `pid_file` (`…/holdfast-<id>[-scratch-…]/_data/pid`).
fn host_pid_of(pid_file: &Path, ns_pid: u32) -> Option<u32> {
    let volume = pid_file.parent()?.parent()?.file_name()?.to_str()?;
    let id = volume.strip_prefix("holdfast-")?.get(..36)?;
    workspace_processes(id).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|ids| ids.split_whitespace().last())
                .is_some_and(|inner| inner == ns_pid.to_string())
        })
    })
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

/// The lines of a text file once it has at least `n` of them (a process
/// just started may be about to write its line).
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(&format!("{n} lines in {}", path.display()), || async {
        let lines = read_lines(path);
        (lines.len() >= n).then_some(lines)
    })
    .await
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

/// `path` with symbolic links resolved (the server canonicalises its data
/// dir, and what it passes on to processes is the canonical path).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The running (not zombie) processes whose environment holds exactly the
/// entry `entry` (`KEY=value`).
fn processes_with_env(entry: &str) -> Vec<u32> {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()))
        })
        .filter(|pid| process_is_running(*pid))
        // A workspace's launcher (`holdfast contain … -- PROGRAM`) carries
        // its environment for the instant before it becomes PROGRAM; it is
        // not one of the workspace's processes yet.
        .filter(|pid| {
            !std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"contain".as_slice()))
        })
        // A container's init (Podman's `/run/podman-init`, Docker's
        // `docker-init`) carries the container's environment; it is the
        // engine's, not one of the workspace's processes.
        .filter(|pid| {
            !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0).next().is_some_and(|argv0| {
                    argv0.ends_with(b"podman-init") || argv0.ends_with(b"docker-init")
                })
            })
        })
        .collect()
}

/// The running processes of workspace `id`: those whose environment holds
/// `HOLDFAST_WORKSPACE_ID=<id>`, zombies excluded.
pub fn workspace_processes(id: &str) -> Vec<u32> {
    processes_with_env(&format!("HOLDFAST_WORKSPACE_ID={id}"))
}

/// Waits until workspace `id` has exactly `count` running processes and
/// returns their pids.
pub async fn wait_workspace_process_count(id: &str, count: usize) -> Vec<u32> {
    eventually(
        &format!("workspace {id} to run exactly {count} process(es)"),
        || async move {
            let pids = workspace_processes(id);
            (pids.len() == count).then_some(pids)
        },
    )
    .await
}

/// A create body for a workspace on the built-in runtime (no `runtime`).
pub fn builtin_body(name: &str) -> Value {
    json!({ "name": name })
}

/// The same, with an explicit `compute.data_persistence`.
pub fn builtin_body_with_persistence(name: &str, mode: &str) -> Value {
    json!({ "name": name, "compute": { "data_persistence": mode } })
}

/// Sends `SIGKILL` to `pid`, as an out-of-memory killer or a `kill -9` would.
pub fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}

// ---- Data safety: restore, sweeper, audit, export, metrics -----------------

/// Flags for data-safety tests: graces short enough to wait out within a
/// test, and a sweep interval so long that only the pass at start and
/// `POST /admin/sweep` ever run the sweeper, so that each test decides when
/// the sweeper acts. The graces are a few seconds rather than less so that a
/// sweep made right after a delete or an adoption surely falls within them.
pub const SHORT_GRACES: &[&str] = &[
    "--erase-grace",
    "2s",
    "--retention-grace",
    "3s",
    "--sweep-interval",
    "1h",
];

impl TestApp {
    /// A server started with [`SHORT_GRACES`], returned once its pass at
    /// start is over, so that the test's own sweeps are the only ones that
    /// see what it plants afterwards.
    pub async fn spawn_with_short_graces() -> TestApp {
        let app = Self::spawn_with(SHORT_GRACES).await;
        app.wait_for_a_sweeper_pass().await;
        app
    }

    /// Waits until the metrics count at least one finished sweeper pass
    /// since this server started (the pass at start, at first).
    pub async fn wait_for_a_sweeper_pass(&self) {
        eventually("the sweeper's pass at start", || async {
            let text = self.metrics_text().await;
            let runs = metric_value(&text, "holdfast_sweeper_runs_total")?;
            (runs >= 1.0).then_some(())
        })
        .await
    }

    /// `<cp-data-dir>/trash/<volume-id>`, where an erasure moves a volume
    /// before deleting it.
    pub fn trash_dir(&self, volume_id: &str) -> PathBuf {
        self.cp_data_dir().join("trash").join(volume_id)
    }

    /// `POST /workspaces/:id/restore`.
    pub async fn restore_workspace(&self, id: &str) -> ApiResponse {
        self.post_empty(&format!("/workspaces/{id}/restore")).await
    }

    /// `GET /workspaces/:id/data`, asserting 200: the volume record with its
    /// history.
    pub async fn volume(&self, id: &str) -> Value {
        self.workspace_data(id).await.expect_status(200)
    }

    /// Polls `GET /workspaces/:id/data` until the volume is in `state`.
    pub async fn wait_volume_state(&self, id: &str, state: &str) -> Value {
        eventually(&format!("the volume of {id} to be {state}"), || async {
            let record = self.volume(id).await;
            (record["state"] == state).then_some(record)
        })
        .await
    }

    /// `GET /volumes` with a raw query string (`""` for none, else
    /// `"?state=…"`).
    pub async fn list_volumes_at(&self, query: &str) -> ApiResponse {
        self.get(&format!("/volumes{query}")).await
    }

    /// `GET /volumes`, asserting 200 and a JSON array.
    pub async fn volumes(&self) -> Vec<Value> {
        self.list_at("/volumes").await
    }

    /// `GET /volumes?state=<state>`, asserting 200 and a JSON array.
    pub async fn volumes_in_state(&self, state: &str) -> Vec<Value> {
        self.list_at(&format!("/volumes?state={state}")).await
    }

    /// `POST /admin/sweep` with a raw JSON body.
    pub async fn sweep_with_body(&self, body: &Value) -> ApiResponse {
        self.post_json("/admin/sweep", body).await
    }

    /// `POST /admin/sweep` with `{}`, asserting 200 and a report that says it
    /// was not a dry run.
    pub async fn sweep(&self) -> Value {
        let report = self.sweep_with_body(&json!({})).await.expect_status(200);
        assert_eq!(report["dry_run"], false, "{report}");
        assert!(report["items"].is_array(), "{report}");
        report
    }

    /// `POST /admin/sweep` with `{"dry_run":true}`, asserting 200, a report
    /// that says so, and that every item is only `planned`.
    pub async fn sweep_dry_run(&self) -> Value {
        let report = self
            .sweep_with_body(&json!({ "dry_run": true }))
            .await
            .expect_status(200);
        assert_eq!(report["dry_run"], true, "{report}");
        for item in report_items(&report) {
            assert_eq!(item["outcome"], "planned", "a dry run only plans: {report}");
        }
        report
    }

    /// Polls dry-run sweeps until one plans `action` for the volume of
    /// workspace `workspace_id`, and returns that item. This waits out a
    /// grace without guessing at clocks, and without acting (so it never
    /// reaches a failpoint on the erase path).
    pub async fn wait_sweep_plans(&self, workspace_id: &str, action: &str) -> Value {
        eventually(
            &format!("a dry-run sweep to plan {action} for workspace {workspace_id}"),
            || async {
                let report = self.sweep_dry_run().await;
                items_for(&report, workspace_id)
                    .into_iter()
                    .find(|item| item["action"] == action)
            },
        )
        .await
    }

    /// `GET /audit` with a raw query string (`""` for none, else `"?…"`).
    pub async fn audit_at(&self, query: &str) -> ApiResponse {
        self.get(&format!("/audit{query}")).await
    }

    /// `GET /audit`, asserting 200 and a JSON array.
    pub async fn audit(&self) -> Vec<Value> {
        self.list_at("/audit").await
    }

    /// `GET /audit?workspace_id=<id>`, asserting 200 and that every event is
    /// about that workspace.
    pub async fn audit_of(&self, id: &str) -> Vec<Value> {
        let events = self.list_at(&format!("/audit?workspace_id={id}")).await;
        for event in &events {
            assert_eq!(
                event["workspace_id"], id,
                "the filter let another workspace's event through: {event}"
            );
        }
        events
    }

    /// `GET /workspaces/:id/data/export`, read to the end.
    pub async fn export_data(&self, id: &str) -> Export {
        self.try_export_data(id)
            .await
            .unwrap_or_else(|e| panic!("read the export body: {e}"))
    }

    /// Like [`Self::export_data`], with a download that broke off part-way
    /// (the server aborted the stream) as `Err`.
    pub async fn try_export_data(&self, id: &str) -> Result<Export, String> {
        let response = self
            .authed(Method::GET, &format!("/workspaces/{id}/data/export"))
            .send()
            .await
            .expect("HTTP request to holdfast");
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_vec();
        Ok(Export {
            status,
            content_type,
            bytes,
        })
    }

    /// `GET /metrics` with the admin token, asserting 200; the text.
    pub async fn metrics_text(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status.as_u16(), 200, "{}", response.text);
        response.text
    }
}

/// The `items` of a sweep report.
pub fn report_items(report: &Value) -> Vec<Value> {
    match &report["items"] {
        Value::Array(items) => items.clone(),
        _ => panic!("a sweep report without an `items` array: {report}"),
    }
}

/// The items of a sweep report about workspace `workspace_id`.
pub fn items_for(report: &Value, workspace_id: &str) -> Vec<Value> {
    report_items(report)
        .into_iter()
        .filter(|item| item["workspace_id"] == workspace_id)
        .collect()
}

/// How many audit events have `action`.
pub fn count_action(events: &[Value], action: &str) -> usize {
    events.iter().filter(|e| e["action"] == action).count()
}

/// The audit events with `action`.
pub fn events_with_action(events: &[Value], action: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// An RFC 3339 timestamp of the API as a point in time.
pub fn parse_time(value: &Value) -> std::time::SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 timestamp string, got {value}"));
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not an RFC 3339 timestamp: {e}"))
}

/// Every regular file under `dir`, by path relative to `dir`, with its
/// content; directories are walked, symbolic links are not followed.
pub fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                walk(root, &path, out);
            } else if kind.is_file() {
                let relative = path.strip_prefix(root).expect("under the root");
                let content = std::fs::read(&path).expect("read a snapshot file");
                out.insert(relative.display().to_string(), content);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The value of the sample `series` (a metric name with its labels, exactly
/// as printed, e.g. `holdfast_volumes{state="erased"}`) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name.trim() == series).then(|| {
                value
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("bad sample value in {line:?}: {e}"))
            })
        })
}

/// The answer to `GET /workspaces/:id/data/export`, body kept as bytes.
pub struct Export {
    pub status: StatusCode,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What one tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other(String),
}

/// One entry of an exported archive.
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    /// The path as stored, without a leading `./` or trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    pub content: Vec<u8>,
    /// The target of a symbolic link, as stored.
    pub link_target: Option<String>,
}

impl Export {
    /// Asserts a 200 `application/gzip` answer and unpacks the tar.gz in
    /// memory; no entry may be absolute or climb out with `..`.
    #[track_caller]
    pub fn expect_archive(self) -> Vec<ArchiveEntry> {
        assert_eq!(
            self.status.as_u16(),
            200,
            "expected an export, got HTTP {} with body {}",
            self.status,
            String::from_utf8_lossy(&self.bytes)
        );
        assert!(
            self.content_type.starts_with("application/gzip"),
            "an export is application/gzip, got {:?}",
            self.content_type
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&self.bytes[..]));
        let mut out = Vec::new();
        for entry in archive.entries().expect("read the tar stream") {
            let mut entry = entry.expect("a readable tar entry");
            let raw = entry.path().expect("an entry path").into_owned();
            assert!(
                !raw.is_absolute()
                    && raw
                        .components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir)),
                "an archive entry must stay inside the data dir: {}",
                raw.display()
            );
            let path = raw
                .display()
                .to_string()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let header_kind = entry.header().entry_type();
            let kind = if header_kind.is_file() {
                EntryKind::File
            } else if header_kind.is_dir() {
                EntryKind::Dir
            } else if header_kind.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::Other(format!("{header_kind:?}"))
            };
            let link_target = entry
                .link_name()
                .expect("a readable link name")
                .map(|l| l.display().to_string());
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .expect("read an entry's content");
            out.push(ArchiveEntry {
                path,
                kind,
                content,
                link_target,
            });
        }
        out
    }

    /// The answer as an [`ApiResponse`], for error checks.
    pub fn into_response(self) -> ApiResponse {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        ApiResponse {
            status: self.status,
            body,
            text,
        }
    }
}

impl TestApp {
    /// Creates a persist workspace running [`recording_runtime`], waits for it
    /// to be online and for its process to have written its pid; returns the
    /// id and that pid.
    pub async fn running_persist_workspace(&self, name: &str) -> (String, u32) {
        let ws = self
            .create_online_workspace(&workspace_body_with_persistence(name, "persist"))
            .await;
        let id = id_of(&ws);
        let pid = wait_for_pid(&self.volume_dir(&id)).await;
        (id, pid)
    }
}

/// Writes a few files into `dir` as a workspace would keep them (a small text
/// file, and a binary one in nested directories, both derived from `seed` so
/// that two workspaces hold different bytes); returns what was written, by
/// relative path, in the shape of [`snapshot_files`].
pub fn plant_files(dir: &Path, seed: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut planted = std::collections::BTreeMap::new();
    planted.insert(
        "memory.md".to_owned(),
        format!("# memory of {seed}\nremember me\n").into_bytes(),
    );
    // 64 KiB that differ from seed to seed and are not all one byte value.
    let blob: Vec<u8> = (0..64 * 1024u32)
        .map(|i| {
            let mixed = i.wrapping_mul(2_654_435_761) ^ seed.len() as u32;
            (mixed >> 13) as u8 ^ seed.as_bytes()[i as usize % seed.len()]
        })
        .collect();
    planted.insert("profile/cache/blob.bin".to_owned(), blob);
    for (path, content) in &planted {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent dir")).expect("create dirs");
        std::fs::write(&file, content).expect("plant a file");
    }
    planted
}

/// The number of bytes in the files [`plant_files`] returned.
pub fn planted_bytes(planted: &std::collections::BTreeMap<String, Vec<u8>>) -> u64 {
    planted.values().map(|c| c.len() as u64).sum()
}

/// Asserts that every planted file is in `dir` with exactly its bytes.
#[track_caller]
pub fn assert_files_intact(dir: &Path, planted: &std::collections::BTreeMap<String, Vec<u8>>) {
    let now = snapshot_files(dir);
    for (path, content) in planted {
        match now.get(path) {
            Some(found) => assert!(
                found == content,
                "{path} in {} changed ({} bytes, was {})",
                dir.display(),
                found.len(),
                content.len()
            ),
            None => panic!(
                "{path} is missing from {}; have {:?}",
                dir.display(),
                now.keys()
            ),
        }
    }
}

// ---- A control plane of its own: `holdfast cp serve` -----------------------

/// A running `holdfast cp serve` with its own data dir, started with
/// [`CP_SHARED_SECRET`]. It keeps its address across restarts, so that the
/// servers using it need not be told. Dropping it sends SIGTERM (which stops
/// its workspaces), waits for it to exit (SIGKILL after 10 s) and then kills
/// any workspace process it left behind.
pub struct CpServer {
    pub url: String,
    pub client: reqwest::Client,
    /// `127.0.0.1:<port>`, the port its first start picked.
    listen: String,
    args: Vec<String>,
    /// Variables set on the process on top of the cleaned environment (for
    /// failpoints); empty for an ordinary start.
    env: Vec<(String, String)>,
    process: Child,
    log: Arc<Mutex<String>>,
    // Declared last so that it is removed after the process is gone.
    data_dir: tempfile::TempDir,
}

impl CpServer {
    /// A control plane started with the extra flags `args`, with one tenant
    /// per name of `tenants` added before it starts; returns it and the
    /// tenants' tokens, in the order of `tenants`.
    pub fn start_with_tenants(tenants: &[&str], args: &[&str]) -> (CpServer, Vec<String>) {
        Self::start_with_args(tenants, args.iter().map(|a| (*a).to_owned()).collect())
    }

    fn start_with_args(tenants: &[&str], args: Vec<String>) -> (CpServer, Vec<String>) {
        let data_dir = tempfile::tempdir().expect("create a temp data dir for the control plane");
        let tokens = tenants
            .iter()
            .map(|name| add_tenant(data_dir.path(), name))
            .collect();
        let log = Arc::new(Mutex::new(String::new()));
        let (process, url) = launch_cp(data_dir.path(), "127.0.0.1:0", &args, &[], &log);
        let (process, url) = expect_listening("holdfast cp serve", process, url, &log);
        let listen = url
            .strip_prefix("http://")
            .expect("an http:// control plane URL")
            .to_owned();
        let cp = CpServer {
            url,
            client: http_client(),
            listen,
            args,
            env: Vec::new(),
            process,
            log,
            data_dir,
        };
        (cp, tokens)
    }

    /// Its `--data-dir`, where its volumes, scratch dirs and trash live.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// `<data-dir>/volumes/<id>`.
    pub fn volume_dir(&self, workspace_id: &str) -> PathBuf {
        self.data_dir().join("volumes").join(workspace_id)
    }

    /// The flags that make `holdfast serve` use this control plane as the
    /// tenant of `tenant_token`.
    pub fn platform_flags(&self, tenant_token: &str) -> Vec<String> {
        [
            "--cp-url",
            &self.url,
            "--cp-shared-secret",
            CP_SHARED_SECRET,
            "--cp-tenant-token",
            tenant_token,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A request to `path` with neither the shared secret nor a tenant token.
    pub fn unauthenticated(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    /// A request to `path` with the shared secret and `tenant_token`, as the
    /// platform of that tenant sends it.
    pub fn as_tenant(&self, tenant_token: &str, method: Method, path: &str) -> RequestBuilder {
        self.unauthenticated(method, path)
            .bearer_auth(CP_SHARED_SECRET)
            .header("X-Holdfast-Tenant-Token", tenant_token)
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: RequestBuilder) -> ApiResponse {
        send_request(request).await
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Kills it with SIGKILL, as a host crash would (its workspace
    /// processes, in process groups of their own, survive it), and starts it
    /// again on its address and data dir with the environment `env`. A
    /// failpoint may abort the new process before it listens, so this
    /// returns once it listens *or* has exited; follow with
    /// [`Self::expect_abort`] when a crash is expected.
    pub fn crash_and_restart_with_env(&mut self, env: &[(&str, &str)]) {
        kill_process_group(self.process.id());
        let _ = self.process.wait();
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.log
            .lock()
            .unwrap()
            .push_str(&format!("---- server restarted with {env:?} ----\n"));
        let (process, url) = launch_cp(
            self.data_dir.path(),
            &self.listen,
            &self.args,
            &self.env,
            &self.log,
        );
        self.process = process;
        if let Some(url) = url {
            assert_eq!(url, self.url, "the control plane must keep its address");
        }
    }

    /// Waits for it to end on its own and asserts that it aborted at
    /// `failpoint`, as [`TestApp::expect_server_abort`] does for a server.
    pub async fn expect_abort(&mut self, failpoint: &str) {
        expect_abort(&mut self.process, &self.log, "the control plane", failpoint).await;
    }

    /// Starts it again after it ended on its own, without the environment
    /// given to [`Self::crash_and_restart_with_env`].
    /// Kills the control plane (its workspaces, in their own process
    /// groups, keep running) and leaves it down, as a crash or an outage
    /// would, until [`Self::start_again_without_env`].
    pub fn kill(&mut self) {
        kill_process_group(self.process.id());
        let _ = self.process.wait();
        self.log
            .lock()
            .unwrap()
            .push_str("---- control plane killed ----\n");
    }

    pub fn start_again_without_env(&mut self) {
        assert!(
            self.process
                .try_wait()
                .expect("poll the control plane process")
                .is_some(),
            "the previous control plane is still running"
        );
        self.env.clear();
        self.start_again();
    }

    /// Sends SIGTERM, as an operator would, and fails the test when it has
    /// not exited on its own within the poll timeout. Whatever it left
    /// running is left for the test to see (and for the drop to reap).
    pub async fn stop_expecting_graceful_exit(&mut self) {
        let pid = self.process.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + POLL_TIMEOUT;
        while self
            .process
            .try_wait()
            .expect("poll the control plane process")
            .is_none()
        {
            if Instant::now() >= deadline {
                kill_process_group(pid);
                let _ = self.process.wait();
                panic!(
                    "the control plane did not exit within {POLL_TIMEOUT:?} of SIGTERM; output:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills it with SIGKILL and starts it again on its address.
    pub fn crash_and_restart(&mut self) {
        kill_process_group(self.process.id());
        let _ = self.process.wait();
        self.start_again();
    }

    fn start_again(&mut self) {
        self.log
            .lock()
            .unwrap()
            .push_str("---- server restarted ----\n");
        let (process, url) = launch_cp(
            self.data_dir.path(),
            &self.listen,
            &self.args,
            &self.env,
            &self.log,
        );
        let (process, url) = expect_listening("holdfast cp serve", process, url, &self.log);
        assert_eq!(url, self.url, "the control plane must keep its address");
        self.process = process;
    }
}

impl Drop for CpServer {
    fn drop(&mut self) {
        // One that has already exited (a failpoint, a graceful stop) is not
        // signalled again: its pid may belong to someone else by now.
        if matches!(self.process.try_wait(), Ok(None)) {
            stop_server(&mut self.process);
        }
        reap_processes_of(self.data_dir.path());
        if container_mode() {
            remove_engine_objects_of(self.data_dir.path());
        }
        if std::thread::panicking() {
            eprintln!("---- holdfast cp serve output ----\n{}", self.log());
        }
    }
}

/// `holdfast cp tenant add <name> --data-dir <data_dir>`: the tenant's token,
/// which it prints alone on stdout.
fn add_tenant(data_dir: &Path, name: &str) -> String {
    let out = holdfast_command()
        .args(["cp", "tenant", "add", name, "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run holdfast cp tenant add");
    assert!(
        out.status.success(),
        "holdfast cp tenant add {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("a UTF-8 token");
    let token = stdout.trim();
    assert!(
        !token.is_empty() && token.lines().count() == 1,
        "the tenant token is printed alone on stdout, got {stdout:?}"
    );
    token.to_owned()
}

/// Starts `holdfast cp serve` on `listen` and waits for its listening line;
/// `None` when it exits first.
fn launch_cp(
    data_dir: &Path,
    listen: &str,
    args: &[String],
    env: &[(String, String)],
    log: &Arc<Mutex<String>>,
) -> (Child, Option<String>) {
    let mut cmd = holdfast_command();
    cmd.args(["cp", "serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(["--shared-secret", CP_SHARED_SECRET])
        .args(args);
    launch("holdfast cp serve", cmd, env, log)
}

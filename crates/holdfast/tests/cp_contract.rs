//! The control-plane contract: one suite of checks, run against the embedded
//! control plane (in this process) and against `holdfast cp serve` reached
//! over HTTP through `HttpCp`, each on the process backend and on the
//! container backend (SPEC §14: the contract is the same on every backend).
//! They must behave the same, file for file.
//!
//! The suite sees a workspace's data through the backend's own volume API
//! ([`Backend::export`], [`Backend::has_data`]), never through a host path,
//! so every check runs on every backend. Only `cp serve` on the process
//! backend, which runs in another process, is looked at through its data
//! dir (the layout of SPEC §3).
//!
//! The container subjects need an engine: `HOLDFAST_TEST_CONTAINER_HOST`
//! and `HOLDFAST_TEST_CONTAINER_IMAGE` (`cargo xtask test` starts a Podman,
//! builds the image and sets both in its container phase). Without them a
//! run outside CI skips those two tests and says why; under `CI=true` they
//! fail.

use holdfast_cp::backend::{DataKind, SharedBackend};
use holdfast_cp::container::{ContainerBackend, ContainerSettings};
use holdfast_cp::{
    ControlPlane, CpError, CpPolicy, EmbeddedCp, HttpCp, InstanceState, InstanceStatus,
    ProvisionRequest,
};
use holdfast_domain::{DataPersistence, ImageRef, Runtime, VolumeState};
use holdfast_store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const ERASE_GRACE: Duration = Duration::from_millis(600);

/// A control plane under test, and how the suite looks at its data.
struct Subject {
    cp: Arc<dyn ControlPlane>,
    data: Observer,
    _dir: tempfile::TempDir,
    server: Option<Child>,
    /// The engine whose objects of this control plane's scope go at the end.
    engine: Option<String>,
    root: PathBuf,
}

/// Where the suite reads a workspace's data.
enum Observer {
    /// Through the backend's volume API (export, has_data).
    Backend(SharedBackend),
    /// The data dir of a `cp serve` on the process backend (SPEC §3 layout).
    Dir(PathBuf),
}

impl Observer {
    /// The number of lines of `file` in the workspace's data of `kind`
    /// (0 when there is no such data or file).
    async fn lines(&self, id: Uuid, kind: DataKind, file: &str) -> usize {
        match self {
            Observer::Dir(root) => lines(&dir_of(root, id, kind).join(file)),
            Observer::Backend(backend) => {
                let Ok(mut stream) = backend.export(id, kind).await else {
                    return 0;
                };
                let mut archive = Vec::new();
                use futures_util::StreamExt;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => archive.extend_from_slice(&chunk),
                        Err(_) => return 0,
                    }
                }
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
                let Ok(entries) = tar.entries() else {
                    return 0;
                };
                for entry in entries {
                    let Ok(mut entry) = entry else { return 0 };
                    if entry.path_bytes().as_ref() == file.as_bytes() {
                        let mut text = String::new();
                        use std::io::Read;
                        return match entry.read_to_string(&mut text) {
                            Ok(_) => text.lines().count(),
                            Err(_) => 0,
                        };
                    }
                }
                0
            }
        }
    }

    /// Whether the workspace has data of `kind` on the backend now.
    async fn has(&self, id: Uuid, kind: DataKind) -> bool {
        match self {
            Observer::Dir(root) => dir_of(root, id, kind).exists(),
            Observer::Backend(backend) => backend.has_data(id, kind).await,
        }
    }
}

fn dir_of(root: &Path, id: Uuid, kind: DataKind) -> PathBuf {
    let folder = match kind {
        DataKind::Volume => "volumes",
        DataKind::Scratch => "scratch",
    };
    root.join(folder).join(id.to_string())
}

/// The engine of the container subjects, or why they do not run.
fn engine() -> Option<(String, ImageRef)> {
    let host = std::env::var("HOLDFAST_TEST_CONTAINER_HOST").ok();
    let image = std::env::var("HOLDFAST_TEST_CONTAINER_IMAGE").ok();
    match (host, image) {
        (Some(host), Some(image)) => Some((
            host,
            ImageRef::parse(&image).expect("HOLDFAST_TEST_CONTAINER_IMAGE is an image reference"),
        )),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true: the contract must also hold on the container backend, but \
             HOLDFAST_TEST_CONTAINER_HOST and HOLDFAST_TEST_CONTAINER_IMAGE are not set \
             (cargo xtask test starts a Podman and sets them in its container phase)"
        ),
        _ => {
            eprintln!(
                "skipping the contract on the container backend: no engine \
                 (set HOLDFAST_TEST_CONTAINER_HOST and HOLDFAST_TEST_CONTAINER_IMAGE, \
                 or run cargo xtask test, which starts a Podman)"
            );
            None
        }
    }
}

fn container_settings(host: &str, image: &ImageRef) -> ContainerSettings {
    ContainerSettings {
        host: host.to_owned(),
        image: image.clone(),
        runtime_exe: PathBuf::from(env!("CARGO_BIN_EXE_holdfast")),
        stop_timeout: Duration::from_secs(5),
        network: "host".to_owned(),
    }
}

/// Removes every container and volume of the scope whose data dir is
/// `root` (a test's end, passed or not).
fn remove_engine_objects(host: &str, root: &Path) {
    let Ok(scope) = std::fs::read_to_string(root.join("cp-id")) else {
        return;
    };
    let filter = format!("label=holdfast.cp={}", scope.trim());
    let run = |args: &[&str]| {
        Command::new("podman")
            .arg("--url")
            .arg(host)
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

impl Drop for Subject {
    fn drop(&mut self) {
        self.stop_server();
        if let Some(host) = &self.engine {
            remove_engine_objects(host, &self.root);
        }
    }
}

impl Subject {
    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn embedded(engine: Option<(String, ImageRef)>) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let store = Store::open_sqlite(&root.join("holdfast.db")).await.unwrap();
    let policy = CpPolicy {
        default_persistence: DataPersistence::Persist,
        retention_grace: Duration::from_secs(3600),
        erase_grace: ERASE_GRACE,
        runtime_exe: PathBuf::from(env!("CARGO_BIN_EXE_holdfast")),
        stop_timeout: Duration::from_secs(5),
        with_workspaces: false,
        sandbox: holdfast_cp::process::Sandbox::None,
        backend: match &engine {
            Some((host, image)) => {
                holdfast_cp::BackendChoice::Container(container_settings(host, image))
            }
            None => holdfast_cp::BackendChoice::Process,
        },
        usage_interval: Duration::from_secs(30),
        snapshot_freeze_max: Duration::from_secs(10),
    };
    let cp = EmbeddedCp::start(store, root.clone(), policy)
        .await
        .unwrap();
    Subject {
        data: Observer::Backend(cp.backend().clone()),
        cp,
        _dir: dir,
        server: None,
        engine: engine.map(|(host, _)| host),
        root,
    }
}

fn holdfast() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOLDFAST_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

async fn over_http(engine: Option<(String, ImageRef)>) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let out = holdfast()
        .args(["cp", "tenant", "add", "contract", "--data-dir"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tenant add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.lines().count(), 1, "the token is printed alone");
    let mut child = holdfast()
        .args([
            "cp",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shared-secret",
            "contract-secret",
            "--sweep-interval",
            "1h",
        ])
        .args([
            "--erase-grace",
            &format!("{}ms", ERASE_GRACE.as_millis()),
            "--retention-grace",
            "1h",
            "--data-dir",
        ])
        .arg(&root)
        .args(match &engine {
            Some((host, image)) => vec![
                "--backend".to_owned(),
                "container".to_owned(),
                "--container-host".to_owned(),
                host.clone(),
                "--container-image".to_owned(),
                image.as_str().to_owned(),
            ],
            None => Vec::new(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("cp serve prints its URL");
        if let Some((_, rest)) = line.split_once("listening on ") {
            break rest.trim().to_owned();
        }
    };
    let cp = Arc::new(HttpCp::new(&url, "contract-secret", token).unwrap());
    // The suite's own view of the engine, in the server's scope (the
    // `cp-id` it wrote before it printed its URL).
    let data = match &engine {
        Some((host, image)) => Observer::Backend(
            ContainerBackend::connect(container_settings(host, image), &root)
                .await
                .unwrap(),
        ),
        None => Observer::Dir(root.clone()),
    };
    Subject {
        cp,
        data,
        _dir: dir,
        server: Some(child),
        engine: engine.map(|(host, _)| host),
        root,
    }
}

fn request(id: Uuid, mode: Option<DataPersistence>) -> ProvisionRequest {
    ProvisionRequest {
        org_id: Uuid::new_v4(),
        workspace_id: id,
        runtime: Runtime::command(vec![
            "sh".into(),
            "-c".into(),
            "echo started >> starts; exec sleep 600".into(),
        ]),
        tier: 2,
        env: BTreeMap::new(),
        data_persistence: mode,
        volume_size_gb: None,
        first_start: false,
        seed_snapshot: None,
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    // A deadline, not a timing check: a container start through a loaded
    // 2-core machine's engine can take seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every check of the contract, in order, against one control plane.
async fn contract(s: Subject) {
    let cp = &s.cp;
    let data = &s.data;
    let id = Uuid::new_v4();
    let starts = |kind| data.lines(id, kind, "starts");

    // The image check: the default image is there; one the engine lacks is
    // named (a backend without images has nothing to refuse).
    cp.check_image(None).await.unwrap();
    let absent = ImageRef::parse("localhost/holdfast-contract-absent:0").unwrap();
    match (cp.check_image(Some(&absent)).await, s.engine.is_some()) {
        (Err(CpError::ImageMissing(m)), true) => {
            assert!(m.contains("localhost/holdfast-contract-absent:0"), "{m}")
        }
        (Ok(()), false) => {}
        (other, on_containers) => {
            panic!("image check on_containers={on_containers}: {other:?}")
        }
    }

    // Persist: a volume, a running process, its data on disk.
    let p = cp
        .provision(request(id, Some(DataPersistence::Persist)))
        .await
        .unwrap();
    assert_eq!(
        (p.state, p.data_mode),
        (InstanceState::Running, DataPersistence::Persist)
    );
    // A running instance, and no reason it would not run: the process
    // and container backends observe none (the wire carries none either).
    assert_eq!(
        cp.status(id, &p.instance_id).await.unwrap(),
        InstanceStatus::plain(InstanceState::Running)
    );
    wait_for("the first start's line", || async {
        starts(DataKind::Volume).await == 1
    })
    .await;
    let v = cp.volume(id).await.unwrap().expect("a volume");
    assert_eq!(v.state, VolumeState::Active);

    // Stop never touches the data; a second start sees it.
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    assert_ne!(
        cp.status(id, &p.instance_id).await.unwrap().state,
        InstanceState::Running
    );
    assert_eq!(
        cp.volume(id).await.unwrap().unwrap().state,
        VolumeState::Active
    );
    cp.stop(id, None).await.unwrap();
    let p = cp.provision(request(id, None)).await.unwrap();
    assert_eq!(
        p.data_mode,
        DataPersistence::Persist,
        "auto resolves by the control plane's policy"
    );
    wait_for("the second start's line", || async {
        starts(DataKind::Volume).await == 2
    })
    .await;

    // A switch to ephemeral retains the volume; switching back re-attaches it.
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    let p = cp
        .provision(request(id, Some(DataPersistence::Ephemeral)))
        .await
        .unwrap();
    assert_eq!(
        cp.volume(id).await.unwrap().unwrap().state,
        VolumeState::Retained
    );
    wait_for("the ephemeral start's line", || async {
        starts(DataKind::Scratch).await == 1
    })
    .await;
    assert!(
        data.has(id, DataKind::Scratch).await,
        "an ephemeral workspace has scratch data while it runs"
    );
    assert_eq!(
        starts(DataKind::Volume).await,
        2,
        "the retained volume kept its data and did not see the ephemeral start"
    );
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    assert!(
        !data.has(id, DataKind::Scratch).await,
        "scratch data is removed at stop"
    );
    let p = cp
        .provision(request(id, Some(DataPersistence::Persist)))
        .await
        .unwrap();
    assert_eq!(
        cp.volume(id).await.unwrap().unwrap().state,
        VolumeState::Active
    );
    wait_for("the re-attached start's line", || async {
        starts(DataKind::Volume).await == 3
    })
    .await;

    // Export holds the files.
    let mut stream = cp.export(id).await.unwrap();
    let mut archive = Vec::new();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        archive.extend_from_slice(&chunk.unwrap());
    }
    let mut names = Vec::new();
    for entry in tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]))
        .entries()
        .unwrap()
    {
        names.push(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert!(names.contains(&"starts".to_owned()), "{names:?}");

    // Delete without erase: retained; restore: active again.
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    assert_eq!(
        cp.retain_volume(
            id,
            "tester",
            holdfast_domain::VolumeReason::WorkspaceDeleted
        )
        .await
        .unwrap()
        .unwrap()
        .state,
        VolumeState::Retained
    );
    assert_eq!(
        cp.list_volumes(Some(VolumeState::Retained))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cp.restore_volume(id, "tester")
            .await
            .unwrap()
            .unwrap()
            .state,
        VolumeState::Active
    );

    // Prune: erase_pending with who asked; restore cancels it.
    let pending = cp.stop_and_prune(id, None, "alice").await.unwrap().unwrap();
    assert_eq!(
        (pending.state, pending.erased_by.as_deref()),
        (VolumeState::ErasePending, Some("alice"))
    );
    assert_eq!(
        starts(DataKind::Volume).await,
        3,
        "nothing is erased before the grace"
    );
    assert_eq!(
        cp.restore_volume(id, "alice").await.unwrap().unwrap().state,
        VolumeState::Active
    );
    let history = cp.volume_history(pending.id).await.unwrap();
    let states: Vec<&str> = history.iter().map(|h| h.to.as_str()).collect();
    assert_eq!(states.first(), Some(&"active"));
    assert!(states.contains(&"erase_pending"), "{states:?}");

    // Prune again and let the grace pass: a dry run plans, a pass erases.
    cp.stop_and_prune(id, None, "alice").await.unwrap();
    tokio::time::sleep(ERASE_GRACE + Duration::from_millis(200)).await;
    let plan = cp.sweep(true, "tester").await.unwrap();
    assert!(
        plan.items
            .iter()
            .any(|i| i.workspace_id == id && i.outcome == holdfast_domain::SweepOutcome::Planned),
        "{plan:?}"
    );
    assert!(
        data.has(id, DataKind::Volume).await,
        "a dry run changes nothing"
    );
    let done = cp.sweep(false, "tester").await.unwrap();
    let item = done
        .items
        .iter()
        .find(|i| i.workspace_id == id)
        .expect("erased in this pass");
    assert_eq!(
        (item.action.as_str(), item.outcome.as_str()),
        ("erase", "done"),
        "{item:?}"
    );
    assert!(
        !data.has(id, DataKind::Volume).await,
        "the erased volume is gone from the backend"
    );
    let erased = cp.volume(id).await.unwrap().unwrap();
    assert_eq!(
        (erased.state, erased.erased_by.as_deref()),
        (VolumeState::Erased, Some("alice"))
    );
    assert!(matches!(
        cp.restore_volume(id, "alice").await,
        Err(CpError::DataErased)
    ));
    assert!(matches!(cp.export(id).await, Err(CpError::DataErased)));

    // Ephemeral from the start: no volume record at all.
    let e = Uuid::new_v4();
    let p = cp
        .provision(request(e, Some(DataPersistence::Ephemeral)))
        .await
        .unwrap();
    assert!(cp.volume(e).await.unwrap().is_none());
    cp.stop(e, Some(&p.instance_id)).await.unwrap();
}

#[tokio::test]
async fn the_embedded_control_plane_keeps_the_contract() {
    contract(embedded(None).await).await;
}

#[tokio::test]
async fn the_http_control_plane_keeps_the_contract() {
    contract(over_http(None).await).await;
}

#[tokio::test]
async fn the_embedded_control_plane_keeps_the_contract_on_containers() {
    if let Some(engine) = engine() {
        contract(embedded(Some(engine)).await).await;
    }
}

#[tokio::test]
async fn the_http_control_plane_keeps_the_contract_on_containers() {
    if let Some(engine) = engine() {
        contract(over_http(Some(engine)).await).await;
    }
}

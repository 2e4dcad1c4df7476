//! The control-plane contract: one suite of checks, run against the embedded
//! control plane (in this process) and against `holdfast cp serve` reached
//! over HTTP through `HttpCp`. Both must behave the same, file for file.

use holdfast_cp::{
    ControlPlane, CpError, CpPolicy, EmbeddedCp, HttpCp, InstanceState, ProvisionRequest,
};
use holdfast_domain::{DataPersistence, Runtime, VolumeState};
use holdfast_store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const ERASE_GRACE: Duration = Duration::from_millis(600);

/// A control plane under test, with the data dir its volumes live in.
struct Subject {
    cp: Arc<dyn ControlPlane>,
    root: PathBuf,
    _dir: tempfile::TempDir,
    server: Option<Child>,
}

impl Drop for Subject {
    fn drop(&mut self) {
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

async fn embedded() -> Subject {
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
        backend: holdfast_cp::BackendChoice::Process,
        usage_interval: Duration::from_secs(30),
        snapshot_freeze_max: Duration::from_secs(10),
    };
    let cp = EmbeddedCp::start(store, root.clone(), policy)
        .await
        .unwrap();
    Subject {
        cp,
        root,
        _dir: dir,
        server: None,
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

async fn over_http() -> Subject {
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
    Subject {
        cp,
        root,
        _dir: dir,
        server: Some(child),
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

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every check of the contract, in order, against one control plane.
async fn contract(s: Subject) {
    let cp = &s.cp;
    let id = Uuid::new_v4();
    let volume_dir = s.root.join("volumes").join(id.to_string());

    // Persist: a volume, a running process, its data on disk.
    let p = cp
        .provision(request(id, Some(DataPersistence::Persist)))
        .await
        .unwrap();
    assert_eq!(
        (p.state, p.data_mode),
        (InstanceState::Running, DataPersistence::Persist)
    );
    assert_eq!(
        cp.status(id, &p.instance_id).await.unwrap(),
        InstanceState::Running
    );
    wait_for("the first start's line", || {
        lines(&volume_dir.join("starts")) == 1
    })
    .await;
    let v = cp.volume(id).await.unwrap().expect("a volume");
    assert_eq!(v.state, VolumeState::Active);

    // Stop never touches the data; a second start sees it.
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    assert_ne!(
        cp.status(id, &p.instance_id).await.unwrap(),
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
    wait_for("the second start's line", || {
        lines(&volume_dir.join("starts")) == 2
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
    let scratch = s.root.join("scratch").join(id.to_string());
    wait_for("the ephemeral start's line", || {
        lines(&scratch.join("starts")) == 1
    })
    .await;
    cp.stop(id, Some(&p.instance_id)).await.unwrap();
    assert!(!scratch.exists(), "scratch data is removed at stop");
    let p = cp
        .provision(request(id, Some(DataPersistence::Persist)))
        .await
        .unwrap();
    assert_eq!(
        cp.volume(id).await.unwrap().unwrap().state,
        VolumeState::Active
    );
    wait_for("the re-attached start's line", || {
        lines(&volume_dir.join("starts")) == 3
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
    assert!(
        volume_dir.join("starts").exists(),
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
    assert!(volume_dir.exists(), "a dry run changes nothing");
    let done = cp.sweep(false, "tester").await.unwrap();
    let item = done
        .items
        .iter()
        .find(|i| i.workspace_id == id)
        .expect("erased in this pass");
    assert_eq!(
        (item.action.as_str(), item.outcome.as_str()),
        ("erase", "done")
    );
    assert!(!volume_dir.exists());
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
    contract(embedded().await).await;
}

#[tokio::test]
async fn the_http_control_plane_keeps_the_contract() {
    contract(over_http().await).await;
}

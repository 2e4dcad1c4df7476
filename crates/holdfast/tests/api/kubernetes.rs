//! Two `holdfast serve` replicas with `--backend kubernetes` on one
//! PostgreSQL and one namespace, against the backend's in-memory API
//! server served over HTTP (no real cluster runs here): a workspace is at
//! most one Pod whichever replica acts, and a replica killed with `kill -9`
//! leaves its workspace running, taken over by the other without a second
//! Pod.
//!
//! These need PostgreSQL (`HOLDFAST_TEST_DATABASE_URL`); under `CI=true` its
//! absence is a failure, elsewhere the tests say why they skip. The tests of
//! a Pod that cannot be scheduled run one server (and one `cp serve`) on the
//! suite's store: a Pending Pod's reason reaches `GET /workspaces/:id`.

use crate::helpers::{CpServer, TestApp, fresh_database, id_of, kill_9};
use holdfast_cp::kubernetes::fake::Fake;
use serde_json::json;
use std::time::Duration;

/// The PostgreSQL server the replicas share, or none (the test returns).
///
/// These tests start their own servers on `--backend kubernetes` against a
/// fake API server, each with its own `--database-url`: they belong to the
/// suite's plain pass, and the passes that run every server on a remote
/// control plane, on containers or on a database of their own do not apply
/// (their flags would clash with these).
fn postgres() -> Option<String> {
    if crate::helpers::remote_mode()
        || crate::helpers::container_mode()
        || crate::helpers::postgres_mode()
    {
        eprintln!(
            "skipping in this pass: the kubernetes replica tests choose their own backend and database (they run in the suite's plain pass)"
        );
        return None;
    }
    match std::env::var("HOLDFAST_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true but HOLDFAST_TEST_DATABASE_URL is not set: the kubernetes replica tests cannot run"
            )
        }
        Err(_) => {
            eprintln!(
                "skipping: kubernetes replica tests need PostgreSQL (HOLDFAST_TEST_DATABASE_URL)"
            );
            None
        }
    }
}

const NS: &str = "holdfast";

/// The workspace Pods (not helpers) the fake holds now.
fn pods(fake: &Fake) -> Vec<serde_json::Value> {
    fake.paths()
        .into_iter()
        .filter(|p| {
            p.starts_with(&format!("/api/v1/namespaces/{NS}/pods/")) && !p.contains("-helper-")
        })
        .filter_map(|p| fake.object(&p))
        .collect()
}

/// How many times the workspace's Pod was created (helpers not counted).
fn pod_creates(fake: &Fake, id: &str) -> usize {
    let path = format!("/api/v1/namespaces/{NS}/pods/ws-{id}");
    fake.with(|s| s.created.iter().filter(|p| **p == path).count())
}

async fn replicas(admin: &str, fake: &Fake, dir: &std::path::Path) -> (TestApp, TestApp) {
    let url = fake
        .serve_http()
        .await
        .expect("the fake API server listens");
    let kubeconfig = dir.join("kubeconfig");
    Fake::kubeconfig(&url, &kubeconfig).unwrap();
    let database = fresh_database(admin);
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let flags = [
        "--database-url",
        database.as_str(),
        "--backend",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.as_str(),
        "--k8s-namespace",
        NS,
        "--container-image",
        "localhost/holdfast-runtime:test",
        "--public-url",
        "http://holdfast.holdfast.svc:7420",
        "--restart-backoff",
        "200ms",
    ];
    let a = TestApp::spawn_with(&flags).await;
    let b = TestApp::spawn_with(&flags).await;
    (a, b)
}

fn body(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "runtime": { "command": ["sh", "-c", "exec sleep 100000"] },
        "compute": { "data_persistence": "persist" },
    })
}

#[tokio::test]
async fn two_replicas_on_one_namespace_run_a_workspace_as_one_pod() {
    let Some(admin) = postgres() else { return };
    let fake = Fake::start().1;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = replicas(&admin, &fake, dir.path()).await;
    let ws = a.create_online_workspace(&body("shared")).await;
    let id = id_of(&ws);
    assert_eq!(ws["isolation"], "pod", "{ws}");
    let seen = b.wait_online(&id).await;
    assert_eq!(seen["instance_id"], ws["instance_id"]);
    // Both replicas reconcile for a while: still one Pod, made once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = pods(&fake);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0]["metadata"]["name"], format!("ws-{id}"));
    assert!(now[0]["metadata"].get("ownerReferences").is_none());
    assert_eq!(pod_creates(&fake, &id), 1);
    // A restart through the other replica replaces the Pod: still one.
    b.restart_workspace(&id).await.expect_status(200);
    let after = a.wait_online(&id).await;
    assert_ne!(after["instance_id"], ws["instance_id"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods(&fake).len(), 1);
    assert_eq!(
        pod_creates(&fake, &id),
        2,
        "one Pod per start, not per replica"
    );
    // The claim was made once and never deleted.
    let log = fake.take_log();
    assert!(
        !log.iter()
            .any(|l| l.starts_with("DELETE") && l.contains("persistentvolumeclaims")),
        "{log:?}"
    );
    assert!(
        fake.object(&format!(
            "/api/v1/namespaces/{NS}/persistentvolumeclaims/ws-{id}"
        ))
        .is_some()
    );
}

#[tokio::test]
async fn a_killed_replicas_workspace_runs_on_and_the_other_takes_it_over_without_a_second_pod() {
    let Some(admin) = postgres() else { return };
    let fake = Fake::start().1;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = replicas(&admin, &fake, dir.path()).await;
    let ws = a.create_online_workspace(&body("survivor")).await;
    let id = id_of(&ws);
    let before = pods(&fake);
    assert_eq!(before.len(), 1);
    let uid = before[0]["metadata"]["uid"].clone();
    fake.take_log();
    kill_9(a.server_pid());
    // The Pod is the cluster's: it runs on, and the surviving replica
    // keeps the workspace online on it (no second Pod, no new instance).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = b.wait_online(&id).await;
    assert_eq!(seen["instance_id"], ws["instance_id"], "{seen}");
    assert_eq!(pods(&fake)[0]["metadata"]["uid"], uid, "the same Pod");
    assert_eq!(pod_creates(&fake, &id), 1);
    // The survivor acts on it: a pause deletes the Pod (with its uid), the
    // claim stays; a resume makes exactly one new Pod on the same claim.
    b.post_json(&format!("/workspaces/{id}/pause"), &json!({}))
        .await
        .expect_status(200);
    let now = pods(&fake);
    assert!(now.is_empty(), "{now:?}");
    b.post_json(&format!("/workspaces/{id}/resume"), &json!({}))
        .await
        .expect_status(200);
    b.wait_online(&id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = pods(&fake);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0]["metadata"]["uid"], uid);
    let log = fake.take_log();
    assert_eq!(
        pod_creates(&fake, &id),
        2,
        "the first start and the resume: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("DELETE") && l.contains("persistentvolumeclaims"))
    );
}

/// A pass where a test may pick its own backend: the plain one and the
/// PostgreSQL one (the remote and container passes add backend flags of
/// their own that clash).
fn own_backend_pass() -> bool {
    let ok = !(crate::helpers::remote_mode() || crate::helpers::container_mode());
    if !ok {
        eprintln!(
            "skipping in this pass: the kubernetes reason tests choose their own backend and control plane (they run in the plain and PostgreSQL passes)"
        );
    }
    ok
}

/// The flags of `--backend kubernetes` against the fake served at `url`.
async fn kubernetes_flags(fake: &Fake, dir: &std::path::Path) -> Vec<String> {
    let url = fake
        .serve_http()
        .await
        .expect("the fake API server listens");
    let kubeconfig = dir.join("kubeconfig");
    Fake::kubeconfig(&url, &kubeconfig).unwrap();
    [
        "--backend",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--k8s-namespace",
        NS,
        "--container-image",
        "localhost/holdfast-runtime:test",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The platform's own flags for these tests: a short provision deadline
/// (the reason is seen well before it, from the Pod's watch and the
/// reconciler's looks at a held instance, not from the 60 s resync).
const REASON_FLAGS: [&str; 2] = ["--provision-timeout", "8s"];

const INSUFFICIENT: &str = "0/3 nodes are available: 3 Insufficient memory.";

/// A Pod no node can take: the workspace is `provisioning` with the
/// scheduler's reason in `status_reason`, fails at the provision deadline
/// with that reason in `failure`, and once a node can take it a restart
/// runs it, `online` with no reason left.
async fn a_pending_pods_reason_reaches_the_workspace(app: &TestApp, fake: &Fake) {
    fake.with(|s| s.unschedulable = Some(("Unschedulable".to_owned(), INSUFFICIENT.to_owned())));
    let created = app
        .create_workspace(&body("unschedulable"))
        .await
        .expect_status(201);
    let id = id_of(&created);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let held = loop {
        let ws = app.workspace(&id).await;
        if !ws["status_reason"].is_null() {
            break ws;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status_reason within 15 s: {ws}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        held["status_reason"],
        json!({
            "kind": "unschedulable",
            "message": format!("not scheduled: no node can take it: {INSUFFICIENT}"),
        }),
        "{held}"
    );
    assert_eq!(held["status"], "provisioning", "not online: {held}");
    assert_eq!(held["failure"], serde_json::Value::Null);
    // The listing shows the same, and so does the canvas's Details.
    let listed = app.list_workspaces().await;
    let mine = listed.iter().find(|w| w["id"] == id.as_str()).unwrap();
    assert_eq!(mine["status_reason"]["kind"], "unschedulable");
    let session = crate::secrets::sign_in(app, crate::helpers::ADMIN_TOKEN).await;
    let panel = crate::secrets::browser()
        .get(app.url(&format!("/canvas/panel/{id}")))
        .header(
            reqwest::header::COOKIE,
            format!("holdfast_session={session}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(panel.status().as_u16(), 200);
    let panel = panel.text().await.unwrap();
    assert!(
        panel.contains("What holds it")
            && panel.contains("not scheduled: no node can take it: 0/3 nodes are available"),
        "the panel says what holds the workspace: {panel}"
    );
    // The provision deadline fails it, saying why.
    let failed = app.wait_status(&id, "failed").await;
    assert_eq!(
        failed["failure"],
        format!(
            "it did not come online within 8s: not scheduled: no node can take it: {INSUFFICIENT}"
        ),
        "{failed}"
    );
    assert_eq!(failed["status_reason"]["kind"], "unschedulable");
    // A node can take it now: a restart runs it, and nothing holds it.
    fake.with(|s| s.unschedulable = None);
    app.restart_workspace(&id).await.expect_status(200);
    let online = app.wait_online(&id).await;
    assert_eq!(online["status_reason"], serde_json::Value::Null, "{online}");
    assert_eq!(online["failure"], serde_json::Value::Null, "{online}");
}

#[tokio::test]
async fn a_pending_pods_reason_shows_on_the_workspace() {
    if !own_backend_pass() {
        return;
    }
    let fake = Fake::start().1;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = kubernetes_flags(&fake, dir.path()).await;
    flags.extend(REASON_FLAGS.iter().map(|s| (*s).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = TestApp::spawn_with(&flags).await;
    a_pending_pods_reason_reaches_the_workspace(&app, &fake).await;
}

/// The same through a remote control plane: `cp serve` on the Kubernetes
/// backend carries the reason in its status answer.
#[tokio::test]
async fn a_pending_pods_reason_shows_through_a_remote_control_plane() {
    if !own_backend_pass() {
        return;
    }
    let fake = Fake::start().1;
    let dir = tempfile::tempdir().unwrap();
    let flags = kubernetes_flags(&fake, dir.path()).await;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (cp, tokens) = CpServer::start_with_tenants(&["platform"], &flags);
    let app = TestApp::spawn_on_cp(&cp, &tokens[0], &REASON_FLAGS).await;
    a_pending_pods_reason_reaches_the_workspace(&app, &fake).await;
}

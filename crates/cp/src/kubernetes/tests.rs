//! The Kubernetes backend against a fake API server (`fake.rs`, over
//! kube-rs's `tower-test` mock): every flow of SPEC §14 and the API
//! server's error answers, with the requests each one makes.

use super::fake::{Fake, Fault};
use super::manifest::{claim_name, pod_name};
use super::*;
use holdfast_domain::{Tier, VolumeState};
use serde_json::Value;
use std::collections::BTreeMap;

const NS: &str = "holdfast";

fn ws() -> Uuid {
    Uuid::from_u128(0x1111)
}

fn org() -> Uuid {
    Uuid::from_u128(0x2222)
}

fn settings() -> KubernetesSettings {
    let mut s = KubernetesSettings::new(
        NS.to_owned(),
        None,
        ImageRef::parse("localhost/holdfast-runtime:test").unwrap(),
    );
    s.bind_wait = Duration::from_millis(600);
    s.gone_wait = Duration::from_millis(600);
    s.helper_wait = Duration::from_millis(600);
    s
}

fn backend() -> (KubernetesBackend, Fake) {
    let (client, fake) = Fake::start();
    (
        KubernetesBackend::with_client(client, settings(), false),
        fake,
    )
}

/// Another backend on the same cluster: a restarted or second replica.
fn replica(fake: &Fake) -> KubernetesBackend {
    KubernetesBackend::with_client(fake.client(), settings(), false)
}

fn spawn_spec(mode: DataPersistence, instance: &str) -> Spawn {
    Spawn {
        workspace_id: ws(),
        instance_id: instance.to_owned(),
        argv: vec!["sh".to_owned(), "-c".to_owned(), "sleep 1000".to_owned()],
        env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        mode,
        tier: Tier::from_stored(2),
        org_id: org(),
        volume_size_gb: Some(5),
    }
}

fn pod_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods/{}", pod_name(ws()))
}

fn claim_path() -> String {
    format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims/{}",
        claim_name(ws())
    )
}

fn pv_path(fake: &Fake) -> String {
    let claim = fake.object(&claim_path()).expect("a claim");
    format!(
        "/api/v1/persistentvolumes/{}",
        claim["spec"]["volumeName"].as_str().expect("bound")
    )
}

fn volume_row() -> VolumeRow {
    VolumeRow {
        id: Uuid::from_u128(0x3333),
        workspace_id: ws(),
        state: VolumeState::Erasing,
        bytes: 42,
        size_gb: Some(5),
        retain_until: None,
        erase_after: None,
        erased_at: None,
        bytes_erased: None,
        erased_by: None,
        reason: None,
        created_at: 0,
        updated_at: 0,
    }
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap().to_owned()
}

/// The log without the namespace prefix, for readable expectations.
fn short(log: &[String]) -> Vec<String> {
    log.iter()
        .map(|l| {
            l.replace(&format!("/api/v1/namespaces/{NS}/"), "")
                .replace("/api/v1/", "")
                .replace(&ws().to_string(), "ID")
        })
        .collect()
}

#[tokio::test]
async fn a_persist_start_makes_the_claim_retains_its_pv_then_runs_the_pod() {
    let (k, fake) = backend();
    let got = k
        .spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    assert_eq!(got.isolation, Isolation::Pod);
    expect_test::expect![[r#"
        [
            "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "GET persistentvolumeclaims/ws-ID",
            "GET persistentvolumes",
            "POST persistentvolumeclaims",
            "POST pods",
            "GET persistentvolumes/pvc-4",
            "PATCH persistentvolumes/pvc-4",
        ]
    "#]]
    .assert_debug_eq(&short(&fake.take_log()));
    let pv = fake.object(&pv_path(&fake)).unwrap();
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        pv["metadata"]["labels"]["holdfast.io/workspace"],
        ws().to_string()
    );
    let pod = fake.object(&pod_path()).unwrap();
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        claim_name(ws())
    );
    assert_eq!(
        pod["metadata"]["annotations"]["holdfast.io/instance"],
        "i-1"
    );
    assert!(matches!(
        k.state(ws(), "i-1").await.unwrap(),
        ProcessState::Running
    ));
    assert!(matches!(
        k.state(ws(), "i-0").await.unwrap(),
        ProcessState::Unknown
    ));
    assert!(k.has_data(ws(), DataKind::Volume).await);
}

#[tokio::test]
async fn a_restarted_replica_adopts_the_running_pod_of_the_same_config() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let before = uid(&fake.object(&pod_path()).unwrap());
    // The control plane restarts: nothing is reaped, the Pod runs on.
    let k2 = replica(&fake);
    assert_eq!(k2.reap_leftovers().await.unwrap(), 0);
    k2.spawn(spawn_spec(DataPersistence::Persist, "i-2"), None)
        .await
        .unwrap();
    let pod = fake.object(&pod_path()).unwrap();
    assert_eq!(uid(&pod), before, "the same Pod, adopted");
    assert_eq!(
        pod["metadata"]["annotations"]["holdfast.io/instance"],
        "i-2"
    );
    assert!(matches!(
        k2.state(ws(), "i-2").await.unwrap(),
        ProcessState::Running
    ));
    assert!(matches!(
        k2.state(ws(), "i-1").await.unwrap(),
        ProcessState::Unknown
    ));
    assert!(!fake.take_log().iter().any(|l| l.starts_with("DELETE")));
}

#[tokio::test]
async fn a_config_change_recreates_the_pod_on_the_same_claim() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let pod_before = uid(&fake.object(&pod_path()).unwrap());
    let claim_before = uid(&fake.object(&claim_path()).unwrap());
    fake.take_log();
    let mut changed = spawn_spec(DataPersistence::Persist, "i-2");
    changed.tier = Tier::from_stored(3);
    k.spawn(changed, None).await.unwrap();
    let log = short(&fake.take_log());
    let pod = fake.object(&pod_path()).unwrap();
    assert_ne!(uid(&pod), pod_before, "a new Pod");
    assert_eq!(uid(&fake.object(&claim_path()).unwrap()), claim_before);
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "1024Mi"
    );
    let delete = log.iter().position(|l| l == "DELETE pods/ws-ID").unwrap();
    let create = log.iter().rposition(|l| l == "POST pods").unwrap();
    assert!(delete < create, "{log:?}");
    assert!(
        !log.iter()
            .any(|l| l.contains("DELETE persistentvolumeclaims"))
    );
}

#[tokio::test]
async fn a_stop_deletes_the_pod_and_never_the_claim() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    // Another instance's stop is not this Pod's.
    k.stop(ws(), Some("i-0")).await.unwrap();
    assert!(fake.object(&pod_path()).is_some());
    k.stop(ws(), Some("i-1")).await.unwrap();
    assert!(fake.object(&pod_path()).is_none());
    assert!(fake.object(&claim_path()).is_some());
    assert!(fake.object(&pv_path(&fake)).is_some());
    // Stopping what is not running succeeds.
    k.stop(ws(), Some("i-1")).await.unwrap();
    k.stop(ws(), None).await.unwrap();
    assert!(
        !fake
            .take_log()
            .iter()
            .any(|l| l.contains("DELETE") && l.contains("persistentvolume"))
    );
}

#[tokio::test]
async fn a_restore_starts_a_new_pod_on_the_retained_claim() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let claim_before = uid(&fake.object(&claim_path()).unwrap());
    // Delete without erase: a stop; the record goes retained in the store.
    k.stop(ws(), Some("i-1")).await.unwrap();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-2"), None)
        .await
        .unwrap();
    assert_eq!(uid(&fake.object(&claim_path()).unwrap()), claim_before);
    let log = short(&fake.take_log());
    assert_eq!(
        log.iter()
            .filter(|l| *l == "POST persistentvolumeclaims")
            .count(),
        1
    );
}

#[tokio::test]
async fn erase_deletes_the_pod_then_sets_the_pv_to_delete_then_deletes_the_claim() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let pv = pv_path(&fake);
    fake.take_log();
    assert_eq!(k.erase_volume(&volume_row()).await.unwrap(), 42);
    expect_test::expect![[r#"
        [
            "GET pods",
            "DELETE pods/ws-ID",
            "GET pods/ws-ID",
            "GET persistentvolumeclaims/ws-ID",
            "GET persistentvolumes",
            "PATCH persistentvolumes/pvc-4",
            "DELETE persistentvolumeclaims/ws-ID",
            "GET persistentvolumes/pvc-4",
        ]
    "#]]
    .assert_debug_eq(&short(&fake.take_log()));
    assert!(fake.object(&pod_path()).is_none());
    assert!(fake.object(&claim_path()).is_none());
    assert!(
        fake.object(&pv).is_none(),
        "the disk is reclaimed, not leaked"
    );
    // Resumed after it finished: nothing left to do, and no error.
    k.erase_volume(&volume_row()).await.unwrap();
}

#[tokio::test]
async fn the_claim_delete_carries_the_uid_it_was_checked_with() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    // A claim replaced under the same name after the erase read it.
    let claim = fake.object(&claim_path()).unwrap();
    let mut stale: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
    stale.metadata.uid = Some("uid-of-an-older-claim".to_owned());
    let err = k.delete_claim(&stale).await.unwrap_err();
    assert!(format!("{err:#}").contains("Precondition"), "{err:#}");
    assert!(fake.object(&claim_path()).is_some());
}

#[tokio::test]
async fn switching_to_ephemeral_keeps_the_claim_and_its_erase_spares_the_ephemeral_pod() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-2"), None)
        .await
        .unwrap();
    let pod = fake.object(&pod_path()).unwrap();
    assert!(pod["spec"]["volumes"][0]["emptyDir"].is_object());
    assert_eq!(pod["metadata"]["labels"]["holdfast.io/data"], "ephemeral");
    assert!(fake.object(&claim_path()).is_some(), "the claim is kept");
    assert!(k.has_data(ws(), DataKind::Scratch).await);
    // The retained claim's erase does not stop the ephemeral workspace.
    let ephemeral_uid = uid(&pod);
    k.erase_volume(&volume_row()).await.unwrap();
    assert!(fake.object(&claim_path()).is_none());
    assert_eq!(uid(&fake.object(&pod_path()).unwrap()), ephemeral_uid);
    // Every ephemeral start is a new Pod (new, empty data).
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-3"), None)
        .await
        .unwrap();
    assert_ne!(uid(&fake.object(&pod_path()).unwrap()), ephemeral_uid);
}

/// A crash (here: the API server failing for good) at every request of an
/// erase, then a resumed erase: it finishes, and at no point is the claim
/// deleted before its PV is set to Delete.
#[tokio::test]
async fn an_erase_interrupted_at_any_request_resumes_and_never_leaks_the_disk() {
    for step in 0..8 {
        let (k, fake) = backend();
        k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
            .await
            .unwrap();
        let pv = pv_path(&fake);
        fake.take_log();
        // Fail the step-th request onwards (every retry of it too): the
        // happy erase makes 8 requests, so each step interrupts it.
        fake.with(|s| s.fail_after = Some(step));
        let first = k.erase_volume(&volume_row()).await;
        fake.with(|s| s.fail_after = None);
        assert!(first.is_err(), "step {step} did not interrupt the erase");
        let resumed = k.erase_volume(&volume_row()).await;
        assert!(
            resumed.is_ok(),
            "step {step}: {resumed:?} (first: {first:?})"
        );
        assert!(fake.object(&claim_path()).is_none(), "step {step}");
        assert!(fake.object(&pv).is_none(), "step {step}: the PV leaked");
        let log = short(&fake.take_log());
        let patch = log
            .iter()
            .position(|l| l.starts_with("PATCH persistentvolumes"));
        let delete = log
            .iter()
            .position(|l| l.starts_with("DELETE persistentvolumeclaims"));
        if let Some(delete) = delete {
            assert!(patch.is_some_and(|p| p < delete), "step {step}: {log:?}");
        }
    }
}

#[tokio::test]
async fn a_start_interrupted_after_the_claim_resumes_on_that_claim() {
    let (k, fake) = backend();
    fake.fault(Fault::new("POST", "/pods", 503, "ServiceUnavailable").times(4));
    let err = k
        .spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, CpError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("tried 4 times"), "{err}");
    let claim = uid(&fake.object(&claim_path()).unwrap());
    k.spawn(spawn_spec(DataPersistence::Persist, "i-2"), None)
        .await
        .unwrap();
    assert_eq!(uid(&fake.object(&claim_path()).unwrap()), claim);
    assert!(fake.object(&pod_path()).is_some());
}

#[tokio::test]
async fn a_5xx_is_retried_with_backoff() {
    let (k, fake) = backend();
    fake.fault(Fault::new("POST", "/pods", 500, "InternalError").times(2));
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap();
    let log = short(&fake.take_log());
    assert_eq!(
        log.iter().filter(|l| *l == "POST pods").count(),
        3,
        "{log:?}"
    );
}

#[tokio::test]
async fn errors_of_the_api_server_become_clear_control_plane_errors() {
    let cases: Vec<(Fault, &str)> = vec![
        (
            Fault::new("POST", "/pods", 404, "NotFound")
                .message("namespaces \"holdfast\" not found"),
            "Unavailable: creating the workspace's Pod: the namespace \"holdfast\" does not exist",
        ),
        (
            Fault::new("POST", "/pods", 422, "Invalid")
                .message("Pod \"ws-x\" is invalid: spec.containers[0].image: Required value"),
            "BadRequest: creating the workspace's Pod: the API server refused the object",
        ),
        (
            Fault::new("POST", "/pods", 403, "Forbidden").message(
                "pods \"ws-x\" is forbidden: exceeded quota: compute, requested: memory=512Mi",
            ),
            "Conflict: creating the workspace's Pod: the namespace \"holdfast\" is over its ResourceQuota",
        ),
        (
            Fault::new("POST", "/pods", 403, "Forbidden")
                .message("pods is forbidden: User \"system:serviceaccount:holdfast:holdfast\" cannot create resource \"pods\""),
            "Conflict: creating the workspace's Pod: holdfast's service account lacks a permission",
        ),
        (
            Fault::new("POST", "/pods", 500, "InternalError").times(10),
            "Unavailable: creating the workspace's Pod: the Kubernetes API server failed (500), tried 4 times",
        ),
    ];
    for (fault, want) in cases {
        let (k, fake) = backend();
        fake.fault(fault);
        let err = k
            .spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
            .await
            .unwrap_err();
        let kind = match &err {
            CpError::Unavailable(_) => "Unavailable",
            CpError::BadRequest(_) => "BadRequest",
            CpError::Conflict(_) => "Conflict",
            _ => "Other",
        };
        let got = format!("{kind}: {err}");
        assert!(got.starts_with(want), "{got}\n  wanted: {want}");
        assert!(fake.object(&pod_path()).is_none());
    }
}

#[tokio::test]
async fn a_persist_start_is_refused_when_pvs_cannot_be_patched_to_retain() {
    let (k, fake) = backend();
    fake.with(|s| s.may_patch_pvs = false);
    let err = k
        .spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, CpError::Conflict(_)));
    assert!(
        err.to_string()
            .contains("cannot set their reclaim policy to Retain"),
        "{err}"
    );
    // Nothing was made.
    assert!(fake.object(&claim_path()).is_none());
    assert!(fake.object(&pod_path()).is_none());
    // Ephemeral workspaces need no PV and still start.
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-2"), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_conflict_on_the_uid_precondition_leaves_the_newer_pod_alone() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    fake.fault(Fault::new("DELETE", "/pods/", 409, "Conflict"));
    // The stop sees its Pod, but the delete finds another uid there.
    k.stop(ws(), Some("i-1")).await.unwrap();
    assert!(fake.object(&pod_path()).is_some());
}

#[tokio::test]
async fn a_claim_that_binds_late_gets_its_pv_retained_by_the_sweep_listing() {
    let (k, fake) = backend();
    fake.with(|s| s.bind_at_once = false);
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    // The provisioner binds it after the start gave up waiting.
    let mut claim = fake.object(&claim_path()).unwrap();
    claim["spec"]["volumeName"] = serde_json::json!("pv-late");
    fake.put(&claim_path(), claim);
    fake.put(
        "/api/v1/persistentvolumes/pv-late",
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-late", "uid": "u-late"},
            "spec": {"persistentVolumeReclaimPolicy": "Delete"}, "status": {"phase": "Bound"}}),
    );
    assert_eq!(k.volume_workspaces().await.unwrap(), vec![ws()]);
    let pv = fake.object("/api/v1/persistentvolumes/pv-late").unwrap();
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
}

#[tokio::test]
async fn labelled_claims_and_released_pvs_the_store_does_not_know_are_found() {
    let (k, fake) = backend();
    let other = Uuid::from_u128(0x4444);
    let stray = Uuid::from_u128(0x5555);
    let labels = |id: Uuid| serde_json::json!({ "holdfast.io/workspace": id.to_string(), "holdfast.io/kind": "data" });
    fake.put(
        &format!(
            "/api/v1/namespaces/{NS}/persistentvolumeclaims/{}",
            claim_name(other)
        ),
        serde_json::json!({ "metadata": { "name": claim_name(other), "labels": labels(other) },
                            "spec": {} }),
    );
    // Labelled by hand under another name: not taken for that workspace's.
    fake.put(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/mine"),
        serde_json::json!({ "metadata": { "name": "mine", "labels": labels(ws()) }, "spec": {} }),
    );
    fake.put(
        "/api/v1/persistentvolumes/pv-stray",
        serde_json::json!({ "metadata": { "name": "pv-stray", "labels": labels(stray) },
                            "spec": { "persistentVolumeReclaimPolicy": "Retain" },
                            "status": { "phase": "Released" } }),
    );
    let mut found = k.volume_workspaces().await.unwrap();
    found.sort();
    assert_eq!(found, vec![other, stray]);
    // The stray PV's erase (after its retention) reclaims it.
    let row = VolumeRow {
        workspace_id: stray,
        ..volume_row()
    };
    k.erase_volume(&row).await.unwrap();
    assert!(fake.object("/api/v1/persistentvolumes/pv-stray").is_none());
}

type Op = Box<dyn Fn(&KubernetesBackend) -> futures_util::future::BoxFuture<'_, ()>>;

/// A table over every operation but the erase: none of them sends a
/// DELETE for a claim, whatever the cluster holds. The erase (the positive
/// control) does.
#[tokio::test]
async fn no_operation_but_the_erase_deletes_a_claim() {
    let (k, fake, exec) = backend_with_exec();
    let data = some_data();
    exec.data(&claim_name(ws()), data.path());
    exec.data(&pod_name(ws()), data.path());
    let ops: Vec<(&str, Op)> = vec![
        (
            "spawn persist",
            Box::new(|k| {
                Box::pin(async move {
                    k.spawn(spawn_spec(DataPersistence::Persist, "a"), None)
                        .await
                        .unwrap();
                })
            }),
        ),
        (
            "spawn again",
            Box::new(|k| {
                Box::pin(async move {
                    k.spawn(spawn_spec(DataPersistence::Persist, "b"), None)
                        .await
                        .unwrap();
                })
            }),
        ),
        (
            "spawn ephemeral",
            Box::new(|k| {
                Box::pin(async move {
                    k.spawn(spawn_spec(DataPersistence::Ephemeral, "c"), None)
                        .await
                        .unwrap();
                })
            }),
        ),
        (
            "stop",
            Box::new(|k| {
                Box::pin(async move {
                    k.stop(ws(), Some("c")).await.unwrap();
                })
            }),
        ),
        (
            "stop any",
            Box::new(|k| {
                Box::pin(async move {
                    k.stop(ws(), None).await.unwrap();
                })
            }),
        ),
        (
            "state",
            Box::new(|k| {
                Box::pin(async move {
                    k.state(ws(), "c").await.unwrap();
                })
            }),
        ),
        (
            "has_instance",
            Box::new(|k| {
                Box::pin(async move {
                    k.has_instance(ws()).await;
                })
            }),
        ),
        (
            "reap_leftovers",
            Box::new(|k| {
                Box::pin(async move {
                    k.reap_leftovers().await.unwrap();
                })
            }),
        ),
        (
            "stop_all",
            Box::new(|k| {
                Box::pin(async move {
                    k.stop_all().await;
                })
            }),
        ),
        (
            "data_bytes",
            Box::new(|k| {
                Box::pin(async move {
                    k.data_bytes(ws(), DataKind::Volume).await.unwrap();
                })
            }),
        ),
        (
            "has_data",
            Box::new(|k| {
                Box::pin(async move {
                    k.has_data(ws(), DataKind::Volume).await;
                })
            }),
        ),
        (
            "export",
            Box::new(|k| {
                Box::pin(async move {
                    let mut s = k.export(ws(), DataKind::Volume).await.unwrap();
                    while s.next().await.is_some() {}
                    // The helper's removal runs after the stream's end.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                })
            }),
        ),
        (
            "export scratch",
            Box::new(|k| {
                Box::pin(async move {
                    let _ = k.export(ws(), DataKind::Scratch).await;
                    let _ = k.data_bytes(ws(), DataKind::Scratch).await.unwrap();
                })
            }),
        ),
        (
            "volume_workspaces",
            Box::new(|k| {
                Box::pin(async move {
                    k.volume_workspaces().await.unwrap();
                })
            }),
        ),
        (
            "spawn persist after all",
            Box::new(|k| {
                Box::pin(async move {
                    k.spawn(spawn_spec(DataPersistence::Persist, "d"), None)
                        .await
                        .unwrap();
                })
            }),
        ),
    ];
    let claim_deletes = |log: &[String]| {
        log.iter()
            .filter(|l| l.starts_with("DELETE") && l.contains("/persistentvolumeclaims/"))
            .count()
    };
    for (name, op) in &ops {
        op(&k).await;
        let log = fake.take_log();
        assert_eq!(claim_deletes(&log), 0, "{name} deleted a claim: {log:?}");
    }
    assert!(fake.object(&claim_path()).is_some());
    k.erase_volume(&volume_row()).await.unwrap();
    assert_eq!(claim_deletes(&fake.take_log()), 1, "the positive control");
}

#[tokio::test]
async fn nothing_holdfast_creates_has_owner_references() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let other = Spawn {
        workspace_id: Uuid::from_u128(9),
        ..spawn_spec(DataPersistence::Ephemeral, "i-2")
    };
    k.spawn(other, None).await.unwrap();
    let paths = fake.paths();
    assert!(paths.len() >= 4, "{paths:?}");
    for path in paths {
        let obj = fake.object(&path).unwrap();
        assert!(
            obj["metadata"].get("ownerReferences").is_none(),
            "{path} has ownerReferences"
        );
    }
    // The builders, directly.
    let image = ImageRef::parse("localhost/x:1").unwrap();
    let built = [
        serde_json::to_value(manifest::workspace_pod(
            &spawn_spec(DataPersistence::Persist, "i"),
            org(),
            &image,
        ))
        .unwrap(),
        serde_json::to_value(manifest::workspace_claim(ws(), org(), None, None)).unwrap(),
        serde_json::to_value(manifest::helper_pod(ws(), org(), &image, Uuid::nil(), None)).unwrap(),
    ];
    for obj in built {
        assert!(obj["metadata"].get("ownerReferences").is_none());
        assert!(obj["metadata"]["labels"]["holdfast.io/workspace"].is_string());
        assert!(obj["metadata"]["labels"]["holdfast.io/org"].is_string());
    }
}

/// The watcher relists after its watch expires (410 Gone) and reports the
/// Pod that finished meanwhile as an exit; the cache answers `state`.
#[tokio::test]
async fn the_watcher_relists_after_410_and_reports_exits() {
    let (client, fake) = Fake::start();
    let k = KubernetesBackend::with_client(client, settings(), true);
    let mut exits = k.exits().expect("the watcher reports exits");
    fake.with(|s| s.expire_next_watch = true);
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap();
    let mut pod = fake.object(&pod_path()).unwrap();
    pod["status"]["phase"] = serde_json::json!("Failed");
    fake.put(&pod_path(), pod);
    let got = tokio::time::timeout(Duration::from_secs(20), exits.recv())
        .await
        .expect("an exit within 20 s")
        .unwrap();
    assert_eq!(got, ws());
    let log = fake.take_log();
    let lists = log
        .iter()
        .filter(|l| l.starts_with("GET") && l.ends_with("/pods"))
        .count();
    assert!(lists >= 2, "a relist after the 410: {log:?}");
    assert!(matches!(
        k.state(ws(), "i-1").await.unwrap(),
        ProcessState::Exited(_)
    ));
}

/// Every call in `src` that deletes through the API (`.delete(`,
/// `.delete_collection(`, `delete_claim(`), as `(call, enclosing fn)`,
/// comments skipped.
fn delete_sites(src: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = src.lines().collect();
    let mut sites = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for call in [".delete(", ".delete_collection(", "delete_claim("] {
            let Some(at) = code.find(call) else { continue };
            if code.contains("fn delete_claim") {
                continue;
            }
            let receiver: String = code[..at]
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let enclosing = lines[..i]
                .iter()
                .rev()
                .find_map(|l| {
                    let at = l.find("fn ")?;
                    let head = l[..at].trim();
                    head.split_whitespace()
                        .all(|w| matches!(w, "pub" | "async" | "pub(crate)"))
                        .then(|| {
                            l[at + 3..]
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect::<String>()
                        })
                })
                .unwrap_or_default();
            sites.push((format!("{receiver}{call}"), enclosing));
            break;
        }
    }
    sites
}

/// **Architecture Invariant** (module doc): the only claim delete is in
/// `delete_claim`, and only `erase_volume` calls it; every other delete is
/// of a Pod.
#[test]
fn only_the_erase_reaches_the_claim_delete() {
    let sites = delete_sites(include_str!("../kubernetes.rs"));
    expect_test::expect![[r#"
        [
            (
                "pods.delete(",
                "delete_pod_in",
            ),
            (
                "claims.delete(",
                "delete_claim",
            ),
            (
                "self.delete_claim(",
                "erase_volume",
            ),
        ]
    "#]]
    .assert_debug_eq(&sites);
    // The positive control: a stop that deletes a claim is caught.
    let bad = "async fn stop(&self) {\n    self.delete_claim(&c).await?;\n    claims.delete(&n, &p).await;\n}\n";
    assert_eq!(
        delete_sites(bad),
        vec![
            ("self.delete_claim(".to_owned(), "stop".to_owned()),
            ("claims.delete(".to_owned(), "stop".to_owned()),
        ]
    );
}

/// The golden manifests (`deploy/kubernetes/golden/`) are what the
/// builders make: CI validates them with `kubernetes-validate --strict`
/// and runs the Pod and claim with `podman kube play`. `UPDATE_EXPECT=1`
/// rewrites them.
#[test]
fn golden_manifests() {
    let image = ImageRef::parse("localhost/holdfast-runtime:test").unwrap();
    let mut persist = spawn_spec(
        DataPersistence::Persist,
        "00000000-0000-0000-0000-00000000beef",
    );
    persist.argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo kept >> /data/log; cat /data/log; exec sleep 1000".to_owned(),
    ];
    let ephemeral = spawn_spec(
        DataPersistence::Ephemeral,
        "00000000-0000-0000-0000-00000000beef",
    );
    let yaml = |v: serde_json::Value| manifest::to_yaml(&v);
    let pod =
        |s: &Spawn| yaml(serde_json::to_value(manifest::workspace_pod(s, org(), &image)).unwrap());
    expect_test::expect_file!["../../../../deploy/kubernetes/golden/pod-persist.yaml"]
        .assert_eq(&pod(&persist));
    expect_test::expect_file!["../../../../deploy/kubernetes/golden/pod-ephemeral.yaml"]
        .assert_eq(&pod(&ephemeral));
    expect_test::expect_file!["../../../../deploy/kubernetes/golden/claim.yaml"].assert_eq(&yaml(
        serde_json::to_value(manifest::workspace_claim(ws(), org(), Some(1), None)).unwrap(),
    ));
    expect_test::expect_file!["../../../../deploy/kubernetes/golden/helper-pod.yaml"].assert_eq(
        &yaml(
            serde_json::to_value(manifest::helper_pod(ws(), org(), &image, Uuid::nil(), None))
                .unwrap(),
        ),
    );
}

#[test]
fn tiers_become_requests_and_limits() {
    let got: Vec<String> = (1..=4)
        .map(|t| manifest::tier_resources(Tier::from_stored(t)).to_string())
        .collect();
    expect_test::expect![[r#"
        [
            "{\"limits\":{\"memory\":\"256Mi\"},\"requests\":{\"cpu\":\"500m\",\"memory\":\"256Mi\"}}",
            "{\"limits\":{\"memory\":\"512Mi\"},\"requests\":{\"cpu\":\"1000m\",\"memory\":\"512Mi\"}}",
            "{\"limits\":{\"memory\":\"1024Mi\"},\"requests\":{\"cpu\":\"2000m\",\"memory\":\"1024Mi\"}}",
            "{\"limits\":{\"memory\":\"2048Mi\"},\"requests\":{\"cpu\":\"4000m\",\"memory\":\"2048Mi\"}}",
        ]
    "#]]
    .assert_debug_eq(&got);
}

#[test]
fn the_config_hash_ignores_the_instance_and_sees_everything_else() {
    let image = ImageRef::parse("localhost/x:1").unwrap();
    let hash = |s: &Spawn| {
        let pod = manifest::workspace_pod(s, org(), &image);
        pod.metadata.annotations.unwrap()[manifest::ANNOTATION_CONFIG_HASH].clone()
    };
    let base = spawn_spec(DataPersistence::Persist, "i-1");
    assert_eq!(
        hash(&base),
        hash(&spawn_spec(DataPersistence::Persist, "i-2"))
    );
    let mut env = base.clone();
    env.env.insert("B".to_owned(), "2".to_owned());
    let mut tier = base.clone();
    tier.tier = Tier::from_stored(4);
    for changed in [env, tier, spawn_spec(DataPersistence::Ephemeral, "i-1")] {
        assert_ne!(hash(&base), hash(&changed));
    }
}

async fn read_all(mut stream: ByteStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn logs_come_from_the_pod_log_api_tail_and_follow_meeting_exactly() {
    let (k, fake) = backend();
    assert!(
        k.logs(ws(), 100, false).await.unwrap().is_none(),
        "no Pod, no log"
    );
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap();
    fake.with(|s| {
        s.pod_log = "first\nsecond\n".to_owned();
        s.pod_log_later = "third\n".to_owned();
    });
    let tail = k.logs(ws(), 7, false).await.unwrap().unwrap();
    assert_eq!(read_all(tail).await, "second\n");
    // A follow sends the tail, then only what comes after it (the fake's
    // follow replays the whole log, which the backend skips).
    let follow = k.logs(ws(), 7, true).await.unwrap().unwrap();
    assert_eq!(read_all(follow).await, "second\nthird\n");
    let whole = k.logs(ws(), 1 << 20, false).await.unwrap().unwrap();
    assert_eq!(read_all(whole).await, "first\nsecond\n");
}

/// A backend whose exec is the fake's in-memory one.
fn backend_with_exec() -> (KubernetesBackend, Fake, Arc<super::fake::FakeExec>) {
    let (k, fake) = backend();
    let exec = super::fake::FakeExec::new(&fake);
    (k.with_exec(exec.clone()), fake, exec)
}

fn some_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("memory")).unwrap();
    std::fs::write(dir.path().join("memory/notes.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join("top"), b"12345678").unwrap();
    dir
}

async fn archive_names(stream: ByteStream) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| {
            String::from_utf8_lossy(&e.unwrap().path_bytes())
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// The helper Pods in the fake now.
fn helpers(fake: &Fake) -> Vec<String> {
    fake.paths()
        .into_iter()
        .filter(|p| p.contains("-helper-"))
        .collect()
}

async fn until_no_helpers(fake: &Fake) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !helpers(fake).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the helper Pod is removed");
}

#[tokio::test]
async fn size_and_export_of_a_stopped_claim_go_through_a_read_only_helper_pod() {
    let (k, fake, exec) = backend_with_exec();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    k.stop(ws(), None).await.unwrap();
    let data = some_data();
    exec.data(&claim_name(ws()), data.path());
    fake.take_log();
    assert_eq!(
        k.data_bytes(ws(), DataKind::Volume).await.unwrap(),
        Some(13)
    );
    let log = short(&fake.take_log());
    assert_eq!(
        log[..3],
        ["GET persistentvolumeclaims/ws-ID", "GET pods", "POST pods"],
        "{log:?}"
    );
    assert!(
        log.last().unwrap().starts_with("DELETE pods/ws-ID-helper-"),
        "{log:?}"
    );
    assert!(helpers(&fake).is_empty());
    let names = archive_names(k.export(ws(), DataKind::Volume).await.unwrap()).await;
    assert_eq!(names, ["memory", "memory/notes.txt", "top"]);
    until_no_helpers(&fake).await;
    let calls = exec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "helper /opt/holdfast/holdfast census /data",
            "helper /opt/holdfast/holdfast archive /data",
        ]
    );
    // Each helper mounted the claim read-only, on no node in particular
    // (nothing else mounted it), with no token.
    for pod in exec.pods.lock().unwrap().iter() {
        assert_eq!(pod["metadata"]["labels"]["holdfast.io/kind"], "helper");
        let vol = &pod["spec"]["volumes"][0]["persistentVolumeClaim"];
        assert_eq!(vol["claimName"], claim_name(ws()));
        assert_eq!(vol["readOnly"], true);
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"],
            true
        );
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert!(pod["spec"].get("nodeName").is_none());
    }
    // The workspace's data is still all there.
    assert!(fake.object(&claim_path()).is_some());
}

#[tokio::test]
async fn a_helper_for_a_claim_in_use_goes_to_the_node_of_the_pod_that_mounts_it() {
    let (k, fake, exec) = backend_with_exec();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let mut pod = fake.object(&pod_path()).unwrap();
    pod["spec"]["nodeName"] = serde_json::json!("node-a");
    fake.put(&pod_path(), pod);
    let data = some_data();
    exec.data(&claim_name(ws()), data.path());
    assert_eq!(
        k.data_bytes(ws(), DataKind::Volume).await.unwrap(),
        Some(13)
    );
    let pods = exec.pods.lock().unwrap().clone();
    assert_eq!(pods[0]["spec"]["nodeName"], "node-a", "RWO: the same node");
    // The running workspace Pod was not touched.
    assert!(fake.object(&pod_path()).is_some());
    assert!(helpers(&fake).is_empty());
}

#[tokio::test]
async fn an_ephemeral_workspace_is_read_in_its_own_pod_and_no_data_is_not_found() {
    let (k, fake, exec) = backend_with_exec();
    // No claim, no Pod: nothing to read, and no helper is made.
    assert_eq!(k.data_bytes(ws(), DataKind::Volume).await.unwrap(), None);
    let err = k.export(ws(), DataKind::Volume).await.err().unwrap();
    assert!(matches!(err, CpError::NotFound(_)), "{err}");
    assert!(!fake.take_log().iter().any(|l| l.starts_with("POST")));
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap();
    let data = some_data();
    exec.data(&pod_name(ws()), data.path());
    fake.take_log();
    assert_eq!(
        k.data_bytes(ws(), DataKind::Scratch).await.unwrap(),
        Some(13)
    );
    let names = archive_names(k.export(ws(), DataKind::Scratch).await.unwrap()).await;
    assert_eq!(names, ["memory", "memory/notes.txt", "top"]);
    assert_eq!(
        exec.calls.lock().unwrap()[0],
        "workspace /opt/holdfast/holdfast census /data"
    );
    // The workspace's Pod runs on; no helper was made.
    assert!(fake.object(&pod_path()).is_some());
    assert!(
        !fake
            .take_log()
            .iter()
            .any(|l| l.starts_with("POST") || l.starts_with("DELETE"))
    );
}

#[tokio::test]
async fn what_an_export_cannot_include_is_a_refusal_and_the_helper_goes() {
    let (k, fake, exec) = backend_with_exec();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let data = some_data();
    let _sock = std::os::unix::net::UnixListener::bind(data.path().join("agent.sock")).unwrap();
    exec.data(&claim_name(ws()), data.path());
    let err = k.export(ws(), DataKind::Volume).await.err().unwrap();
    assert!(matches!(err, CpError::ExportRefused(_)), "{err}");
    assert!(err.to_string().contains("agent.sock"), "{err}");
    until_no_helpers(&fake).await;
}

#[tokio::test]
async fn a_helper_that_cannot_be_scheduled_is_removed_and_says_why() {
    let (k, fake, exec) = backend_with_exec();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    k.stop(ws(), None).await.unwrap();
    exec.data(&claim_name(ws()), some_data().path());
    fake.with(|s| {
        s.unschedulable = Some((
            "Unschedulable".to_owned(),
            "0/3 nodes are available: 3 node(s) had volume node affinity conflict.".to_owned(),
        ))
    });
    let err = k.export(ws(), DataKind::Volume).await.err().unwrap();
    assert!(matches!(err, CpError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().contains("volume node affinity conflict"),
        "{err}"
    );
    assert!(helpers(&fake).is_empty());
    assert!(
        exec.calls.lock().unwrap().is_empty(),
        "no exec in a Pod that never ran"
    );
    let err = k.data_bytes(ws(), DataKind::Volume).await.unwrap_err();
    assert!(err.to_string().contains("did not run within"), "{err}");
    assert!(helpers(&fake).is_empty());
}

fn warning(pod: &str, uid: &str, reason: &str, message: &str) -> CoreEvent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": format!("{pod}.{reason}"), "namespace": NS },
        "involvedObject": { "kind": "Pod", "name": pod, "namespace": NS, "uid": uid },
        "type": "Warning", "reason": reason, "message": message,
    }))
    .unwrap()
}

/// The one mapping ([`classify`]) from what Kubernetes says of a Pod to a
/// typed reason and a sentence naming the cause: one line per case,
/// `reason | message => kind: sentence` (or `none`).
fn check_classify(cases: &[(&str, &str)], want: expect_test::Expect) {
    let got: Vec<String> = cases
        .iter()
        .map(|(reason, message)| {
            let out = match classify(reason, message) {
                Some(r) => format!("{}: {}", r.kind, r.message),
                None => "none".to_owned(),
            };
            format!("{reason} | {message}\n  => {out}")
        })
        .collect();
    want.assert_eq(&(got.join("\n") + "\n"));
}

#[test]
fn scheduling_failures_name_their_cause() {
    check_classify(
        &[
            (
                "FailedScheduling",
                "0/3 nodes are available: 3 Insufficient memory.",
            ),
            (
                "FailedScheduling",
                "0/3 nodes are available: 3 node(s) had volume node affinity conflict.",
            ),
            (
                "FailedScheduling",
                "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
            ),
            ("Unschedulable", ""),
        ],
        expect_test::expect![[r#"
            FailedScheduling | 0/3 nodes are available: 3 Insufficient memory.
              => unschedulable: not scheduled: no node can take it: 0/3 nodes are available: 3 Insufficient memory.
            FailedScheduling | 0/3 nodes are available: 3 node(s) had volume node affinity conflict.
              => volume_node_affinity: not scheduled: its claim's volume is bound to a node or zone that no schedulable node is in (volume node affinity conflict): 0/3 nodes are available: 3 node(s) had volume node affinity conflict.
            FailedScheduling | 0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.
              => claim_unbound: not scheduled: its claim is not bound to a volume yet: 0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.
            Unschedulable | 
              => unschedulable: not scheduled: no node can take it
        "#]],
    );
}

#[test]
fn volume_failures_name_their_cause() {
    check_classify(
        &[
            (
                "FailedAttachVolume",
                "Multi-Attach error for volume \"pvc-1\" Volume is already exclusively attached to one node and can't be attached to another",
            ),
            (
                "FailedAttachVolume",
                "AttachVolume.Attach failed for volume \"pvc-1\": rpc error: timed out",
            ),
            (
                "FailedMount",
                "MountVolume.SetUp failed for volume \"data\": mount failed",
            ),
        ],
        expect_test::expect![[r#"
            FailedAttachVolume | Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node and can't be attached to another
              => volume_multi_attach: its claim is still attached to another node (Multi-Attach); it starts once the other Pod that uses it is gone: Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node and can't be attached to another
            FailedAttachVolume | AttachVolume.Attach failed for volume "pvc-1": rpc error: timed out
              => volume_attach_failed: its volume cannot be attached: AttachVolume.Attach failed for volume "pvc-1": rpc error: timed out
            FailedMount | MountVolume.SetUp failed for volume "data": mount failed
              => volume_mount_failed: its volume cannot be mounted: MountVolume.SetUp failed for volume "data": mount failed
        "#]],
    );
}

#[test]
fn image_and_crash_loop_failures_name_their_cause() {
    check_classify(
        &[
            (
                "Failed",
                "Failed to pull image \"localhost/x:1\": not found",
            ),
            ("ErrImagePull", "rpc error: manifest unknown"),
            (
                "ImagePullBackOff",
                "Back-off pulling image \"localhost/x:1\"",
            ),
            ("BackOff", "Back-off pulling image \"localhost/x:1\""),
            (
                "CrashLoopBackOff",
                "back-off 40s restarting failed container=workspace",
            ),
            ("BackOff", "Back-off restarting failed container"),
        ],
        expect_test::expect![[r#"
            Failed | Failed to pull image "localhost/x:1": not found
              => image_pull: its image cannot be pulled: Failed to pull image "localhost/x:1": not found
            ErrImagePull | rpc error: manifest unknown
              => image_pull: its image cannot be pulled (ErrImagePull): rpc error: manifest unknown
            ImagePullBackOff | Back-off pulling image "localhost/x:1"
              => image_pull: its image cannot be pulled (ImagePullBackOff): Back-off pulling image "localhost/x:1"
            BackOff | Back-off pulling image "localhost/x:1"
              => image_pull: its image cannot be pulled: Back-off pulling image "localhost/x:1"
            CrashLoopBackOff | back-off 40s restarting failed container=workspace
              => crash_loop: its program keeps exiting and is restarted with a back-off (CrashLoopBackOff): back-off 40s restarting failed container=workspace
            BackOff | Back-off restarting failed container
              => crash_loop: its program keeps exiting and is restarted with a back-off: Back-off restarting failed container
        "#]],
    );
}

#[test]
fn what_is_on_its_way_has_no_reason_and_the_rest_is_named() {
    check_classify(
        &[
            ("ContainerCreating", ""),
            ("PodInitializing", ""),
            ("", "something"),
            ("FailedCreatePodSandBox", "network plugin not ready"),
        ],
        expect_test::expect![[r#"
            ContainerCreating | 
              => none
            PodInitializing | 
              => none
             | something
              => none
            FailedCreatePodSandBox | network plugin not ready
              => other: FailedCreatePodSandBox: network plugin not ready
        "#]],
    );
}

/// A Pod's own status gives the same reasons: its PodScheduled condition,
/// a container waiting on its image or in a crash loop; a container being
/// created, or one that runs, gives none.
#[test]
fn a_pods_own_status_gives_its_reason() {
    let pod = |status: serde_json::Value| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": pod_name(ws()) }, "status": status,
        }))
        .unwrap()
    };
    let waiting = |reason: &str, message: &str| {
        pod(serde_json::json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": "workspace", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "waiting": { "reason": reason, "message": message } },
            }],
        }))
    };
    let kind = |p: &Pod| pod_reason(p).map(|r| r.kind);
    let unschedulable = pod(serde_json::json!({
        "phase": "Pending",
        "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: insufficient memory",
        }],
    }));
    assert_eq!(kind(&unschedulable), Some(StatusReasonKind::Unschedulable));
    assert_eq!(
        pod_reason(&unschedulable).unwrap().message,
        "not scheduled: no node can take it: 0/3 nodes are available: insufficient memory"
    );
    assert_eq!(
        kind(&waiting("ImagePullBackOff", "Back-off pulling image")),
        Some(StatusReasonKind::ImagePull)
    );
    assert_eq!(
        kind(&waiting("CrashLoopBackOff", "back-off 10s")),
        Some(StatusReasonKind::CrashLoop)
    );
    assert_eq!(kind(&waiting("ContainerCreating", "")), None);
    assert_eq!(kind(&pod(serde_json::json!({ "phase": "Running" }))), None);
}

/// Warning events about a workspace's Pod are its reasons; other events
/// (Normal ones, a helper Pod's, another kind's) are not a workspace's.
#[test]
fn only_a_workspace_pods_warnings_are_its_reasons() {
    let pod = pod_name(ws());
    let (id, why) = event_reason(&warning(
        &pod,
        "u",
        "FailedScheduling",
        "0/3 nodes are available: 3 Insufficient memory.",
    ))
    .expect("a reason");
    assert_eq!(id, ws());
    assert_eq!(why.kind, StatusReasonKind::Unschedulable);
    let mut normal = warning(&pod, "u", "Scheduled", "assigned to node-a");
    normal.type_ = Some("Normal".to_owned());
    assert!(event_reason(&normal).is_none());
    let helper = manifest::helper_name(ws(), Uuid::nil());
    assert!(event_reason(&warning(&helper, "u", "FailedMount", "x")).is_none());
    let mut claim = warning(&pod, "u", "ProvisioningFailed", "x");
    claim.involved_object.kind = Some("PersistentVolumeClaim".to_owned());
    assert!(event_reason(&claim).is_none());
}

/// The events watcher keeps the latest reason of each workspace's Pod; a
/// Pod that does not run says it in its log (the only line it has), and
/// an event about an older Pod of the same name is not taken for the
/// current one's.
#[tokio::test]
async fn the_events_watcher_gives_a_pending_pod_its_reason_in_the_log() {
    let (k, fake) = backend();
    fake.with(|s| {
        s.unschedulable = Some((
            "Unschedulable".to_owned(),
            "0/2 nodes are available: 2 Insufficient cpu.".to_owned(),
        ))
    });
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let pod_uid = uid(&fake.object(&pod_path()).unwrap());
    let multi = warning(
        &pod_name(ws()),
        &pod_uid,
        "FailedAttachVolume",
        "Multi-Attach error for volume \"pvc-3\" Volume is already used by pod(s) ws-old",
    );
    fake.put(
        &format!("/api/v1/namespaces/{NS}/events/multi"),
        serde_json::to_value(&multi).unwrap(),
    );
    let watching = KubernetesBackend::with_client(fake.client(), settings(), true);
    let why = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(why) = watching.why_not_running(ws()) {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a reason within 10 s");
    assert_eq!(why.kind, StatusReasonKind::VolumeMultiAttach, "{why}");
    assert!(
        why.message
            .starts_with("its claim is still attached to another node (Multi-Attach)"),
        "{why}"
    );
    let log = read_all(watching.logs(ws(), 1000, false).await.unwrap().unwrap()).await;
    assert_eq!(
        log,
        format!("holdfast: the workspace's Pod is not running: {why}\n")
    );
    // The same name, another Pod: the old event is not its reason; its
    // own conditions are.
    let mut pod = fake.object(&pod_path()).unwrap();
    pod["metadata"]["uid"] = serde_json::json!("uid-newer");
    fake.put(&pod_path(), pod);
    fake.with(|s| s.expire_next_watch = true);
    let stale = warning(
        &pod_name(ws()),
        "uid-older",
        "FailedAttachVolume",
        "Multi-Attach error",
    );
    watching.reasons.lock().unwrap().insert(
        ws(),
        (
            stale.involved_object.uid.clone(),
            StatusReason::new(StatusReasonKind::Other, "stale"),
        ),
    );
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let key = reflector::ObjectRef::new(&pod_name(ws())).within(NS);
            let seen = watching.cache.as_ref().unwrap().get(&key);
            if seen.is_some_and(|p| p.metadata.uid.as_deref() == Some("uid-newer")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the relist sees the newer Pod");
    let why = watching.why_not_running(ws()).unwrap();
    assert_eq!(why.kind, StatusReasonKind::Unschedulable, "{why}");
    assert!(
        why.message
            .starts_with("not scheduled: no node can take it: 0/2 nodes"),
        "{why}"
    );
}

/// A claim deleted outside holdfast (`kubectl delete pvc`) leaves its PV
/// Released with the data (Retain): the sweeper reports it, and the next
/// start binds a new claim to that PV instead of a new, empty disk.
#[tokio::test]
async fn a_claim_deleted_outside_holdfast_is_reported_and_its_pv_rebound_at_the_next_start() {
    let (k, fake) = backend();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let pv = pv_path(&fake);
    let pv_name = pv.rsplit('/').next().unwrap().to_owned();
    k.stop(ws(), None).await.unwrap();
    // Someone deletes the claim by hand; Retain keeps the PV, Released.
    fake.with(|s| {
        s.objects.remove(&claim_path());
        let pv = s.objects.get_mut(&pv).unwrap();
        pv["status"]["phase"] = serde_json::json!("Released");
    });
    let notes = k.volume_notes().await.unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].0, ws());
    assert!(notes[0].1.contains(&pv_name), "{}", notes[0].1);
    assert!(notes[0].1.contains("deleted outside holdfast"));
    // And the workspace is still among those with data (the store knows
    // it; an unknown one would be adopted `retained`).
    assert_eq!(k.volume_workspaces().await.unwrap(), vec![ws()]);
    let pvs_before = fake
        .paths()
        .iter()
        .filter(|p| p.contains("/persistentvolumes/"))
        .count();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-2"), None)
        .await
        .unwrap();
    let claim = fake.object(&claim_path()).unwrap();
    assert_eq!(
        claim["spec"]["volumeName"],
        pv_name.as_str(),
        "the kept PV, not a new one"
    );
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    let pv_obj = fake.object(&pv).unwrap();
    assert_eq!(pv_obj["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
    assert!(pv_obj["spec"]["claimRef"].get("resourceVersion").is_none());
    assert_eq!(pv_obj["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    let pvs_after = fake
        .paths()
        .iter()
        .filter(|p| p.contains("/persistentvolumes/"))
        .count();
    assert_eq!(pvs_after, pvs_before, "no new disk");
    assert!(
        k.volume_notes().await.unwrap().is_empty(),
        "bound again: nothing to report"
    );
}

/// The sweeper over this backend, on a real store: a claim no record knows
/// is adopted `retained` with its size measured by a helper Pod, and once
/// known, a claim deleted outside holdfast is reported (its PV kept).
#[tokio::test]
async fn the_sweeper_adopts_unknown_claims_measured_and_reports_released_pvs() {
    let (k, fake, exec) = backend_with_exec();
    let dir = tempfile::tempdir().unwrap();
    let store = holdfast_store::Store::open_sqlite(&dir.path().join("holdfast.db"))
        .await
        .unwrap();
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    k.stop(ws(), None).await.unwrap();
    let data = some_data();
    exec.data(&claim_name(ws()), data.path());
    let sweeper = crate::sweep::Sweeper {
        store: &store,
        backend: &k,
        retention_grace: Duration::from_secs(3600),
        with_workspaces: false,
        scan_disk: true,
    };
    let report = sweeper.run(false, "sweeper").await.unwrap();
    let adopted: Vec<_> = report
        .items
        .iter()
        .filter(|i| i.action == holdfast_domain::SweepAction::Adopt)
        .collect();
    assert_eq!(adopted.len(), 1, "{report:?}");
    assert_eq!(adopted[0].workspace_id, ws());
    assert_eq!(adopted[0].bytes, Some(13), "measured through the helper");
    assert_eq!(adopted[0].outcome, holdfast_domain::SweepOutcome::Done);
    let v = store.current_volume(ws()).await.unwrap().unwrap();
    assert_eq!(v.state, VolumeState::Retained);
    assert!(helpers(&fake).is_empty());
    // A second pass: known now, nothing to adopt, nothing to report.
    let report = sweeper.run(false, "sweeper").await.unwrap();
    assert!(report.items.is_empty(), "{report:?}");
    // Someone deletes the claim by hand: the PV is kept, Released, and the
    // sweeper says so (a dry run too), and never erases it for that.
    let pv = pv_path(&fake);
    fake.with(|s| {
        s.objects.remove(&claim_path());
        s.objects.get_mut(&pv).unwrap()["status"]["phase"] = serde_json::json!("Released");
    });
    for dry_run in [true, false] {
        let report = sweeper.run(dry_run, "sweeper").await.unwrap();
        assert_eq!(report.items.len(), 1, "{report:?}");
        let item = &report.items[0];
        assert_eq!(item.action, holdfast_domain::SweepAction::ReportOrphan);
        assert_eq!(item.workspace_id, ws());
        assert!(
            item.error
                .as_deref()
                .unwrap()
                .contains("deleted outside holdfast"),
            "{item:?}"
        );
    }
    assert!(fake.object(&pv).is_some(), "the disk is kept");
}

/// An API server that never answers: each attempt gives up after its
/// timeout, four are made, and the start fails as unavailable (503 with
/// Retry-After at the API), having created nothing.
#[tokio::test(start_paused = true)]
async fn an_api_server_that_does_not_answer_is_unavailable_after_four_timeouts() {
    let (k, fake) = backend();
    fake.with(|s| s.hang = true);
    let started = tokio::time::Instant::now();
    let err = k
        .spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, CpError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().contains("unreachable, tried 4 times"),
        "{err}"
    );
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(started.elapsed() >= ATTEMPT_TIMEOUT * 4);
    let hung = fake
        .take_log()
        .iter()
        .filter(|l| l.starts_with("HUNG POST"))
        .count();
    assert_eq!(hung, 4);
    fake.with(|s| s.hang = false);
    assert!(fake.object(&pod_path()).is_none());
    // The positive control: answered, the same start succeeds.
    k.spawn(spawn_spec(DataPersistence::Ephemeral, "i-1"), None)
        .await
        .unwrap();
}

/// The bad inputs of a persist start that the cluster gives: each a clear
/// error of the right kind, and never a claim deleted.
#[tokio::test]
async fn a_persist_start_on_a_bad_cluster_fails_clearly_and_keeps_the_claim() {
    let cases: Vec<(Fault, &str, &str)> = vec![
        (
            Fault::new("POST", "/persistentvolumeclaims", 404, "NotFound")
                .message("namespaces \"holdfast\" not found"),
            "Unavailable",
            "creating the workspace's claim: the namespace \"holdfast\" does not exist",
        ),
        (
            Fault::new("POST", "/persistentvolumeclaims", 403, "Forbidden").message(
                "persistentvolumeclaims \"ws-x\" is forbidden: exceeded quota: storage, requested: requests.storage=10Gi",
            ),
            "Conflict",
            "creating the workspace's claim: the namespace \"holdfast\" is over its ResourceQuota",
        ),
        (
            Fault::new("POST", "/persistentvolumeclaims", 403, "Forbidden").message(
                "persistentvolumeclaims is forbidden: User \"system:serviceaccount:holdfast:holdfast\" cannot create resource",
            ),
            "Conflict",
            "creating the workspace's claim: holdfast's service account lacks a permission",
        ),
        (
            Fault::new("POST", "/persistentvolumeclaims", 429, "TooManyRequests").times(10),
            "Unavailable",
            "creating the workspace's claim: the Kubernetes API server failed (429), tried 4 times",
        ),
        // The review said yes, yet the patch is refused: the Pod is taken
        // away again rather than run on a disk a Delete class may drop.
        (
            Fault::new("PATCH", "/persistentvolumes/", 403, "Forbidden").message(
                "persistentvolumes \"pvc-1\" is forbidden: User \"system:serviceaccount:holdfast:holdfast\" cannot patch resource",
            ),
            "Conflict",
            "patching the claim's PersistentVolume to Retain: holdfast's service account lacks a permission",
        ),
    ];
    for (fault, kind, want) in cases {
        let (k, fake) = backend();
        fake.fault(fault);
        let err = k
            .spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
            .await
            .unwrap_err();
        let got_kind = match &err {
            CpError::Unavailable(_) => "Unavailable",
            CpError::Conflict(_) => "Conflict",
            _ => "Other",
        };
        assert_eq!(got_kind, kind, "{err}");
        assert!(err.to_string().starts_with(want), "{err}\n  wanted: {want}");
        assert!(fake.object(&pod_path()).is_none(), "{want}: no Pod runs");
        let log = fake.take_log();
        assert!(
            !log.iter()
                .any(|l| l.starts_with("DELETE") && l.contains("persistentvolumeclaims")),
            "{log:?}"
        );
    }
}

/// The whole exec path for real, websocket included: the fake served over
/// HTTP answers the exec's upgrade and speaks `v4.channel.k8s.io`, and the
/// backend's own transport (kube-rs's `Api::exec`) measures and exports a
/// claim, and gets a refusal as a refusal.
#[tokio::test]
async fn size_and_export_over_a_real_websocket_exec() {
    let (_, fake) = Fake::start();
    let url = fake.serve_http().await.unwrap();
    let k = KubernetesBackend::with_client(Fake::http_client(&url), settings(), false);
    k.spawn(spawn_spec(DataPersistence::Persist, "i-1"), None)
        .await
        .unwrap();
    let data = some_data();
    fake.data(&claim_name(ws()), data.path());
    assert_eq!(
        k.data_bytes(ws(), DataKind::Volume).await.unwrap(),
        Some(13)
    );
    let names = archive_names(k.export(ws(), DataKind::Volume).await.unwrap()).await;
    assert_eq!(names, ["memory", "memory/notes.txt", "top"]);
    until_no_helpers(&fake).await;
    let execs: Vec<String> = fake
        .take_log()
        .into_iter()
        .filter(|l| l.starts_with("EXEC"))
        .collect();
    assert_eq!(execs.len(), 2, "{execs:?}");
    assert!(execs.iter().all(|l| l.contains("-helper-")), "{execs:?}");
    let _sock = std::os::unix::net::UnixListener::bind(data.path().join("agent.sock")).unwrap();
    let err = k.export(ws(), DataKind::Volume).await.err().unwrap();
    assert!(matches!(err, CpError::ExportRefused(_)), "{err}");
    assert!(err.to_string().contains("agent.sock"), "{err}");
    until_no_helpers(&fake).await;
}

/// A helper that a crashed read left behind ends at its deadline; the
/// sweep's listing removes the finished ones and leaves a running one (a
/// read in progress) alone.
#[tokio::test]
async fn finished_helpers_are_removed_by_the_sweep_and_running_ones_kept() {
    let (k, fake) = backend();
    let image = ImageRef::parse("localhost/x:1").unwrap();
    let mut paths = Vec::new();
    for (n, phase) in [(1u128, "Failed"), (2, "Running"), (3, "Succeeded")] {
        let mut pod = serde_json::to_value(manifest::helper_pod(
            ws(),
            org(),
            &image,
            Uuid::from_u128(n << 100),
            None,
        ))
        .unwrap();
        pod["metadata"]["uid"] = serde_json::json!(format!("h-{n}"));
        pod["status"] = serde_json::json!({ "phase": phase });
        let path = format!(
            "/api/v1/namespaces/{NS}/pods/{}",
            pod["metadata"]["name"].as_str().unwrap()
        );
        fake.put(&path, pod);
        paths.push(path);
    }
    k.volume_workspaces().await.unwrap();
    assert!(fake.object(&paths[0]).is_none(), "Failed: removed");
    assert!(fake.object(&paths[1]).is_some(), "Running: kept");
    assert!(fake.object(&paths[2]).is_none(), "Succeeded: removed");
}

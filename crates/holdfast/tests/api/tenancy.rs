//! Tenancy of a standalone control plane (SPEC §9): one `holdfast cp serve`
//! and two platforms, each its tenant. A tenant never sees nor changes
//! another's workspaces and volumes (404), a request without the shared
//! secret and a tenant's token changes nothing (401), the edge validates a
//! provision on its own, and the control plane owns its workspaces'
//! processes and its disk whatever its platforms do.

use crate::helpers::{
    ApiResponse, CpServer, TestApp, assert_files_intact, eventually, id_of, plant_files,
    process_is_running, read_lines, wait_for_lines, wait_for_pid, wait_for_pid_other_than,
    wait_process_gone, wait_workspace_process_count, workspace_body_with_persistence,
    workspace_processes,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A control plane and a platform for each of its two tenants, A and B.
/// Fields drop in order: the platforms first, then the control plane.
struct Tenancy {
    a: TestApp,
    b: TestApp,
    a_token: String,
    b_token: String,
    cp: CpServer,
}

/// Starts a control plane with `cp_args`, adds tenants A and B, and starts a
/// platform for each.
async fn two_tenants(cp_args: &[&str]) -> Tenancy {
    let (cp, tokens) = CpServer::start_with_tenants(&["tenant-a", "tenant-b"], cp_args);
    let [a_token, b_token]: [String; 2] = tokens.try_into().expect("two tenant tokens");
    assert_ne!(a_token, b_token, "each tenant has a token of its own");
    let a = TestApp::spawn_on_cp(&cp, &a_token, &["--sweep-interval", "1h"]).await;
    let b = TestApp::spawn_on_cp(&cp, &b_token, &["--sweep-interval", "1h"]).await;
    Tenancy {
        a,
        b,
        a_token,
        b_token,
        cp,
    }
}

/// A persist workspace of tenant A, running, with files in its volume.
struct Victim {
    id: String,
    pid: u32,
    instance_id: String,
    volume_id: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl Tenancy {
    async fn victim(&self, name: &str) -> Victim {
        let (id, pid) = self.a.running_persist_workspace(name).await;
        let files = plant_files(&self.a.volume_dir(&id), name);
        let ws = self.a.workspace(&id).await;
        let instance_id = ws["instance_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a running workspace has an `instance_id`: {ws}"))
            .to_owned();
        let volume_id = id_of(&self.a.volume(&id).await);
        Victim {
            id,
            pid,
            instance_id,
            volume_id,
            files,
        }
    }

    async fn as_a(&self, method: Method, path: &str) -> ApiResponse {
        self.cp
            .send(self.cp.as_tenant(&self.a_token, method, path))
            .await
    }

    async fn as_b(&self, method: Method, path: &str, body: Option<&Value>) -> ApiResponse {
        let mut request = self.cp.as_tenant(&self.b_token, method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.cp.send(request).await
    }

    /// The volume record of workspace `id` as the control plane shows it to
    /// tenant A.
    async fn cp_volume_for_a(&self, id: &str) -> Value {
        let answer = self
            .as_a(Method::GET, &format!("/cp/workspaces/{id}/volume"))
            .await
            .expect_status(200);
        answer["volume"].clone()
    }

    /// Asserts that A's workspace is exactly as it was: the same process,
    /// online through its own platform, its volume active with its files.
    async fn assert_untouched(&self, v: &Victim) {
        assert!(process_is_running(v.pid), "A's process must still run");
        assert_eq!(workspace_processes(&v.id), [v.pid], "one process, the same");
        assert_files_intact(&self.a.volume_dir(&v.id), &v.files);
        let ws = self.a.workspace(&v.id).await;
        assert_eq!(ws["status"], "online", "{ws}");
        assert_eq!(ws["instance_id"], v.instance_id.as_str(), "{ws}");
        assert_eq!(ws["data"]["state"], "active", "{ws}");
        let volume = self.cp_volume_for_a(&v.id).await;
        assert_eq!(volume["state"], "active", "{volume}");
        assert_eq!(volume["id"], v.volume_id.as_str(), "{volume}");
        let status = self
            .as_a(
                Method::GET,
                &format!(
                    "/cp/workspaces/{}/status?instance_id={}",
                    v.id, v.instance_id
                ),
            )
            .await
            .expect_status(200);
        assert_eq!(status["state"], "running", "{status}");
    }
}

/// A provision body for workspace `workspace_id` on a command runtime.
fn provision_body(workspace_id: &str) -> Value {
    json!({
        "org_id": uuid::Uuid::new_v4().to_string(),
        "workspace_id": workspace_id,
        "runtime": { "command": ["sh", "-c", "echo $$ > pid; exec sleep 600"] },
        "tier": 2,
        "env": {},
    })
}

/// Every `/cp` route about workspace `v` (or its volume), as
/// `(method, path, body)`, the destructive ones included.
fn routes_about(v: &Victim) -> Vec<(Method, String, Option<Value>)> {
    let (id, inst, vol) = (&v.id, &v.instance_id, &v.volume_id);
    let actor = json!({ "actor": "intruder" });
    vec![
        (
            Method::GET,
            format!("/cp/workspaces/{id}/status?instance_id={inst}"),
            None,
        ),
        (Method::GET, format!("/cp/workspaces/{id}/status"), None),
        (
            Method::DELETE,
            format!("/cp/workspaces/{id}?instance_id={inst}"),
            None,
        ),
        (Method::DELETE, format!("/cp/workspaces/{id}"), None),
        (
            Method::DELETE,
            format!("/cp/workspaces/{id}?instance_id={inst}&prune=true&actor=intruder"),
            None,
        ),
        (
            Method::DELETE,
            format!("/cp/workspaces/{id}?prune=true"),
            None,
        ),
        (Method::GET, format!("/cp/workspaces/{id}/volume"), None),
        (
            Method::POST,
            format!("/cp/workspaces/{id}/volume/retain"),
            Some(actor.clone()),
        ),
        (
            Method::POST,
            format!("/cp/workspaces/{id}/volume/restore"),
            Some(actor),
        ),
        (
            Method::GET,
            format!("/cp/workspaces/{id}/volume/export"),
            None,
        ),
        (Method::GET, format!("/cp/volumes/{vol}/history"), None),
        (Method::GET, format!("/cp/audit?workspace_id={id}"), None),
        (
            Method::POST,
            "/cp/workspaces/provision".to_owned(),
            Some(provision_body(id)),
        ),
    ]
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_route_and_changes_nothing() {
    let t = two_tenants(&["--sweep-interval", "1h"]).await;
    let v = t.victim("alpha").await;
    // B has a workspace of its own, so that its token is surely in use.
    t.b.running_persist_workspace("beta").await;

    for (method, path, body) in routes_about(&v) {
        let answer = t.as_b(method.clone(), &path, body.as_ref()).await;
        assert_eq!(
            answer.status.as_u16(),
            404,
            "{method} {path} with another tenant's token: {}",
            answer.text
        );
        assert_eq!(
            answer.body["code"], "not_found",
            "{method} {path}: {}",
            answer.text
        );
    }
    t.assert_untouched(&v).await;

    // The history of A's volume is intact, and no act of B's is in it.
    let history = t
        .as_a(Method::GET, &format!("/cp/volumes/{}/history", v.volume_id))
        .await
        .expect_status(200);
    assert!(
        !history.to_string().contains("intruder"),
        "nothing B asked for was recorded: {history}"
    );

    // The control plane is still A's to use: a restart through A's platform
    // starts a new process on the same data.
    t.a.restart_workspace(&v.id).await.expect_status(200);
    let pid = wait_for_pid_other_than(&t.a.volume_dir(&v.id), v.pid).await;
    t.a.wait_online(&v.id).await;
    assert_eq!(wait_workspace_process_count(&v.id, 1).await, [pid]);
    assert_files_intact(&t.a.volume_dir(&v.id), &v.files);
    assert_eq!(
        wait_for_lines(&t.a.volume_dir(&v.id).join("data.txt"), 2).await,
        ["started", "started"]
    );
}

#[tokio::test]
async fn a_foreign_prune_leaves_the_data_active_and_intact() {
    let t = two_tenants(&["--erase-grace", "1s", "--sweep-interval", "1h"]).await;
    let v = t.victim("precious").await;

    for path in [
        format!(
            "/cp/workspaces/{}?instance_id={}&prune=true",
            v.id, v.instance_id
        ),
        format!("/cp/workspaces/{}?prune=true", v.id),
    ] {
        t.as_b(Method::DELETE, &path, None)
            .await
            .expect_error(404, "not_found");
    }
    // Were the volume marked, it would be due for erasure after a second; a
    // sweep well past that must find nothing of A's to erase.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report =
        t.cp.send(
            t.cp.as_tenant(&t.a_token, Method::POST, "/cp/sweep")
                .json(&json!({ "dry_run": false })),
        )
        .await
        .expect_status(200);
    assert_eq!(report["items"], json!([]), "{report}");
    t.assert_untouched(&v).await;
    let volume = t.cp_volume_for_a(&v.id).await;
    assert!(volume["erase_after"].is_null(), "{volume}");
}

/// A `(method, path, body)` for every `/cp` route family, about A's
/// workspace where a route is about one.
fn every_route(v: &Victim) -> Vec<(Method, String, Option<Value>)> {
    let mut routes = routes_about(v);
    routes.extend([
        (Method::GET, "/cp/volumes".to_owned(), None),
        (
            Method::POST,
            "/cp/sweep".to_owned(),
            Some(json!({ "dry_run": false })),
        ),
        (Method::GET, "/cp/audit".to_owned(), None),
        (
            Method::POST,
            "/cp/workspaces/provision".to_owned(),
            Some(provision_body(&uuid::Uuid::new_v4().to_string())),
        ),
    ]);
    routes
}

#[tokio::test]
async fn a_missing_or_wrong_secret_or_tenant_token_is_401_and_changes_nothing() {
    let t = two_tenants(&["--sweep-interval", "1h"]).await;
    let v = t.victim("guarded").await;
    let secret = crate::helpers::CP_SHARED_SECRET;
    // (what is wrong, Authorization, X-Holdfast-Tenant-Token)
    let credentials: Vec<(&str, Option<String>, Option<String>)> = vec![
        ("nothing at all", None, None),
        ("no tenant token", Some(format!("Bearer {secret}")), None),
        ("no shared secret", None, Some(t.a_token.clone())),
        (
            "a wrong shared secret",
            Some("Bearer not-the-secret".to_owned()),
            Some(t.a_token.clone()),
        ),
        (
            "a wrong tenant token",
            Some(format!("Bearer {secret}")),
            Some("hft_0000000000000000".to_owned()),
        ),
        (
            "an empty tenant token",
            Some(format!("Bearer {secret}")),
            Some(String::new()),
        ),
        (
            "the secret without the Bearer scheme",
            Some(secret.to_owned()),
            Some(t.a_token.clone()),
        ),
        (
            "the two swapped",
            Some(format!("Bearer {}", t.a_token)),
            Some(secret.to_owned()),
        ),
    ];
    for (what, authorization, tenant) in &credentials {
        for (method, path, body) in every_route(&v) {
            let mut request = t.cp.unauthenticated(method.clone(), &path);
            if let Some(authorization) = authorization {
                request = request.header("Authorization", authorization);
            }
            if let Some(tenant) = tenant {
                request = request.header("X-Holdfast-Tenant-Token", tenant);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer = t.cp.send(request).await;
            assert_eq!(
                answer.status.as_u16(),
                401,
                "{method} {path} with {what}: {}",
                answer.text
            );
            assert_eq!(answer.body["code"], "unauthorized", "{}", answer.text);
        }
    }
    t.assert_untouched(&v).await;
    // No provision got through: A's volume is the only one there.
    assert_eq!(
        crate::helpers::dir_entries(&t.cp.data_dir().join("volumes")),
        std::slice::from_ref(&v.id)
    );
}

#[tokio::test]
async fn the_cp_edge_rejects_bad_data_persistence_on_its_own() {
    let t = two_tenants(&["--sweep-interval", "1h"]).await;
    let workspace_id = uuid::Uuid::new_v4().to_string();
    for value in [json!("Persist"), json!("off"), json!(true), json!(1)] {
        let mut body = provision_body(&workspace_id);
        body["data_persistence"] = value.clone();
        let answer =
            t.cp.send(
                t.cp.as_tenant(&t.a_token, Method::POST, "/cp/workspaces/provision")
                    .json(&body),
            )
            .await;
        let err = answer.expect_error_mentioning(400, "invalid_field", "data_persistence");
        assert!(
            err["error"]
                .as_str()
                .unwrap_or_default()
                .contains("persist"),
            "the error for {value} names the allowed values: {err}"
        );
    }
    // Nothing was provisioned, nothing written, and the id was not claimed
    // by A: B may still provision it.
    assert!(workspace_processes(&workspace_id).is_empty());
    assert!(!t.cp.volume_dir(&workspace_id).exists());
    assert!(!t.cp.data_dir().join("scratch").join(&workspace_id).exists());
    let mine = t.as_a(Method::GET, "/cp/volumes").await.expect_status(200);
    assert_eq!(mine["volumes"], json!([]), "{mine}");
    let provisioned = t
        .as_b(
            Method::POST,
            "/cp/workspaces/provision",
            Some(&provision_body(&workspace_id)),
        )
        .await
        .expect_status(201);
    let instance = provisioned["instance_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a provision answers an instance_id: {provisioned}"));
    wait_for_pid(&t.cp.volume_dir(&workspace_id)).await;
    t.as_b(
        Method::DELETE,
        &format!("/cp/workspaces/{workspace_id}?instance_id={instance}"),
        None,
    )
    .await
    .expect_status(200);
    wait_workspace_process_count(&workspace_id, 0).await;
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_volumes_audit_and_sweep_items() {
    let t = two_tenants(&["--erase-grace", "1s", "--sweep-interval", "1h"]).await;
    let v = t.victim("listed").await;
    let (doomed, doomed_pid) = t.a.running_persist_workspace("doomed").await;
    let (own, _) = t.b.running_persist_workspace("own").await;
    t.a.delete_workspace(&doomed)
        .confirm_name("doomed")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(doomed_pid).await;

    let ids_in = |answer: &Value, key: &str| -> Vec<String> {
        answer[key]
            .as_array()
            .unwrap_or_else(|| panic!("an array under `{key}`: {answer}"))
            .iter()
            .map(|item| item["workspace_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let b_volumes = t
        .as_b(Method::GET, "/cp/volumes", None)
        .await
        .expect_status(200);
    assert_eq!(
        ids_in(&b_volumes, "volumes"),
        std::slice::from_ref(&own),
        "{b_volumes}"
    );
    for state in ["active", "erase_pending"] {
        let listed = t
            .as_b(Method::GET, &format!("/cp/volumes?state={state}"), None)
            .await
            .expect_status(200);
        assert!(
            !ids_in(&listed, "volumes").contains(&v.id)
                && !ids_in(&listed, "volumes").contains(&doomed),
            "{listed}"
        );
    }
    let mut a_ids = ids_in(
        &t.as_a(Method::GET, "/cp/volumes").await.expect_status(200),
        "volumes",
    );
    a_ids.sort();
    let mut expected = vec![v.id.clone(), doomed.clone()];
    expected.sort();
    assert_eq!(a_ids, expected);

    let b_audit = t
        .as_b(Method::GET, "/cp/audit", None)
        .await
        .expect_status(200);
    assert!(
        ids_in(&b_audit, "events").iter().all(|id| *id == own),
        "B's audit shows only B's workspace: {b_audit}"
    );
    // Through the platforms, too.
    let b_platform: Vec<String> =
        t.b.volumes()
            .await
            .iter()
            .map(|v| v["workspace_id"].as_str().unwrap_or_default().to_owned())
            .collect();
    assert_eq!(b_platform, std::slice::from_ref(&own));

    // Once the erase is due, A's dry run plans it and B's does not show it.
    let dry_run = json!({ "dry_run": true });
    eventually("A's dry run to plan the erasure", || async {
        let report =
            t.cp.send(
                t.cp.as_tenant(&t.a_token, Method::POST, "/cp/sweep")
                    .json(&dry_run),
            )
            .await
            .expect_status(200);
        ids_in(&report, "items").contains(&doomed).then_some(())
    })
    .await;
    let report = t
        .as_b(Method::POST, "/cp/sweep", Some(&dry_run))
        .await
        .expect_status(200);
    assert_eq!(report["items"], json!([]), "{report}");
    t.assert_untouched(&v).await;
}

#[tokio::test]
async fn a_directory_nobody_knows_on_the_cp_is_adopted_hidden_and_erased_after_the_grace() {
    // The equivalent, on a control plane serving tenants, of the sweeper's
    // orphan test: such a directory belongs to no tenant.
    let t = two_tenants(&["--retention-grace", "3s", "--sweep-interval", "1h"]).await;
    let v = t.victim("neighbour").await;
    let volumes = t.cp.data_dir().join("volumes");
    let orphan = uuid::Uuid::new_v4().to_string();
    let orphan_files = plant_files(&volumes.join(&orphan), "orphan");
    let stranger_files = plant_files(&volumes.join("not-a-volume"), "stranger");
    let sweep = || async {
        t.cp.send(
            t.cp.as_tenant(&t.a_token, Method::POST, "/cp/sweep")
                .json(&json!({ "dry_run": false })),
        )
        .await
        .expect_status(200)
    };

    // Never erased on first sight, and shown to no tenant.
    for _ in 0..2 {
        let report = sweep().await;
        assert!(!report.to_string().contains(&orphan), "{report}");
        assert_files_intact(&volumes.join(&orphan), &orphan_files);
    }
    for token in [&t.a_token, &t.b_token] {
        let listed =
            t.cp.send(t.cp.as_tenant(token, Method::GET, "/cp/volumes"))
                .await
                .expect_status(200);
        assert!(!listed.to_string().contains(&orphan), "{listed}");
    }

    // Erased once the retention grace has passed.
    eventually("the orphan to be erased after the grace", || async {
        sweep().await;
        (!volumes.join(&orphan).exists()).then_some(())
    })
    .await;
    assert_files_intact(&volumes.join("not-a-volume"), &stranger_files);
    t.assert_untouched(&v).await;
}

#[tokio::test]
async fn a_platform_stop_leaves_workspaces_running_and_a_cp_stop_stops_them() {
    let Tenancy { a, b, mut cp, .. } = two_tenants(&["--sweep-interval", "1h"]).await;
    let (a_id, a_pid) = a.running_persist_workspace("kept-running").await;
    let scratch = a
        .create_online_workspace(&workspace_body_with_persistence("scratchy", "ephemeral"))
        .await;
    let scratch_id = id_of(&scratch);
    let scratch_dir = a.scratch_dir(&scratch_id);
    wait_for_pid(&scratch_dir).await;
    let (b_id, b_pid) = b.running_persist_workspace("other-tenant").await;

    // The platform is a client of the control plane: a graceful stop of it
    // leaves the workspaces running.
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(workspace_processes(&a_id), [a_pid]);
    assert_eq!(workspace_processes(&b_id), [b_pid]);
    assert_eq!(workspace_processes(&scratch_id).len(), 1);

    // A graceful stop of the control plane stops every workspace it runs,
    // and removes scratch data, but never touches a volume.
    drop(b);
    let volume = cp.volume_dir(&a_id);
    cp.stop_expecting_graceful_exit().await;
    assert_eq!(workspace_processes(&a_id), Vec::<u32>::new());
    assert_eq!(workspace_processes(&b_id), Vec::<u32>::new());
    assert_eq!(workspace_processes(&scratch_id), Vec::<u32>::new());
    assert!(!scratch_dir.exists(), "scratch data is removed at stop");
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);
}

#[tokio::test]
async fn after_a_cp_crash_each_workspace_runs_again_exactly_once() {
    let mut t = two_tenants(&["--sweep-interval", "1h"]).await;
    let v = t.victim("survivor").await;
    let (b_id, b_pid) = t.b.running_persist_workspace("b-survivor").await;

    // Workspace processes live in process groups of their own: they outlive
    // a `kill -9` of the control plane, which stops them when it comes back,
    // and each platform starts its own again, once.
    t.cp.crash_and_restart();
    wait_process_gone(v.pid).await;
    wait_process_gone(b_pid).await;
    let a_pid = wait_for_pid_other_than(&t.a.volume_dir(&v.id), v.pid).await;
    let b_new = wait_for_pid_other_than(&t.b.volume_dir(&b_id), b_pid).await;
    t.a.wait_online(&v.id).await;
    t.b.wait_online(&b_id).await;
    assert_eq!(wait_workspace_process_count(&v.id, 1).await, [a_pid]);
    assert_eq!(wait_workspace_process_count(&b_id, 1).await, [b_new]);
    assert_files_intact(&t.a.volume_dir(&v.id), &v.files);
    assert_eq!(
        wait_for_lines(&t.a.volume_dir(&v.id).join("data.txt"), 2).await,
        ["started", "started"]
    );
    assert_eq!(t.cp_volume_for_a(&v.id).await["state"], "active");
}

#[tokio::test]
async fn a_restarted_platform_adopts_what_its_cp_still_runs() {
    let mut t = two_tenants(&["--sweep-interval", "1h"]).await;
    let (kept, kept_pid) = t.a.running_persist_workspace("kept").await;
    let scratch =
        t.a.create_online_workspace(&workspace_body_with_persistence("scratchy", "ephemeral"))
            .await;
    let scratch_id = id_of(&scratch);
    let scratch_pid = wait_for_pid(&t.a.scratch_dir(&scratch_id)).await;
    let (paused, paused_pid) = t.a.running_persist_workspace("paused").await;
    t.a.pause_workspace(&paused).await.expect_status(200);
    wait_process_gone(paused_pid).await;

    // Two crashes and a graceful restart of the platform: the control plane
    // runs the workspaces throughout, and each new platform adopts them
    // rather than starting them again.
    for round in 0..3 {
        if round < 2 {
            t.a.crash_and_restart_server().await;
        } else {
            t.a.restart_server_expecting_graceful_exit().await;
        }
        t.a.wait_online(&kept).await;
        t.a.wait_online(&scratch_id).await;
        assert_eq!(workspace_processes(&kept), [kept_pid], "round {round}");
        assert_eq!(
            workspace_processes(&scratch_id),
            [scratch_pid],
            "round {round}"
        );
        assert_eq!(
            workspace_processes(&paused),
            Vec::<u32>::new(),
            "round {round}"
        );
        assert_eq!(t.a.workspace(&paused).await["status"], "paused");
    }
    assert_eq!(
        read_lines(&t.a.volume_dir(&kept).join("data.txt")),
        ["started"]
    );
    assert_eq!(
        read_lines(&t.a.scratch_dir(&scratch_id).join("data.txt")),
        ["started"]
    );

    // An adopted workspace is fully managed: a restart and a resume work.
    t.a.restart_workspace(&kept).await.expect_status(200);
    let new_pid = wait_for_pid_other_than(&t.a.volume_dir(&kept), kept_pid).await;
    assert_eq!(wait_workspace_process_count(&kept, 1).await, [new_pid]);
    t.a.resume_workspace(&paused).await.expect_status(200);
    t.a.wait_online(&paused).await;
    assert_eq!(wait_workspace_process_count(&paused, 1).await.len(), 1);
    assert_eq!(
        wait_for_lines(&t.a.volume_dir(&paused).join("data.txt"), 2).await,
        ["started", "started"]
    );
}

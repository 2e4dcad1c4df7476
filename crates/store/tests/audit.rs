//! The audit log's scoping is part of its queries: an org's or a tenant's
//! page is full however many newer events belong to others, and events
//! written before the org column existed are backfilled by migration 0010.

use holdfast_domain::{AuditAction, Compute, Env, Runtime, Tier};
use holdfast_store::{AuditScope, NewAuditEvent, NewWorkspace, Store};
use serde_json::Value;
use sqlx::Executor;
use uuid::Uuid;

fn new_workspace(org: Uuid, name: &str) -> NewWorkspace {
    NewWorkspace {
        id: Uuid::new_v4(),
        org_id: org,
        name: name.to_owned(),
        role: None,
        parent_id: None,
        tier: Tier::DEFAULT,
        runtime: Runtime::parse(&Value::Null).unwrap(),
        env: Env::parse(&Value::Null).unwrap(),
        compute: Compute::parse(&Value::Null).unwrap(),
        seed_snapshot_id: None,
    }
}

fn event(workspace: Uuid, action: AuditAction) -> NewAuditEvent {
    NewAuditEvent {
        actor: "test".into(),
        action,
        workspace_id: Some(workspace),
        volume_id: None,
        reason: None,
        detail: None,
    }
}

/// SQLite always, and PostgreSQL when `HOLDFAST_TEST_DATABASE_URL` names a
/// server (as in `volumes.rs`; under `CI=true` a missing one fails).
async fn stores() -> Vec<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let mut out = vec![(dir, sqlite)];
    match std::env::var("HOLDFAST_TEST_DATABASE_URL") {
        Ok(admin_url) => {
            let url = holdfast_store::testing::fresh_postgres_database(&admin_url)
                .await
                .unwrap();
            out.push((
                tempfile::tempdir().unwrap(),
                Store::open_url(&url).await.unwrap(),
            ));
        }
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but HOLDFAST_TEST_DATABASE_URL is not set")
        }
        Err(_) => eprintln!("skipping PostgreSQL: HOLDFAST_TEST_DATABASE_URL is not set"),
    }
    out
}

#[tokio::test]
async fn an_orgs_and_a_tenants_pages_are_full_under_a_flood_of_others() {
    for (_dir, store) in stores().await {
        check_pages(store).await;
    }
}

async fn check_pages(store: Store) {
    let quiet_org = store.insert_org("quiet", 1).await.unwrap().id;
    let busy_org = store.insert_org("busy", 1).await.unwrap().id;
    let quiet = store
        .insert_workspace(&new_workspace(quiet_org, "q"), 1)
        .await
        .unwrap()
        .id;
    let busy = store
        .insert_workspace(&new_workspace(busy_org, "b"), 1)
        .await
        .unwrap()
        .id;
    let quiet_tenant = store.insert_tenant("tq", "hq", 1).await.unwrap().id;
    let busy_tenant = store.insert_tenant("tb", "hb", 1).await.unwrap().id;
    store.claim_workspace(quiet, quiet_tenant, 1).await.unwrap();
    store.claim_workspace(busy, busy_tenant, 1).await.unwrap();
    for i in 0..5 {
        store
            .audit(event(quiet, AuditAction::WorkspaceUpdated), 10 + i)
            .await
            .unwrap();
    }
    for i in 0..50 {
        store
            .audit(event(busy, AuditAction::WorkspaceUpdated), 100 + i)
            .await
            .unwrap();
    }
    let newest = store.list_audit(AuditScope::All, None, 0, 3).await.unwrap();
    assert!(newest.iter().all(|e| e.workspace_id == Some(busy)));
    for scope in [AuditScope::Org(quiet_org), AuditScope::Tenant(quiet_tenant)] {
        let page = store.list_audit(scope, None, 0, 3).await.unwrap();
        let ats: Vec<i64> = page.iter().map(|e| e.at).collect();
        assert_eq!(ats, [14, 13, 12], "{scope:?}: the newest 3 of its own");
        let next = store.list_audit(scope, None, 3, 3).await.unwrap();
        let ats: Vec<i64> = next.iter().map(|e| e.at).collect();
        assert_eq!(ats, [11, 10], "{scope:?}: the next page, then the end");
        let other = store.list_audit(scope, Some(busy), 0, 3).await.unwrap();
        assert!(other.is_empty(), "{scope:?}: none of the busy one's");
    }
}

#[tokio::test]
async fn migration_0010_gives_existing_events_their_workspaces_org() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let org = Uuid::new_v4();
    let ws = Uuid::new_v4();
    {
        // The schema as the previous version left it, with one event.
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        let mut old = sqlx::migrate!("migrations/sqlite");
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version < 10)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        old.run(&pool).await.unwrap();
        pool.execute(
            format!(
                "INSERT INTO orgs (id, name, is_default, created_at) VALUES ('{org}', 'o', 0, 1); \
                 INSERT INTO workspaces (id, org_id, name, tier, runtime, env, compute, desired, status, \
                 created_at, updated_at) VALUES ('{ws}', '{org}', 'w', 2, '{{}}', '{{}}', '{{}}', 'running', \
                 'online', 1, 1); \
                 INSERT INTO audit (id, at, actor, action, workspace_id) \
                 VALUES ('{}', 5, 'admin', 'workspace.created', '{ws}'); \
                 INSERT INTO audit (id, at, actor, action, workspace_id) \
                 VALUES ('{}', 6, 'sweeper', 'volume.adopted', '{}')",
                Uuid::new_v4(),
                Uuid::new_v4(),
                Uuid::new_v4()
            )
            .as_str(),
        )
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::open_sqlite(&path).await.unwrap();
    let mine = store
        .list_audit(AuditScope::Org(org), None, 0, 10)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].action, AuditAction::WorkspaceCreated);
    assert!(
        store
            .list_audit(AuditScope::Org(Uuid::new_v4()), None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_audit(AuditScope::All, None, 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

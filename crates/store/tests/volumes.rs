//! Store-level checks of the volume state machine's compare-and-set.

use holdfast_domain::VolumeState;
use holdfast_store::{Store, StoreError, VolumeTransition};
use uuid::Uuid;

/// Every store this test runs against: SQLite always, PostgreSQL when
/// `HOLDFAST_TEST_DATABASE_URL` names a server (a fresh database is created
/// on it). Under `CI=true` a missing PostgreSQL is a failure, not a skip.
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
            panic!(
                "CI=true but HOLDFAST_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run"
            )
        }
        Err(_) => eprintln!("skipping PostgreSQL: HOLDFAST_TEST_DATABASE_URL is not set"),
    }
    out
}

#[tokio::test]
async fn transitions_are_compare_and_set_and_record_who_asked_to_erase() {
    for (_dir, store) in stores().await {
        check_transitions(store).await;
    }
}

async fn check_transitions(store: Store) {
    let ws = Uuid::new_v4();
    let v = store.insert_volume(ws, None, "test", 1).await.unwrap();
    let t = |from: &'static [VolumeState], to, actor| VolumeTransition {
        volume_id: v.id,
        from,
        to,
        retain_until: None,
        erase_after: Some(100),
        actor,
        reason: Some("r"),
    };
    let pending = store
        .transition_volume(
            t(&[VolumeState::Active], VolumeState::ErasePending, "alice"),
            2,
        )
        .await
        .unwrap();
    assert_eq!(pending.state, VolumeState::ErasePending);
    assert_eq!(pending.erased_by.as_deref(), Some("alice"));
    // The same CAS again loses: the volume is no longer active.
    let again = store
        .transition_volume(
            t(&[VolumeState::Active], VolumeState::ErasePending, "bob"),
            3,
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let erasing = store
        .begin_erase(
            v.id,
            VolumeState::ErasePending,
            "sweeper",
            "erase_requested",
            4,
        )
        .await
        .unwrap();
    assert_eq!(
        erasing.erased_by.as_deref(),
        Some("alice"),
        "the requester is kept"
    );
    let erased = store.finish_erase(v.id, 42, 5).await.unwrap();
    assert_eq!(
        (erased.state, erased.bytes_erased),
        (VolumeState::Erased, Some(42))
    );
    let audit = store
        .list_audit(holdfast_store::AuditScope::All, Some(ws), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        audit.iter().filter(|e| e.action == "volume.erased").count(),
        1
    );
    assert_eq!(audit[0].actor, "alice");
    assert!(matches!(
        store.finish_erase(v.id, 42, 6).await,
        Err(StoreError::Conflict(_))
    ));
    let history: Vec<_> = store
        .volume_history(v.id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.to_state)
        .collect();
    assert_eq!(history, ["active", "erase_pending", "erasing", "erased"]);
}

//! Store-level checks of the volume state machine's compare-and-set.

use holdfast_domain::{AuditAction, VolumeReason, VolumeState};
use holdfast_store::{Store, StoreError, VolumeTransition};
use uuid::Uuid;

mod common;
use common::stores;

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
        reason: Some(VolumeReason::WorkspaceDeleted),
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
    assert!(
        matches!(again, Err(StoreError::VolumeMoved { .. })),
        "{again:?}"
    );
    let erasing = store
        .begin_erase(
            v.id,
            VolumeState::ErasePending,
            "sweeper",
            VolumeReason::EraseRequested,
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
        audit
            .iter()
            .filter(|e| e.action == AuditAction::VolumeErased)
            .count(),
        1
    );
    assert_eq!(audit[0].actor, "alice");
    assert!(matches!(
        store.finish_erase(v.id, 42, 6).await,
        Err(StoreError::VolumeMoved { .. })
    ));
    let history: Vec<_> = store
        .volume_history(v.id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.to_state.as_str())
        .collect();
    assert_eq!(history, ["active", "erase_pending", "erasing", "erased"]);
}

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

/// A control plane's own hold record (`cp_volume_holds`): the sweeper's
/// candidates leave the volume out, the compare-and-set to `erasing`
/// refuses it (a hold placed after the pass listed it), and release moves
/// the grace deadline on by the time held. Positive control: without the
/// hold the same volume is a candidate and erasing begins.
#[tokio::test]
async fn a_control_plane_hold_keeps_the_volume_out_of_every_erasure() {
    for (_dir, store) in stores().await {
        let ws = Uuid::new_v4();
        let v = store.insert_volume(ws, None, "test", 1).await.unwrap();
        store
            .transition_volume(
                VolumeTransition {
                    volume_id: v.id,
                    from: &[VolumeState::Active],
                    to: VolumeState::ErasePending,
                    retain_until: None,
                    erase_after: Some(100),
                    actor: "alice",
                    reason: Some(VolumeReason::EraseRequested),
                },
                2,
            )
            .await
            .unwrap();
        let listed = |store: Store, now: i64| async move {
            store
                .sweep_candidates(now, false)
                .await
                .unwrap()
                .iter()
                .any(|c| c.volume.id == v.id)
        };
        assert!(listed(store.clone(), 1_000).await, "due without a hold");
        store
            .place_volume_hold(ws, "case 1", "admin", 200)
            .await
            .unwrap();
        assert!(!listed(store.clone(), 1_000).await, "held: not a candidate");
        let refused = store
            .begin_erase(
                v.id,
                VolumeState::ErasePending,
                "sweeper",
                VolumeReason::EraseRequested,
                300,
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::VolumeMoved { .. })),
            "{refused:?}"
        );
        assert!(store.release_volume_hold(ws, 700).await.unwrap());
        assert!(!store.release_volume_hold(ws, 800).await.unwrap());
        let moved = store.get_volume(v.id).await.unwrap().unwrap();
        assert_eq!(
            moved.erase_after,
            Some(100 + 500),
            "moved on by the time held"
        );
        assert!(
            !listed(store.clone(), 550).await,
            "not due until the moved deadline"
        );
        assert!(listed(store.clone(), 1_000).await, "due after it");
        store
            .begin_erase(
                v.id,
                VolumeState::ErasePending,
                "sweeper",
                VolumeReason::EraseRequested,
                900,
            )
            .await
            .unwrap();
    }
}

/// The usage pass reads the attached volumes only, and the quota check
/// finds exactly those over their decimal `size_gb`.
#[tokio::test]
async fn usage_reads_attached_volumes_and_over_quota_names_only_those_over() {
    for (_dir, store) in stores().await {
        let within = store
            .insert_volume(Uuid::new_v4(), Some(1), "test", 1)
            .await
            .unwrap();
        let over = store
            .insert_volume(Uuid::new_v4(), Some(1), "test", 1)
            .await
            .unwrap();
        let unlimited = store
            .insert_volume(Uuid::new_v4(), None, "test", 1)
            .await
            .unwrap();
        let retained = store
            .insert_volume(Uuid::new_v4(), Some(1), "test", 1)
            .await
            .unwrap();
        store
            .set_volume_bytes(within.id, 1_000_000_000)
            .await
            .unwrap();
        store
            .set_volume_bytes(over.id, 1_000_000_001)
            .await
            .unwrap();
        store
            .set_volume_bytes(unlimited.id, i64::MAX)
            .await
            .unwrap();
        store
            .set_volume_bytes(retained.id, 5_000_000_000)
            .await
            .unwrap();
        store
            .transition_volume(
                VolumeTransition {
                    volume_id: retained.id,
                    from: &[VolumeState::Active],
                    to: VolumeState::Retained,
                    retain_until: Some(100),
                    erase_after: None,
                    actor: "test",
                    reason: Some(VolumeReason::WorkspaceDeleted),
                },
                2,
            )
            .await
            .unwrap();

        let mut usage: Vec<(Uuid, i64, Option<i64>)> = store
            .active_volume_usage()
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.id, u.bytes, u.size_gb))
            .collect();
        usage.sort();
        let mut expected = vec![
            (within.id, 1_000_000_000, Some(1)),
            (over.id, 1_000_000_001, Some(1)),
            (unlimited.id, i64::MAX, None),
        ];
        expected.sort();
        assert_eq!(usage, expected, "the retained volume is not measured");
        assert_eq!(
            store.over_quota_workspaces().await.unwrap(),
            vec![over.workspace_id],
            "one byte over is over; exactly 1 GB and no size_gb are not; a retained volume is not attached"
        );
    }
}

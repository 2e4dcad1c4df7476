//! Fenced leases: two replicas on one database, one of which stalls past its
//! lease while the other takes the workspace over. The stalled one's late
//! writes of observed state must be refused.

use holdfast_domain::{DataPersistence, Runtime, Status, Tier};
use holdfast_store::{NewWorkspace, Started, Store, StoreError};
use uuid::Uuid;

mod common;
use common::stores;

async fn a_workspace(store: &Store) -> Uuid {
    let org = store.default_org(1).await.unwrap();
    let id = Uuid::new_v4();
    store
        .insert_workspace(
            &NewWorkspace {
                id,
                org_id: org.id,
                name: "fenced".into(),
                role: None,
                parent_id: None,
                tier: Tier::DEFAULT,
                runtime: Runtime::default(),
                env: Default::default(),
                compute: Default::default(),
                seed_snapshot_id: None,
            },
            1,
        )
        .await
        .unwrap();
    id
}

fn started(instance: &str) -> Started<'_> {
    Started {
        instance_id: instance,
        generation: 0,
        resolved_mode: DataPersistence::Persist,
        isolation: None,
        limits: None,
    }
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_can_no_longer_record_anything() {
    for (_dir, store) in stores().await {
        check_fencing(store).await;
    }
}

async fn check_fencing(store: Store) {
    let id = a_workspace(&store).await;
    // Replica A takes the lease until t=1000, and its write goes through.
    let a = store
        .try_lease_workspace(id, "replica-a", 1_000, 10)
        .await
        .unwrap()
        .expect("a free lease is granted");
    store
        .record_started(id, Some(a), Status::Provisioning, started("inst-a"), 20)
        .await
        .expect("the holder's write is recorded");
    // B cannot have it while A's lease runs...
    assert_eq!(
        store
            .try_lease_workspace(id, "replica-b", 1_500, 500)
            .await
            .unwrap(),
        None
    );
    // ...but takes it over once it ran out (A stalled in a slow stop).
    let b = store
        .try_lease_workspace(id, "replica-b", 3_000, 1_001)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_ne!(a, b, "a new grant has a new fence");
    // A wakes up and writes what it saw: every kind of write is refused.
    let late = [
        store
            .record_started(id, Some(a), Status::Online, started("inst-a2"), 1_100)
            .await,
        store
            .record_stopped(id, Some(a), Status::Offline, 1_100)
            .await,
        store.set_status(id, Some(a), Status::Failed, 1_100).await,
        store
            .begin_start(id, Some(a), "hash", Status::Provisioning, 1_100)
            .await,
        store.mark_compute_released(id, Some(a)).await,
    ];
    for (n, r) in late.iter().enumerate() {
        assert!(
            matches!(r, Err(StoreError::Fenced(w)) if *w == id),
            "late write {n} of the fenced-out replica: {r:?}"
        );
    }
    assert!(
        !store
            .renew_workspace_lease(id, "replica-a", a, 5_000)
            .await
            .unwrap(),
        "nor can it renew"
    );
    let row = store.get_workspace(id).await.unwrap().unwrap();
    assert_eq!(
        row.instance_id.as_deref(),
        Some("inst-a"),
        "nothing of A's late writes landed"
    );
    assert_eq!(row.status, Status::Provisioning);
    // The positive control: the holder's own writes go through.
    store
        .record_started(id, Some(b), Status::Online, started("inst-b"), 1_200)
        .await
        .expect("the holder's write is recorded");
    assert_eq!(
        store
            .get_workspace(id)
            .await
            .unwrap()
            .unwrap()
            .instance_id
            .as_deref(),
        Some("inst-b")
    );
    // A release moves the fence on: even the last holder's stale fence is
    // refused after it.
    store
        .release_workspace_lease(id, "replica-b", b)
        .await
        .unwrap();
    assert!(matches!(
        store.set_status(id, Some(b), Status::Failed, 1_300).await,
        Err(StoreError::Fenced(_))
    ));
    // Unfenced writes (a single replica on SQLite) are not affected.
    store
        .set_status(id, None, Status::Offline, 1_400)
        .await
        .unwrap();
}

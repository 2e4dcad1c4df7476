//! The usage history stays within its window: at most one row per
//! workspace per 15-minute bucket of the last 24 hours, however long the
//! samples keep coming.

use holdfast_store::{Store, USAGE_BUCKET_MS, USAGE_BUCKETS, usage_bucket};
use uuid::Uuid;

mod common;
use common::stores;

#[tokio::test]
async fn the_history_is_bounded_to_the_last_24_hours() {
    for (_dir, store) in stores().await {
        check_bound(store).await;
    }
}

async fn check_bound(store: Store) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let start = usage_bucket(1_800_000_000_000);
    // Two days of measurements every 5 minutes (three per bucket), and a
    // restart every hour.
    let step = USAGE_BUCKET_MS / 3;
    let steps = 2 * 24 * 12;
    for i in 0..steps {
        let now = start + i * step;
        store
            .record_usage_bytes(&[(a, i * 10), (b, 7)], now)
            .await
            .unwrap();
        if i % 12 == 0 {
            store.record_restart(a, now).await.unwrap();
        }
    }
    let now = start + (steps - 1) * step;
    assert_eq!(
        store.usage_rows().await.unwrap(),
        2 * USAGE_BUCKETS,
        "one row per workspace per bucket of the window, no more"
    );
    let history = store.usage_history(a, now).await.unwrap();
    assert_eq!(history.len() as i64, USAGE_BUCKETS);
    let first = history.first().unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.bucket, usage_bucket(now));
    assert_eq!(first.bucket, usage_bucket(now) - 95 * USAGE_BUCKET_MS);
    // The latest measurement of a bucket wins.
    assert_eq!(last.bytes, Some((steps - 1) * 10));
    // One restart an hour: one bucket in four counts one.
    let restarts: i64 = history.iter().map(|s| s.restarts).sum();
    assert_eq!(restarts, 24);
    assert!(history.iter().all(|s| s.restarts <= 1));
    // Another workspace's history is its own.
    assert!(
        store
            .usage_history(b, now)
            .await
            .unwrap()
            .iter()
            .all(|s| s.bytes == Some(7) && s.restarts == 0)
    );
}

#[tokio::test]
async fn a_restart_before_any_measurement_has_no_size() {
    for (_dir, store) in stores().await {
        let ws = Uuid::new_v4();
        let now = 1_800_000_000_000;
        store.record_restart(ws, now).await.unwrap();
        store.record_restart(ws, now + 1).await.unwrap();
        let h = store.usage_history(ws, now + 2).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].bytes, None);
        assert_eq!(h[0].restarts, 2);
        // A measurement later in the bucket keeps its restarts.
        store
            .record_usage_bytes(&[(ws, 42)], now + 3)
            .await
            .unwrap();
        let h = store.usage_history(ws, now + 4).await.unwrap();
        assert_eq!((h[0].bytes, h[0].restarts), (Some(42), 2));
        // A day later, nothing of it is in the window.
        let later = now + USAGE_BUCKETS * USAGE_BUCKET_MS;
        assert!(store.usage_history(ws, later).await.unwrap().is_empty());
    }
}

//! Usage history (`usage_samples`): per workspace, the data size last
//! measured and the restarts made in each 15-minute bucket of the last
//! 24 hours. Bounded: every write first removes the buckets that left the
//! window, so a workspace has at most [`USAGE_BUCKETS`] rows.

use crate::{Store, StoreResult};
use holdfast_domain::Millis;
use sqlx::Row;
use uuid::Uuid;

/// The length of one bucket: 15 minutes.
pub const USAGE_BUCKET_MS: Millis = 15 * 60 * 1000;
/// How many buckets the history keeps: 24 hours' worth, the current one
/// included.
pub const USAGE_BUCKETS: i64 = 96;

/// One bucket of a workspace's usage history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSample {
    /// The bucket's start, in milliseconds since the epoch.
    pub bucket: Millis,
    /// The data size last measured in the bucket; `None` when nothing was
    /// measured in it (a restart was recorded first).
    pub bytes: Option<i64>,
    /// Restarts the reconciler made in the bucket.
    pub restarts: i64,
}

/// The start of the bucket `at` falls in.
pub fn usage_bucket(at: Millis) -> Millis {
    at.div_euclid(USAGE_BUCKET_MS) * USAGE_BUCKET_MS
}

/// The oldest bucket still in the window at `now`.
fn oldest_kept(now: Millis) -> Millis {
    usage_bucket(now) - (USAGE_BUCKETS - 1) * USAGE_BUCKET_MS
}

/// Removes every bucket older than the window at `now`, in the write that
/// adds a sample: the table never holds more than a day per workspace.
async fn prune(tx: &mut sqlx::Transaction<'_, sqlx::Any>, now: Millis) -> StoreResult<()> {
    sqlx::query("DELETE FROM usage_samples WHERE bucket < $1")
        .bind(oldest_kept(now))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Records each `(workspace, bytes)` as the size measured in the bucket
    /// of `now` (the latest measurement in a bucket wins), after removing
    /// every bucket older than the window, in one transaction.
    #[tracing::instrument(skip_all, name = "store.record_usage_bytes", fields(n = samples.len()))]
    pub async fn record_usage_bytes(
        &self,
        samples: &[(Uuid, i64)],
        now: Millis,
    ) -> StoreResult<()> {
        let written = self.write();
        let mut tx = written.begin().await?;
        prune(&mut tx, now).await?;
        for (workspace_id, bytes) in samples {
            sqlx::query(
                "INSERT INTO usage_samples (workspace_id, bucket, bytes, restarts) \
                 VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (workspace_id, bucket) DO UPDATE SET bytes = excluded.bytes",
            )
            .bind(workspace_id.to_string())
            .bind(usage_bucket(now))
            .bind(*bytes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Counts one restart of `workspace_id` in the bucket of `now`, after
    /// removing every bucket older than the window, in one transaction.
    #[tracing::instrument(skip_all, name = "store.record_restart")]
    pub async fn record_restart(&self, workspace_id: Uuid, now: Millis) -> StoreResult<()> {
        let written = self.write();
        let mut tx = written.begin().await?;
        prune(&mut tx, now).await?;
        sqlx::query(
            "INSERT INTO usage_samples (workspace_id, bucket, bytes, restarts) \
             VALUES ($1, $2, NULL, 1) \
             ON CONFLICT (workspace_id, bucket) DO UPDATE SET restarts = usage_samples.restarts + 1",
        )
        .bind(workspace_id.to_string())
        .bind(usage_bucket(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The buckets of `workspace_id`'s history still in the window at
    /// `now`, oldest first (buckets with nothing recorded are absent).
    pub async fn usage_history(
        &self,
        workspace_id: Uuid,
        now: Millis,
    ) -> StoreResult<Vec<UsageSample>> {
        let rows = sqlx::query(
            "SELECT bucket, bytes, restarts FROM usage_samples \
             WHERE workspace_id = $1 AND bucket >= $2 ORDER BY bucket",
        )
        .bind(workspace_id.to_string())
        .bind(oldest_kept(now))
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageSample {
                    bucket: row.try_get("bucket")?,
                    bytes: row.try_get("bytes")?,
                    restarts: row.try_get("restarts")?,
                })
            })
            .collect()
    }

    /// How many rows the usage history holds, all workspaces together
    /// (for the test of its bound).
    pub async fn usage_rows(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM usage_samples")
            .fetch_one(self.read())
            .await?;
        Ok(row.try_get("n")?)
    }
}

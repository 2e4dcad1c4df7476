//! The controller: holdfast's one place of decisions about workspaces and
//! their data, over a store and a control plane. Nothing here knows HTTP.
//!
//! - [`Controller`] is the `Lifecycle` service. Every operation (create,
//!   patch, restart, pause, resume, hibernate, wake, delete, restore,
//!   rollback, hold) writes all of its intent to the store in one
//!   transaction, cascades included, then asks the reconciler to carry it
//!   out, and returns a typed [`Error`]. Handlers in `holdfast-platform`
//!   and its canvas are thin adapters over these methods.
//! - `reconciler/plan.rs` is a pure function from intent, observation and
//!   time to one [`reconciler::plan::Action`]; `reconciler.rs` is its
//!   executor and the event-driven loop, with fenced leases.
//! - `data.rs` holds restore and the sweeper's pass, `snapshots.rs`
//!   snapshots, rollback, holds and schedules, `identity.rs` who a token or
//!   a session stands for.
//!
//! **Architecture Invariant:** `delete.rs`'s `finish_removal_locked` is the
//! only caller of `ControlPlane::stop_and_prune` (see
//! `crates/platform/tests/architecture.rs`).

mod data;
mod delete;
mod error;
pub mod events;
mod identity;
mod lifecycle;
mod messages;
pub mod metrics;
mod org;
mod orgs;
mod reads;
pub mod reconciler;
mod snapshots;

pub use delete::{DataAfterDelete, DeleteRequest, Deleted, StopFailure};
pub use error::{Error, Resource, Result};
pub use events::{Event, EventBus};
pub use identity::{Caller, Minted, Secret, generate_token, hash_hex, hash_token, minted_kind};
pub use lifecycle::CreateRequest;
pub use reads::Known;
pub use reconciler::{Observed, ReconcileError, ReconcilerSettings};
pub use snapshots::{BEFORE_ROLLBACK, RolledBack, SCHEDULED};

use holdfast_cp::ControlPlane;
use holdfast_store::Store;
use lifecycle::WorkspaceLocks;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// What a controller is built from; everything else it keeps is its own.
pub struct Settings {
    /// The admin token: compared (as a hash, in constant time) by
    /// [`Controller::caller_for_token_hash`].
    pub admin_token: Secret,
    /// The URL workspaces reach the platform at (`HOLDFAST_PLATFORM_URL`).
    pub public_url: String,
    pub reconciler: ReconcilerSettings,
    /// This replica, as a lease holder on a shared database.
    pub replica_id: String,
    /// How long a canvas session lasts after sign-in.
    pub session_ttl: std::time::Duration,
}

/// The Lifecycle service and the reconciler's state.
pub struct Controller {
    store: Store,
    cp: Arc<dyn ControlPlane>,
    admin_token_hash: [u8; 32],
    default_org: Uuid,
    /// The URL workspaces reach the platform at (`HOLDFAST_PLATFORM_URL`).
    public_url: String,
    locks: WorkspaceLocks,
    /// Per-workspace locks held across a whole delete or restore, so that
    /// of several at once on this server one acts and the others see its
    /// outcome (across replicas the store's compare-and-sets decide).
    destructive: WorkspaceLocks,
    /// What this server observes of each workspace's compute (not durable).
    observed: Mutex<HashMap<Uuid, Observed>>,
    events: EventBus,
    reconciler: ReconcilerSettings,
    metrics: metrics::Metrics,
    /// This replica, as a lease holder on a shared database. Stable across
    /// restarts (kept in its data dir), so that a replica restarted after a
    /// crash takes back its own leases at once instead of waiting them out.
    replica_id: String,
    /// What the control plane gives a workspace started now (shown for one
    /// that has not started yet).
    confinement: holdfast_cp::process::Confinement,
    /// Workspaces whose attached volume was over its quota at the last
    /// check: they are `degraded`.
    over_quota: Mutex<std::collections::HashSet<Uuid>>,
    /// Wakes the reconciler loop before its next tick, for intent written
    /// without a reconcile of its own (an org import).
    reconcile_soon: tokio::sync::Notify,
    /// How long a canvas session lasts after sign-in.
    session_ttl: std::time::Duration,
    /// The volume this server last read of each workspace, and when: what a
    /// read answers (marked stale) while the control plane is unreachable.
    last_known: Mutex<HashMap<Uuid, (holdfast_cp::VolumeInfo, holdfast_domain::Millis)>>,
    /// The usage-history bucket and size last written for each workspace,
    /// so that an unchanged size is not written again.
    usage_recorded: Mutex<HashMap<Uuid, (holdfast_domain::Millis, i64)>>,
    /// When the reconciler looks at a workspace again without an event: a
    /// backoff, a heartbeat window or a provision deadline that runs out.
    wakes: Mutex<reconciler::Wakes>,
    /// Tells the reconciler loop that the earliest wake moved.
    wakes_changed: tokio::sync::Notify,
}

impl Controller {
    pub async fn new(
        store: Store,
        cp: Arc<dyn ControlPlane>,
        settings: Settings,
    ) -> anyhow::Result<Arc<Controller>> {
        let default_org = store.default_org(holdfast_domain::now_millis()).await?.id;
        let confinement = match cp.confinement().await {
            Ok(c) => c,
            Err(e) => {
                // An older or unreachable control plane: claim nothing.
                tracing::warn!(error = %e, "the control plane did not say how it isolates workspaces");
                holdfast_cp::process::Confinement {
                    isolation: holdfast_cp::process::Isolation::None,
                    limits: holdfast_cp::process::Limits::None,
                }
            }
        };
        Ok(Arc::new(Controller {
            store,
            cp,
            admin_token_hash: hash_token(settings.admin_token.expose()),
            default_org,
            public_url: settings.public_url,
            locks: WorkspaceLocks::default(),
            destructive: WorkspaceLocks::default(),
            observed: Mutex::new(HashMap::new()),
            events: EventBus::default(),
            reconciler: settings.reconciler,
            metrics: metrics::Metrics::default(),
            replica_id: settings.replica_id,
            confinement,
            over_quota: Mutex::new(Default::default()),
            reconcile_soon: tokio::sync::Notify::new(),
            session_ttl: settings.session_ttl,
            last_known: Mutex::new(HashMap::new()),
            usage_recorded: Mutex::new(HashMap::new()),
            wakes: Mutex::new(reconciler::Wakes::default()),
            wakes_changed: tokio::sync::Notify::new(),
        }))
    }

    /// Begins a graceful shutdown: ends the event streams, which would
    /// otherwise keep their connections (and so the server) open.
    pub fn begin_shutdown(&self) {
        self.events.close();
    }

    /// The status-change events, for `GET /events` and the canvas.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Counters and latency sums since the server started.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// What the control plane gives a workspace started now.
    pub fn confinement(&self) -> &holdfast_cp::process::Confinement {
        &self.confinement
    }

    /// How long a canvas session lasts after sign-in.
    pub fn session_ttl(&self) -> std::time::Duration {
        self.session_ttl
    }

    /// How often a runtime is asked to heartbeat.
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        self.reconciler.heartbeat_interval
    }

    /// Asks the reconciler loop for a pass now rather than at its next tick.
    pub fn nudge_reconciler(&self) {
        self.reconcile_soon.notify_one();
    }

    /// Checks volume quotas every `usage_interval`.
    pub fn spawn_quota_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ctl = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ctl.reconciler.usage_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = ctl.check_quotas().await {
                    tracing::debug!(error = %e, "checking quotas failed; will retry");
                }
            }
        })
    }

    /// Samples the control plane's measured sizes into the usage history
    /// every four usage passes, at most every 5 minutes: the chart's
    /// buckets are 15 minutes wide, so this is several samples a bucket,
    /// without a listing of every volume at each pass (the quota check
    /// asks for the over-quota ones only).
    pub fn spawn_usage_history(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ctl = self.clone();
        tokio::spawn(async move {
            let period =
                (ctl.reconciler.usage_interval * 4).min(std::time::Duration::from_secs(300));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = ctl.record_usage().await {
                    tracing::debug!(error = %e, "sampling usage history failed; will retry");
                }
            }
        })
    }

    /// Runs the reconciler: see [`Controller::run_reconciler`].
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ctl = self.clone();
        tokio::spawn(async move { ctl.run_reconciler().await })
    }
}

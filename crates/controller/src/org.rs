//! An org's tree as a whole: what an import plans against, and the one
//! transaction that writes an import's intent before compute acts.
//!
//! The document and the plan are the platform's (`crates/platform/src/org`):
//! parsing and a pure function of the document and the live tree. What
//! reads or writes the store is here.
//!
//! **Architecture Invariant:** nothing reachable from here erases data. An
//! import's removals are written without erase and finished through
//! [`Controller::finish_retaining_removal`] (stop, then keep the data
//! `retained`); `crates/platform/tests/architecture.rs` walks the calls.

use crate::events::Event;
use crate::{Caller, Controller, DataAfterDelete, Error, Resource, Result};
use holdfast_domain::{Millis, Status, VolumeState, now_millis};
use holdfast_store::{ImportWrite, StoreError, WorkspaceRow};
use uuid::Uuid;

impl Controller {
    /// The org an import or export applies to: an org token's own; the
    /// admin's `requested`, or the default org. Another org is not found.
    pub async fn target_org(&self, caller: &Caller, requested: Option<Uuid>) -> Result<Uuid> {
        match (caller, requested) {
            (Caller::Admin, Some(org)) => Ok(self
                .store
                .get_org(org)
                .await?
                .ok_or(Error::NotFound(Resource::Org))?
                .id),
            (Caller::Admin, None) => Ok(self.default_org),
            (Caller::Org(own), Some(org)) if *own == org => Ok(org),
            (Caller::Org(_), Some(_)) => Err(Error::NotFound(Resource::Org)),
            (Caller::Org(own), None) => Ok(*own),
            (Caller::Workspace { .. }, _) => Err(Error::NotFound(Resource::Route)),
        }
    }

    /// The live workspaces of the org `org` (as [`Controller::target_org`]
    /// resolved it for `caller`).
    pub async fn org_tree(&self, caller: &Caller, org: Uuid) -> Result<Vec<WorkspaceRow>> {
        if !caller.manages_org(org) {
            return Err(Error::NotFound(Resource::Org));
        }
        Ok(self.store.list_workspaces(Some(org), false).await?)
    }

    /// What a removal does to a workspace's data: kept when it has a
    /// durable volume, nothing otherwise (an ephemeral workspace).
    pub async fn data_kept(&self, id: Uuid) -> Result<DataAfterDelete> {
        Ok(match self.cp.volume(id).await? {
            Some(v) if matches!(v.state, VolumeState::Active | VolumeState::Retained) => {
                DataAfterDelete::Retained
            }
            _ => DataAfterDelete::None,
        })
    }

    /// Until when a removed workspace's retained data is kept, once known.
    pub async fn retained_until(&self, id: Uuid) -> Result<Option<Millis>> {
        Ok(match self.cp.volume(id).await? {
            Some(v) if v.state == VolumeState::Retained => v.retain_until,
            _ => None,
        })
    }

    /// Writes an import's every intent in one transaction (a compare-and-set
    /// against the tree it was planned on), then lets compute act: removals
    /// are finished deepest first (`write.removes` is in document order,
    /// parents first), creations are started by the reconciler loop.
    pub async fn apply_import(
        &self,
        caller: &Caller,
        org: Uuid,
        write: &ImportWrite,
    ) -> Result<()> {
        if !caller.manages_org(org) {
            return Err(Error::NotFound(Resource::Org));
        }
        let actor = caller.actor();
        self.store
            .apply_import(org, write, &actor, now_millis())
            .await
            .map_err(|e| match e {
                StoreError::ImportRaced(m) => Error::OrgChanged(m),
                other => other.into(),
            })?;
        // Ordering: the intent is durable; compute acts only now. A removal
        // that cannot be stopped yet is left to the reconciler, which
        // finishes it the same way (its removal asked for no erase).
        for id in write.removes.iter().rev() {
            self.events
                .publish(Event::status(Status::Removed, *id, org));
            if let Err(e) = self.finish_retaining_removal(*id, &actor).await {
                tracing::warn!(workspace_id = %id, error = %e, "stopping a removed workspace failed; the reconciler retries");
            }
        }
        // The reconciler starts what was created, as it would after a crash.
        if !write.creates.is_empty() {
            self.nudge_reconciler();
        }
        Ok(())
    }
}

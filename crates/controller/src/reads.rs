//! Reads: what a caller may see of workspaces and their volumes. Answered
//! from the store and the control plane; while the control plane does not
//! answer, from what this server last read, marked as such ([`Known`]).

use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_cp::{VolumeHistoryEntry, VolumeInfo};
use holdfast_domain::{DataPersistence, VolumeState};
use holdfast_store::WorkspaceRow;
use uuid::Uuid;

impl Controller {
    /// A workspace the caller may read (a workspace token reads itself);
    /// another org's is not found.
    pub async fn workspace(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceRow> {
        match self.store.get_workspace(id).await? {
            Some(ws) if caller.can_read(ws.id, ws.org_id) => Ok(ws),
            _ => Err(Error::NotFound(Resource::Workspace)),
        }
    }

    /// The workspaces the caller may list: an org token its own org's
    /// (another org asked for is an empty list), the admin's of `org` or
    /// all; removed ones only when asked.
    pub async fn workspaces(
        &self,
        caller: &Caller,
        org: Option<Uuid>,
        include_removed: bool,
    ) -> Result<Vec<WorkspaceRow>> {
        let org = match caller {
            Caller::Admin => org,
            Caller::Org(own) => {
                if org.is_some_and(|o| o != *own) {
                    return Ok(Vec::new());
                }
                Some(*own)
            }
            Caller::Workspace { .. } => return Err(Error::NotFound(Resource::Route)),
        };
        Ok(self.store.list_workspaces(org, include_removed).await?)
    }

    pub async fn volume_or_last_known(&self, id: Uuid) -> Result<Known> {
        match self.cp.volume(id).await {
            Ok(volume) => {
                let mut seen = self.last_known.lock().expect("last known");
                match &volume {
                    Some(v) => {
                        seen.insert(id, (v.clone(), holdfast_domain::now_millis()));
                    }
                    None => {
                        seen.remove(&id);
                    }
                }
                Ok(Known::Fresh(volume))
            }
            Err(holdfast_cp::CpError::Unreachable(reason)) => {
                tracing::debug!(workspace_id = %id, %reason, "answering with the last known volume");
                let seen = self
                    .last_known
                    .lock()
                    .expect("last known")
                    .get(&id)
                    .cloned();
                Ok(match seen {
                    Some((v, at)) => Known::LastKnown {
                        volume: Some(v),
                        as_of: Some(at),
                    },
                    None => Known::LastKnown {
                        volume: None,
                        as_of: None,
                    },
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The views of many workspaces from one listing of the control plane's
    /// volumes, rather than one control-plane call per workspace (which, on
    /// a remote control plane, is an HTTP request each).
    /// The volume of each of `rows`, in their order: one read of the
    /// control plane for all of them, or what was last known of each.
    pub async fn volumes_of(&self, rows: &[WorkspaceRow]) -> Result<Vec<Known>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        match self.cp.list_volumes(None).await {
            Ok(all) => {
                let mut newest = newest_volumes(all);
                // Kept as `volume_or_last_known` keeps a single read.
                let now = holdfast_domain::now_millis();
                let mut seen = self.last_known.lock().expect("last known");
                for ws in rows {
                    match newest.get(&ws.id) {
                        Some(v) => {
                            seen.insert(ws.id, (v.clone(), now));
                        }
                        None => {
                            seen.remove(&ws.id);
                        }
                    }
                }
                drop(seen);
                Ok(rows
                    .iter()
                    .map(|ws| Known::Fresh(newest.remove(&ws.id)))
                    .collect())
            }
            // The control plane is down: what this server last saw of each,
            // marked stale, as a single read answers.
            Err(holdfast_cp::CpError::Unreachable(reason)) => {
                tracing::debug!(%reason, "listing with the last known volumes");
                let seen = self.last_known.lock().expect("last known");
                Ok(rows
                    .iter()
                    .map(|ws| {
                        let known = seen.get(&ws.id);
                        Known::LastKnown {
                            volume: known.map(|(v, _)| v.clone()),
                            as_of: known.map(|(_, at)| *at),
                        }
                    })
                    .collect())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A workspace's usage over the last 24 hours (data size and restarts
    /// per 15-minute bucket, oldest first), from the bounded history the
    /// store keeps; a removed workspace still shows what was recorded.
    pub async fn usage_history(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Vec<holdfast_store::UsageSample>> {
        let ws = self.load_managed(caller, id).await?;
        Ok(self
            .store
            .usage_history(ws.id, holdfast_domain::now_millis())
            .await?)
    }

    /// A workspace's volume with its history (none while the control plane
    /// does not answer), and the workspace's saved-data mode.
    pub async fn workspace_data(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(
        Option<DataPersistence>,
        Known,
        Option<Vec<VolumeHistoryEntry>>,
    )> {
        let ws = self.load_managed(caller, id).await?;
        let mode = ws.resolved_mode.or(ws.compute.data_persistence);
        let known = self.volume_or_last_known(id).await?;
        let history = match &known {
            Known::Fresh(Some(v)) => Some(self.cp.volume_history(v.id).await?),
            _ => None,
        };
        Ok((mode, known, history))
    }

    /// The volumes the caller may see (in `state`, if given), each with its
    /// workspace's saved-data mode. One read of the workspaces (removed ones
    /// too) for visibility and mode, rather than one per volume.
    pub async fn volumes(
        &self,
        caller: &Caller,
        state: Option<VolumeState>,
    ) -> Result<Vec<(VolumeInfo, Option<DataPersistence>)>> {
        let own_org = match caller {
            Caller::Admin => None,
            Caller::Org(org) => Some(*org),
            Caller::Workspace { .. } => return Err(Error::NotFound(Resource::Route)),
        };
        let volumes = self.cp.list_volumes(state).await?;
        let workspaces: std::collections::HashMap<Uuid, WorkspaceRow> = self
            .store
            .list_workspaces(own_org, true)
            .await?
            .into_iter()
            .map(|w| (w.id, w))
            .collect();
        Ok(volumes
            .into_iter()
            .filter_map(|v| {
                let ws = workspaces.get(&v.workspace_id);
                let visible = match caller {
                    Caller::Admin => true,
                    _ => ws.is_some_and(|w| caller.manages_org(w.org_id)),
                };
                let mode = ws.and_then(|w| w.resolved_mode.or(w.compute.data_persistence));
                visible.then_some((v, mode))
            })
            .collect())
    }
}

fn newest_volumes(
    volumes: Vec<holdfast_cp::VolumeInfo>,
) -> std::collections::HashMap<Uuid, holdfast_cp::VolumeInfo> {
    use std::collections::hash_map::Entry;
    let mut newest = std::collections::HashMap::new();
    for v in volumes {
        match newest.entry(v.workspace_id) {
            Entry::Vacant(e) => {
                e.insert(v);
            }
            Entry::Occupied(mut e) => {
                let held: &holdfast_cp::VolumeInfo = e.get();
                if (v.created_at, v.updated_at) > (held.created_at, held.updated_at) {
                    e.insert(v);
                }
            }
        }
    }
    newest
}

/// A volume as fresh as the control plane gave it, or as last seen.
/// A workspace's volume as this server knows it.
#[derive(Debug, Clone)]
pub enum Known {
    /// Just read from the control plane (none: it has no durable data).
    Fresh(Option<holdfast_cp::VolumeInfo>),
    /// The control plane does not answer: what this server last read, and
    /// when (none: nothing seen yet).
    LastKnown {
        volume: Option<holdfast_cp::VolumeInfo>,
        as_of: Option<holdfast_domain::Millis>,
    },
}

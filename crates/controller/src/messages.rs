//! Where a workspace's messages go: the address its built-in runtime
//! registered, once it runs (waking a hibernated one).

use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_domain::DesiredState;
use std::time::{Duration, Instant};
use uuid::Uuid;

impl Controller {
    /// The URL of a registered, running runtime; waits (bounded) for one that
    /// is starting, and wakes a hibernated workspace.
    pub async fn runtime_url(&self, caller: &Caller, id: Uuid) -> Result<String> {
        let ws = self.load_live(caller, id).await?;
        // Only the built-in runtime registers an address to relay to; a
        // command never will, so there is nothing to wait for (nor to wake).
        // That holds of the command running now even when the configuration
        // has since changed to the built-in runtime, which only the next
        // start applies.
        if !ws.runtime.is_builtin() || self.observed(id).runs_command {
            return Err(Error::RuntimeHasNoMessages);
        }
        if ws.desired == DesiredState::Hibernated {
            self.store
                .set_desired(
                    &[id],
                    DesiredState::Running,
                    &caller.actor(),
                    holdfast_domain::AuditAction::WorkspaceWoken,
                    Some(serde_json::json!({"by": "message"})),
                    holdfast_domain::now_millis(),
                )
                .await?;
            self.reconcile(id).await?;
        } else if ws.desired != DesiredState::Running {
            return Err(Error::WorkspaceNotRunning(ws.desired));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ws = self
                .store
                .get_workspace(id)
                .await?
                .ok_or_else(|| Error::NotFound(Resource::Workspace))?;
            let alive = match ws.instance_id.as_deref() {
                Some(instance) => self.instance_runs(id, instance).await,
                None => false,
            };
            if !alive {
                // A runtime that just died: let the reconciler notice now
                // (and restart it after its backoff) rather than relay a
                // message to a dead address.
                if let Err(e) = self.reconcile(id).await {
                    tracing::warn!(workspace_id = %id, error = %e, "reconcile before relay failed");
                }
            } else if let Some(url) = ws.url {
                return Ok(url);
            }
            if Instant::now() > deadline {
                // The workspace's state, not a failure of this server: a
                // runtime still starting, or crashing and restarted.
                return Err(Error::RuntimeNotReady);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

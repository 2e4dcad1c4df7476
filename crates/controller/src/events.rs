//! Status-change events, fanned out to subscribers (`GET /events` sends them
//! as server-sent events).

use holdfast_domain::{Status, format_millis, now_millis};
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

/// One event, as sent to clients.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `WORKSPACE_ONLINE`, `WORKSPACE_OFFLINE`, …, `VOLUME_OVER_QUOTA`,
    /// `VOLUME_WITHIN_QUOTA`.
    #[serde(rename = "type")]
    pub kind: String,
    pub workspace_id: Uuid,
    pub at: String,
    /// Used to filter per org; not sent.
    #[serde(skip)]
    pub org_id: Uuid,
}

impl Event {
    /// An event that is not a status change (`VOLUME_OVER_QUOTA`, …).
    pub fn new(kind: &str, workspace_id: Uuid, org_id: Uuid) -> Self {
        Event {
            kind: kind.to_owned(),
            workspace_id,
            at: format_millis(now_millis()),
            org_id,
        }
    }

    pub fn status(status: Status, workspace_id: Uuid, org_id: Uuid) -> Self {
        Event {
            kind: format!("WORKSPACE_{}", status.as_str().to_ascii_uppercase()),
            workspace_id,
            at: format_millis(now_millis()),
            org_id,
        }
    }
}

pub struct EventBus {
    tx: broadcast::Sender<Event>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl EventBus {
    /// Ends every open event stream (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn publish(&self, ev: Event) {
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

//! Status-change events, fanned out to `GET /events` subscribers as
//! server-sent events.

use crate::App;
use crate::auth::Caller;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use holdfast_domain::{Status, format_millis, now_millis};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// One event, as sent to clients.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
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

#[utoipa::path(
    get, path = "/events",
    responses((status = 200, description = "text/event-stream of status changes", body = Event)),
    security(("bearer" = []))
)]
pub async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.events.subscribe();
    let closing = app.events.closing();
    let stream = futures_util::stream::unfold(
        (rx, caller, closing),
        |(mut rx, caller, mut closing)| async move {
            loop {
                let received = tokio::select! {
                    // A server shutting down ends every stream, so that open
                    // subscribers (a canvas tab) never hold up a graceful stop.
                    _ = closing.wait_for(|c| *c) => return None,
                    r = rx.recv() => r,
                };
                match received {
                    Ok(ev) if caller.can_read(ev.workspace_id, ev.org_id) => {
                        let data = serde_json::to_string(&ev).unwrap_or_default();
                        let sse = SseEvent::default().event(ev.kind.clone()).data(data);
                        return Some((Ok(sse), (rx, caller, closing)));
                    }
                    Ok(_) => continue,
                    // A slow subscriber skips what it missed rather than ending.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

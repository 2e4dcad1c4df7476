//! `GET /events`: the controller's status-change events as server-sent
//! events, each only to callers who may read its workspace.

use crate::App;
use crate::auth::Auth;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// One event, as sent to clients.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// `WORKSPACE_ONLINE`, `WORKSPACE_OFFLINE`, …, `VOLUME_OVER_QUOTA`,
    /// `VOLUME_WITHIN_QUOTA`.
    #[serde(rename = "type")]
    pub kind: String,
    pub workspace_id: Uuid,
    pub at: String,
}

#[utoipa::path(
    get, path = "/events",
    responses((status = 200, description = "text/event-stream of status changes", body = EventView)),
    security(("bearer" = []))
)]
pub async fn events(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.ctl.events().subscribe();
    let closing = app.ctl.events().closing();
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
                        let view = EventView {
                            kind: ev.kind,
                            workspace_id: ev.workspace_id,
                            at: ev.at,
                        };
                        let data = serde_json::to_string(&view).unwrap_or_default();
                        let sse = SseEvent::default().event(view.kind.clone()).data(data);
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

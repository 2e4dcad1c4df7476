//! `GET /workspaces/{id}/logs`: the tail of a workspace's log (its
//! processes' stdout and stderr, kept beside its data, never in it), as
//! text to read or download, or with `follow=true` as server-sent events,
//! one `log` event per line, for as long as the client listens.

use crate::App;
use crate::auth::Auth;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_bool, parse_id, parse_query};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use holdfast_cp::export::ByteStream;
use std::convert::Infallible;
use std::sync::Arc;

/// What a read of the log gives when `tail` is not said.
pub const DEFAULT_TAIL: u64 = 64 * 1024;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub struct LogsParams {
    /// How many bytes from the end of the log, 1 to 16777216 (default 65536).
    #[param(minimum = 1, maximum = 16777216)]
    tail: Option<u64>,
    /// Keep the response open and send what is written after the tail, as
    /// `text/event-stream` (`log` events, one per line).
    follow: Option<bool>,
}

#[utoipa::path(
    get, path = "/workspaces/{id}/logs",
    params(("id" = Uuid, Path, description = "workspace id"), LogsParams),
    responses(
        (status = 200, description = "the log's tail as text/plain, or with follow=true a text/event-stream of `log` events, one per line",
            content((String = "text/plain"), (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the backend keeps no log holdfast can read"),
        (status = 503, body = ErrorBody, description = "control_plane_unreachable"),
    ),
    security(("bearer" = []))
)]
pub async fn get_logs(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let mut tail = DEFAULT_TAIL;
    let mut follow = false;
    for (k, v) in parse_query(uri.query(), &["tail", "follow"])? {
        if k == "tail" {
            tail = v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=holdfast_cp::logs::MAX_TAIL).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_field",
                        format!(
                            "tail: must be a byte count from 1 to {}",
                            holdfast_cp::logs::MAX_TAIL
                        ),
                    )
                    .with("field", "tail")
                })?;
        } else {
            follow = parse_bool("follow", &v)?;
        }
    }
    let stream = app.ctl.logs(&caller, id, tail, follow).await?;
    if follow {
        let stream: ByteStream = stream.unwrap_or_else(|| Box::pin(futures_util::stream::empty()));
        // A server shutting down ends every follower, so that an open
        // canvas tab never holds up a graceful stop.
        let mut closing = app.ctl.events().closing();
        let stream: ByteStream = Box::pin(stream.take_until(async move {
            let _ = closing.wait_for(|c| *c).await;
        }));
        return Ok(Sse::new(lines_as_events(stream))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let filename = format!("holdfast-{id}.log");
    let body = match stream {
        Some(s) => Body::from_stream(s),
        None => Body::empty(),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{filename}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// One `log` event per complete line of `bytes` (a line still being
/// written waits for its end); bytes that are not UTF-8 are replaced.
fn lines_as_events(
    bytes: ByteStream,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(
        (
            bytes,
            Vec::<u8>::new(),
            std::collections::VecDeque::new(),
            false,
        ),
        |(mut bytes, mut partial, mut ready, mut done)| async move {
            loop {
                if let Some(line) = ready.pop_front() {
                    let event = SseEvent::default().event("log").data(line);
                    return Some((Ok(event), (bytes, partial, ready, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => {
                        partial.extend_from_slice(&chunk);
                        while let Some(at) = partial.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = partial.drain(..=at).collect();
                            ready.push_back(clean(&line[..line.len() - 1]));
                        }
                    }
                    // The end (or a read error): what is left is a last line.
                    Some(Err(_)) | None => {
                        if !partial.is_empty() {
                            ready.push_back(clean(&partial));
                            partial.clear();
                        }
                        done = true;
                    }
                }
            }
        },
    )
}

/// A line as event data: UTF-8 (lossy), without carriage returns, which an
/// event cannot carry (a progress bar's `\r` rewrites become one line).
fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line).replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_become_events_whatever_the_chunks() {
        let chunks: Vec<std::io::Result<axum::body::Bytes>> = vec![
            Ok(axum::body::Bytes::from_static(b"one\ntw")),
            Ok(axum::body::Bytes::from_static(b"o\r\n50%\r100%\n\xff\n")),
            Ok(axum::body::Bytes::from_static(b"last, unterminated")),
        ];
        let stream: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let events: Vec<String> = lines_as_events(stream)
            .map(|e| format!("{:?}", e.unwrap()))
            .collect()
            .await;
        assert_eq!(events.len(), 5, "{events:?}");
        for (event, text) in events.iter().zip([
            "data: one\\n",
            "data: two\\n",
            "data: 50%100%\\n",
            // U+FFFD, as the event's bytes print.
            "data: \\xef\\xbf\\xbd\\n",
            "data: last, unterminated\\n",
        ]) {
            assert!(event.contains(text), "{event} has {text}");
        }
    }
}

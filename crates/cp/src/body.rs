//! The one body limit of holdfast's HTTP edges: the platform's API and the
//! control plane's (`cp serve`) read request bodies through
//! [`read_limited`], at most [`MAX_BODY_BYTES`], and a body that does not
//! arrive within its deadline fails with [`BodyDeadline`]. Each edge maps
//! a [`BodyError`] to its own error type.

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use std::fmt;

/// The largest request body either edge reads: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit.
    TooLarge,
    /// It did not arrive within the body timeout.
    TimedOut,
    /// The connection broke off (or the body stream failed otherwise).
    Unreadable,
}

/// The error a body's stream gives once its deadline has passed (set by the
/// platform server's deadline middleware).
#[derive(Debug)]
pub struct BodyDeadline;

impl fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive within the body timeout")
    }
}

impl std::error::Error for BodyDeadline {}

fn is_deadline(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cursor = Some(e);
    while let Some(e) = cursor {
        if e.is::<BodyDeadline>() {
            return true;
        }
        cursor = e.source();
    }
    false
}

/// Reads a whole body of at most `max` bytes, stopping as soon as it is
/// over (the rest is never buffered).
pub async fn read_limited(body: Body, max: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if is_deadline(&e) {
                BodyError::TimedOut
            } else {
                BodyError::Unreadable
            }
        })?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_told_apart_through_wrapping() {
        let wrapped = axum::Error::new(BodyDeadline);
        assert!(is_deadline(&wrapped));
        assert!(!is_deadline(&axum::Error::new(std::io::Error::other("x"))));
    }

    #[tokio::test]
    async fn the_limit_is_a_limit() {
        let exact = Body::from(vec![b'x'; 16]);
        assert_eq!(read_limited(exact, 16).await.unwrap().len(), 16);
        let over = Body::from(vec![b'x'; 17]);
        assert_eq!(read_limited(over, 16).await, Err(BodyError::TooLarge));
        // As the deadline middleware fails a slow body.
        let failing = Body::from_stream(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err::<Bytes, axum::BoxError>(Box::new(BodyDeadline)),
        ]));
        assert_eq!(read_limited(failing, 16).await, Err(BodyError::TimedOut));
        let broken = Body::from_stream(futures_util::stream::iter(vec![Err::<Bytes, _>(
            std::io::Error::other("reset"),
        )]));
        assert_eq!(read_limited(broken, 16).await, Err(BodyError::Unreadable));
    }
}

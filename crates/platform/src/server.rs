//! The HTTP server loop shared by `holdfast serve` and `holdfast cp serve`:
//! HTTP/1.1 over hyper with slow clients cut off, and a graceful shutdown.
//!
//! Three limits, each configurable (the tests use short ones):
//! - **header**: a request's head must arrive within this long of its first
//!   byte (and a new connection's first request within this long of the
//!   accept); otherwise the connection is closed.
//! - **idle**: a kept-alive connection that sends nothing for this long
//!   after a response is closed.
//! - **body**: a request's whole body must arrive within this long of its
//!   head; a JSON body that does not is answered 408 (see `body.rs`).
//!
//! hyper has one knob for the first two, `header_read_timeout`, and starts
//! its clock as soon as it waits for a head, idle or not. To tell an idle
//! kept-alive connection from a client that dribbles a head, the
//! connection's reads are counted, and the timer hyper is given (used by
//! hyper's HTTP/1 server for the header timeout alone) waits `idle` until a
//! byte of the next request arrives, then `header` from that byte.

use crate::body;
use axum::Router;
use hyper::rt::Sleep;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limit = timeouts.body;
    let router = router.layer(axum::middleware::from_fn(move |req, next| {
        body::deadline(req, next, limit)
    }));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather
                    // than spin, as a busy server would otherwise.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let reads = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(CountingStream {
            inner: stream,
            reads: reads.clone(),
        });
        let timer = HeadTimer {
            reads,
            first: Arc::new(AtomicBool::new(true)),
            header: timeouts.header,
            idle: timeouts.idle,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(timer)
            .header_read_timeout(timeouts.header)
            .keep_alive(true)
            .serve_connection(io, TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away or is cut off is no server error.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A TCP stream that counts the reads that brought bytes, so that the
/// header timer can tell when a request starts.
struct CountingStream {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The timer of one connection. hyper's HTTP/1 server asks it for one sleep
/// per request head it waits for (its header read timeout), and for nothing
/// else, so the deadline hyper passes is replaced by the rule of the module
/// docs.
#[derive(Clone)]
struct HeadTimer {
    reads: Arc<AtomicU64>,
    /// Whether no head has been waited for yet on this connection.
    first: Arc<AtomicBool>,
    header: Duration,
    idle: Duration,
}

impl HeadTimer {
    fn head_sleep(&self) -> HeadSleep {
        let first = self.first.swap(false, Ordering::Relaxed);
        // A new connection's first request gets the header budget from the
        // accept; later ones may idle first.
        let wait = if first { self.header } else { self.idle };
        HeadSleep {
            reads: self.reads.clone(),
            seen: self.reads.load(Ordering::Relaxed),
            header: self.header,
            started: first,
            sleep: Box::pin(tokio::time::sleep(wait)),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.head_sleep())
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.head_sleep())
    }
}

/// Waits `idle` for a first byte, then `header` from it. hyper polls it
/// after every read that did not complete the head, which is when it looks
/// whether bytes came.
struct HeadSleep {
    reads: Arc<AtomicU64>,
    seen: u64,
    header: Duration,
    started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.started && self.reads.load(Ordering::Relaxed) != self.seen {
            self.started = true;
            let deadline = tokio::time::Instant::now() + self.header;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

//! Reading a claim's data over the API's exec: a program (`holdfast census`
//! or `holdfast archive`) runs in a Pod that mounts the claim, and its
//! stdout comes back over the API server's websocket.
//!
//! Split in two so that each half is tested on its own: [`Exec`] is the
//! transport (kube-rs's `Api::exec`, a websocket upgrade; the tests put an
//! in-memory one in its place, since `tower-test` cannot play an upgrade),
//! and the functions here turn what it gives ([`ExecOutput`]: stdout,
//! stderr, the exit status that comes after them) into a size or an export
//! stream.
//!
//! **Architecture Invariant:** an export stream ends cleanly only after the
//! program's exit status said success; a program that failed part-way, or
//! a connection that closed without a status, ends the stream with an
//! error, so a cut-off archive is never a complete-looking download.

use crate::export::ByteStream;
use crate::tree::Census;
use crate::{CpError, CpResult};
use async_trait::async_trait;
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a started exec gives.
pub struct ExecOutput {
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves once the program has exited (after its stdout and stderr
    /// closed); `None`: the connection ended without saying.
    pub status: Pin<Box<dyn Future<Output = Option<Status>> + Send>>,
    /// Whatever keeps the connection open (dropping it ends the exec).
    pub keep: Box<dyn Send>,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// The program exited with this code.
    Code(i32),
    /// The API server or kubelet failed it (the message of its Status).
    Failure(String),
    /// The connection closed with no status.
    Lost,
}

impl Exit {
    /// Reads the Status the API server sends on its status channel:
    /// `Success`, or `Failure` with reason `NonZeroExitCode` and the code
    /// as the message of an `ExitCode` cause.
    pub fn of(status: Option<Status>) -> Exit {
        let Some(s) = status else {
            return Exit::Lost;
        };
        if s.status.as_deref() == Some("Success") {
            return Exit::Success;
        }
        if s.reason.as_deref() == Some("NonZeroExitCode")
            && let Some(code) = s
                .details
                .as_ref()
                .and_then(|d| d.causes.as_ref())
                .into_iter()
                .flatten()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message.as_deref()?.parse().ok())
        {
            return Exit::Code(code);
        }
        Exit::Failure(s.message.unwrap_or_else(|| "the exec failed".to_owned()))
    }
}

/// Runs a program in a container of a Pod, stdout and stderr attached.
#[async_trait]
pub trait Exec: Send + Sync + 'static {
    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
    ) -> kube::Result<ExecOutput>;
}

/// The API server's exec (a websocket, kube-rs's `ws` feature).
pub struct KubeExec(pub kube::Client);

#[async_trait]
impl Exec for KubeExec {
    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
    ) -> kube::Result<ExecOutput> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.0.clone(), namespace);
        let params = kube::api::AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = pods.exec(pod, argv, &params).await?;
        let stdout = attached.stdout().expect("stdout was asked for");
        let stderr = attached.stderr().expect("stderr was asked for");
        let status = attached.take_status().expect("the status is taken once");
        Ok(ExecOutput {
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            status: Box::pin(status),
            keep: Box::new(attached),
        })
    }
}

/// The most of a program's stderr kept for its error message.
const STDERR_KEPT: usize = 4096;

/// Reads stderr to its end (so that the program never blocks on it),
/// keeping its first [`STDERR_KEPT`] bytes.
fn drain_stderr(mut stderr: Pin<Box<dyn AsyncRead + Send>>) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = STDERR_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).trim().to_owned()
    })
}

/// What a failed run of `what` means for the caller. A refusal of
/// `holdfast archive` (exit 3) is the data's, named; the rest is the
/// cluster's.
fn failure(what: &str, exit: &Exit, stderr: &str) -> CpError {
    match exit {
        Exit::Code(code) if *code == i32::from(crate::export::ARCHIVE_REFUSED) => {
            CpError::ExportRefused(stderr.to_owned())
        }
        // 126/127: the helper's image has no holdfast binary at its path.
        Exit::Code(code @ (126 | 127)) => CpError::Conflict(format!(
            "{what}: the image of the Pod that reads the claim has no holdfast binary at {} \
             (exit {code}: {stderr}); use an image that holds it (--container-image)",
            super::manifest::RUNTIME_EXE
        )),
        Exit::Code(code) => CpError::Other(anyhow::anyhow!(
            "{what}: the reading program exited {code}: {stderr}"
        )),
        Exit::Failure(message) => CpError::Unavailable(format!(
            "{what}: the API server's exec failed: {message} {stderr}"
        )),
        Exit::Success => CpError::Other(anyhow::anyhow!("{what}: succeeded, but unusable")),
        Exit::Lost => CpError::Unavailable(format!(
            "{what}: the exec's connection to the API server closed before the program said \
             how it ended {stderr}"
        )),
    }
}

/// The [`Census`] that `holdfast census DIR` printed.
pub async fn read_census(mut out: ExecOutput) -> CpResult<Census> {
    let stderr = drain_stderr(out.stderr);
    let mut text = Vec::new();
    // A census is one line: anything past 64 KiB is not one.
    let read = (&mut out.stdout)
        .take(64 * 1024)
        .read_to_end(&mut text)
        .await;
    let exit = Exit::of(out.status.await);
    let stderr = stderr.await.unwrap_or_default();
    drop(out.keep);
    let what = "measuring the claim";
    if exit != Exit::Success {
        return Err(failure(what, &exit, &stderr));
    }
    read.map_err(|e| CpError::Unavailable(format!("{what}: reading the exec's output: {e}")))?;
    Census::parse(&String::from_utf8_lossy(&text)).ok_or_else(|| {
        CpError::Other(anyhow::anyhow!(
            "{what}: the census printed no count ({stderr})"
        ))
    })
}

const CHUNK: usize = 64 * 1024;

/// The export stream of `holdfast archive DIR`'s stdout. The first bytes
/// are awaited here, so that a refusal (which writes none) is an error of
/// the call, a clear 409, and never a broken download. `release` runs
/// once the stream has ended or was dropped (the helper Pod goes).
pub async fn archive_stream(
    mut out: ExecOutput,
    release: impl Future<Output = ()> + Send + 'static,
) -> CpResult<ByteStream> {
    let stderr = drain_stderr(out.stderr);
    let mut first = vec![0u8; CHUNK];
    let n = match out.stdout.read(&mut first).await {
        Ok(n) => n,
        Err(e) => {
            release.await;
            return Err(CpError::Unavailable(format!(
                "exporting the claim: reading the exec's output: {e}"
            )));
        }
    };
    if n == 0 {
        let exit = Exit::of(out.status.await);
        let stderr = stderr.await.unwrap_or_default();
        drop(out.keep);
        release.await;
        return Err(match exit {
            Exit::Success => CpError::Other(anyhow::anyhow!(
                "exporting the claim: the archiver exited 0 and wrote nothing"
            )),
            other => failure("exporting the claim", &other, &stderr),
        });
    }
    first.truncate(n);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
    let mut stdout = out.stdout;
    let status = out.status;
    let keep = out.keep;
    tokio::spawn(async move {
        let pumped = async {
            if tx.send(Ok(Bytes::from(first))).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if tx.send(Ok(chunk)).await.is_err() {
                            // The client went away: the exec ends with `keep`.
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            // Ordering: the end of the stream waits for the exit status.
            let exit = Exit::of(status.await);
            if exit != Exit::Success {
                let stderr = stderr.await.unwrap_or_default();
                let e = failure("exporting the claim", &exit, &stderr);
                tracing::warn!(error = %e, "an export over exec failed part-way");
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        };
        pumped.await;
        drop(keep);
        release.await;
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )))
}

#[cfg(test)]
mod tests {
    //! The stream handling over in-memory streams: what the websocket
    //! would carry, without one.
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn success() -> Option<Status> {
        Some(Status {
            status: Some("Success".to_owned()),
            ..Status::default()
        })
    }

    fn exit_code(code: i32) -> Option<Status> {
        serde_json::from_value(serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        }))
        .unwrap()
    }

    fn output(stdout: Vec<u8>, stderr: &str, status: Option<Status>) -> ExecOutput {
        ExecOutput {
            stdout: Box::pin(std::io::Cursor::new(stdout)),
            stderr: Box::pin(std::io::Cursor::new(stderr.as_bytes().to_vec())),
            status: Box::pin(async move { status }),
            keep: Box::new(()),
        }
    }

    fn released() -> (Arc<AtomicBool>, impl Future<Output = ()> + Send + 'static) {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        (flag, async move { f.store(true, Ordering::SeqCst) })
    }

    /// A real export of a small tree, as `holdfast archive` writes it.
    fn archive_bytes() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/notes.txt"), b"hello").unwrap();
        let plan = crate::export::check(dir.path()).unwrap();
        let mut out = Vec::new();
        crate::export::write_archive(dir.path(), plan, &mut out).unwrap();
        out
    }

    async fn collect(mut s: ByteStream) -> Result<Vec<u8>, io::Error> {
        let mut all = Vec::new();
        while let Some(chunk) = s.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[test]
    fn exit_statuses_are_read_as_the_api_server_sends_them() {
        assert_eq!(Exit::of(success()), Exit::Success);
        assert_eq!(Exit::of(exit_code(3)), Exit::Code(3));
        assert_eq!(Exit::of(None), Exit::Lost);
        let other = Status {
            status: Some("Failure".to_owned()),
            message: Some("container not found (\"helper\")".to_owned()),
            ..Status::default()
        };
        assert_eq!(
            Exit::of(Some(other)),
            Exit::Failure("container not found (\"helper\")".to_owned())
        );
    }

    #[tokio::test]
    async fn a_whole_archive_streams_through_and_ends_after_success() {
        let bytes = archive_bytes();
        let (done, release) = released();
        let s = archive_stream(output(bytes.clone(), "", success()), release)
            .await
            .unwrap();
        assert_eq!(collect(s).await.unwrap(), bytes);
        // The release runs after the end (on the pump's task).
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !done.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the helper is released");
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for e in tar.entries().unwrap() {
            names.push(
                String::from_utf8_lossy(&e.unwrap().path_bytes())
                    .trim_end_matches('/')
                    .to_owned(),
            );
        }
        names.sort();
        assert_eq!(names, vec!["memory", "memory/notes.txt"]);
    }

    #[tokio::test]
    async fn an_archive_cut_off_by_a_failure_or_a_lost_connection_ends_in_an_error() {
        for status in [exit_code(1), None] {
            let mut bytes = archive_bytes();
            bytes.truncate(bytes.len() / 2);
            let (done, release) = released();
            let s = archive_stream(output(bytes, "read error: EIO", status), release)
                .await
                .unwrap();
            let err = collect(s).await.unwrap_err();
            assert!(err.to_string().contains("exporting the claim"), "{err}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(done.load(Ordering::SeqCst));
        }
        // The positive control: the same half archive with a success
        // status is passed through as it is (the status is what decides).
        let mut bytes = archive_bytes();
        bytes.truncate(bytes.len() / 2);
        let (_, release) = released();
        let s = archive_stream(output(bytes.clone(), "", success()), release)
            .await
            .unwrap();
        assert_eq!(collect(s).await.unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_of_the_call_naming_the_entry() {
        let (done, release) = released();
        let err = archive_stream(
            output(
                Vec::new(),
                "memory/sock: a socket cannot be exported",
                exit_code(3),
            ),
            release,
        )
        .await
        .err()
        .expect("refused");
        assert!(matches!(err, CpError::ExportRefused(_)), "{err}");
        assert!(err.to_string().contains("memory/sock"), "{err}");
        assert!(done.load(Ordering::SeqCst), "released at once");
        let (_, release) = released();
        let err = archive_stream(output(Vec::new(), "no such file", exit_code(127)), release)
            .await
            .err()
            .expect("no binary");
        assert!(err.to_string().contains("has no holdfast binary"), "{err}");
    }

    #[tokio::test]
    async fn a_census_is_read_only_after_a_success() {
        let line = "entries=3 bytes=5 longest=16 depth=2\n";
        let c = read_census(output(line.as_bytes().to_vec(), "", success()))
            .await
            .unwrap();
        assert_eq!((c.entries, c.bytes), (3, 5));
        let err = read_census(output(line.as_bytes().to_vec(), "boom", exit_code(1)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exited 1: boom"), "{err}");
        let err = read_census(output(b"garbage".to_vec(), "", success()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no count"), "{err}");
    }
}

//! [`HttpCp`]: the control-plane interface over HTTP, for `serve --cp-url`.
//!
//! The control plane is another service, so its answers are untrusted input:
//! JSON answers are read up to 64 KiB and never logged nor echoed into errors
//! (an error names the operation and the status only). `stop` is retried
//! three times with backoff; a `status` that cannot be read means "still
//! running" (restarting on a guess could run a workspace twice); a provision
//! succeeds on 201 only.

use crate::export::ByteStream;
use crate::sweep::SweepReport;
use crate::wire::{
    ActorBody, AuditAnswer, AuditQuery, ErrorAnswer, HistoryAnswer, HoldAnswer, HoldBody,
    LogsQuery, PAGE, StatusAnswer, StatusQuery, StopAnswer, StopQuery, SweepBody, VolumeAnswer,
    VolumesAnswer, VolumesQuery, route,
};
use crate::{
    Actor, ControlPlane, CpError, CpResult, InstanceState, InstanceStatus, ProvisionRequest,
    Provisioned, VolumeHistoryEntry, VolumeInfo,
};
use async_trait::async_trait;
use futures_util::StreamExt;
use holdfast_domain::{VolumeReason, VolumeState};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use std::time::Duration;
use uuid::Uuid;

/// The most of a JSON answer that is read.
pub const MAX_ANSWER: usize = 64 * 1024;

pub struct HttpCp {
    base: String,
    secret: String,
    tenant_token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for HttpCp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the tenant token never print.
        f.debug_struct("HttpCp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What went wrong with one call, without the answer's body.
enum CallError {
    Transport,
    Status(StatusCode, Option<String>),
    Oversized,
    Malformed,
}

impl CallError {
    fn into_cp(self, op: &str) -> CpError {
        match self {
            CallError::Transport => {
                CpError::Unreachable(format!("{op}: the control plane did not answer"))
            }
            CallError::Oversized => CpError::Other(anyhow::anyhow!(
                "{op}: the control plane's answer is over 64 KiB"
            )),
            CallError::Malformed => CpError::Other(anyhow::anyhow!(
                "{op}: the control plane's answer is not the expected JSON"
            )),
            CallError::Status(status, code) => {
                CpError::from_wire(op, status.as_u16(), code.as_deref())
            }
        }
    }
}

impl HttpCp {
    pub fn new(base: &str, secret: &str, tenant_token: &str) -> anyhow::Result<HttpCp> {
        Ok(HttpCp {
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
            tenant_token: tenant_token.to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .header("X-Holdfast-Tenant-Token", &self.tenant_token)
    }

    /// Sends, then reads at most [`MAX_ANSWER`] bytes of the answer.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<(StatusCode, Vec<u8>), CallError> {
        let resp = rb.send().await.map_err(|_| CallError::Transport)?;
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| CallError::Transport)?;
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(CallError::Oversized);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// A call whose success is exactly `expect`, decoded as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        expect: StatusCode,
    ) -> Result<T, CallError> {
        let (status, body) = self.send(rb).await?;
        if status != expect {
            let code = serde_json::from_slice::<ErrorAnswer>(&body)
                .ok()
                .map(|e| e.code);
            return Err(CallError::Status(status, code));
        }
        serde_json::from_slice(&body).map_err(|_| CallError::Malformed)
    }

    /// A call answered 200 with a `T`.
    async fn get<T: DeserializeOwned>(&self, op: &str, rb: reqwest::RequestBuilder) -> CpResult<T> {
        self.call(rb, StatusCode::OK)
            .await
            .map_err(|e| e.into_cp(op))
    }
}

#[async_trait]
impl ControlPlane for HttpCp {
    async fn provision(&self, req: ProvisionRequest) -> CpResult<Provisioned> {
        let rb = self.request(Method::POST, route::PROVISION).json(&req);
        self.call(rb, StatusCode::CREATED)
            .await
            .map_err(|e| e.into_cp("provision"))
    }

    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        let query = StopQuery {
            instance_id: instance_id.map(str::to_owned),
            ..StopQuery::default()
        };
        retry_stop(|| async {
            let rb = self
                .request(Method::DELETE, &route::workspace(workspace_id))
                .query(&query);
            self.call::<StopAnswer>(rb, StatusCode::OK)
                .await
                .map(|_| ())
        })
        .await
        .map_err(|e| e.into_cp("stop"))
    }

    async fn stop_and_prune(
        &self,
        workspace_id: Uuid,
        instance_id: Option<&str>,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>> {
        let query = StopQuery {
            instance_id: instance_id.map(str::to_owned),
            prune: true,
            actor: Some(actor.to_owned()),
        };
        let answer: StopAnswer = retry_stop(|| async {
            let rb = self
                .request(Method::DELETE, &route::workspace(workspace_id))
                .query(&query);
            self.call(rb, StatusCode::OK).await
        })
        .await
        .map_err(|e| e.into_cp("stop and prune"))?;
        Ok(answer.volume)
    }

    async fn confinement(&self) -> CpResult<crate::process::Confinement> {
        self.get("info", self.request(Method::GET, route::INFO))
            .await
    }

    async fn check_image(&self, image: Option<&holdfast_domain::ImageRef>) -> CpResult<()> {
        let query = crate::wire::ImageQuery {
            image: image.map(|i| i.as_str().to_owned()),
        };
        let rb = self.request(Method::GET, route::IMAGE_CHECK).query(&query);
        match self
            .call::<crate::wire::ImageAnswer>(rb, StatusCode::OK)
            .await
        {
            Ok(_) => Ok(()),
            // The control plane's sentence is not echoed; the image is ours
            // to name.
            Err(CallError::Status(StatusCode::CONFLICT, Some(code)))
                if code == "image_not_found" =>
            {
                Err(CpError::ImageMissing(match image {
                    Some(image) => format!(
                        "the container image {image} is not on the control plane's engine (pull, build or import it there)"
                    ),
                    None => "the control plane's default container image is not on its engine"
                        .to_owned(),
                }))
            }
            Err(e) => Err(e.into_cp("checking the image")),
        }
    }

    async fn status(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<InstanceStatus> {
        let rb = self
            .request(Method::GET, &route::status(workspace_id))
            .query(&StatusQuery {
                instance_id: Some(instance_id.to_owned()),
            });
        match self.call::<StatusAnswer>(rb, StatusCode::OK).await {
            Ok(a) => Ok(InstanceStatus {
                state: a.state,
                reason: a.reason,
            }),
            // A control plane that cannot be reached says nothing about the
            // workspace: it is taken to be still running.
            Err(CallError::Transport) => Ok(InstanceStatus::plain(InstanceState::Running)),
            Err(e) => Err(e.into_cp("status")),
        }
    }

    async fn retain_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
        reason: VolumeReason,
    ) -> CpResult<Option<VolumeInfo>> {
        let rb = self
            .request(Method::POST, &route::retain(workspace_id))
            .json(&ActorBody {
                actor: actor.to_owned(),
                reason: Some(reason),
            });
        match self.get::<VolumeAnswer>("retain", rb).await {
            Ok(a) => Ok(a.volume),
            // Never provisioned there: nothing to retain.
            Err(CpError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_hold(
        &self,
        workspace_id: Uuid,
        reason: Option<&str>,
        actor: Actor<'_>,
    ) -> CpResult<()> {
        let method = if reason.is_some() {
            Method::PUT
        } else {
            Method::DELETE
        };
        let rb = self
            .request(method, &route::hold(workspace_id))
            .json(&HoldBody {
                actor: actor.to_owned(),
                reason: reason.map(str::to_owned),
            });
        let answer: HoldAnswer = self.get("hold", rb).await?;
        if answer.held != reason.is_some() {
            return Err(CpError::Other(anyhow::anyhow!(
                "the control plane answered a hold call with held={}",
                answer.held
            )));
        }
        Ok(())
    }

    async fn volume(&self, workspace_id: Uuid) -> CpResult<Option<VolumeInfo>> {
        let rb = self.request(Method::GET, &route::volume(workspace_id));
        match self.get::<VolumeAnswer>("volume", rb).await {
            Ok(a) => Ok(a.volume),
            Err(CpError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn volume_history(&self, volume_id: Uuid) -> CpResult<Vec<VolumeHistoryEntry>> {
        let rb = self.request(Method::GET, &route::history(volume_id));
        Ok(self
            .get::<HistoryAnswer>("volume history", rb)
            .await?
            .history)
    }

    async fn list_volumes(&self, state: Option<VolumeState>) -> CpResult<Vec<VolumeInfo>> {
        // Paged, so that every answer stays under the 64 KiB cap.
        let mut all = Vec::new();
        loop {
            let rb = self
                .request(Method::GET, route::VOLUMES)
                .query(&VolumesQuery {
                    state: state.map(|s| s.as_str().to_owned()),
                    offset: all.len(),
                    limit: Some(PAGE),
                });
            let page = self.get::<VolumesAnswer>("list volumes", rb).await?.volumes;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    async fn restore_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>> {
        let rb = self
            .request(Method::POST, &route::restore(workspace_id))
            .json(&ActorBody {
                actor: actor.to_owned(),
                reason: None,
            });
        match self.get::<VolumeAnswer>("restore", rb).await {
            Ok(a) => Ok(a.volume),
            Err(CpError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn logs(
        &self,
        workspace_id: Uuid,
        tail: u64,
        follow: bool,
    ) -> CpResult<Option<ByteStream>> {
        let resp = self
            .request(Method::GET, &route::logs(workspace_id))
            .query(&LogsQuery { tail, follow })
            // A follower reads for as long as its reader does.
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|_| CallError::Transport.into_cp("logs"))?;
        match resp.status() {
            StatusCode::OK => Ok(Some(Box::pin(
                resp.bytes_stream()
                    .map(|r| r.map_err(std::io::Error::other)),
            ))),
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                let code = resp.json::<ErrorAnswer>().await.ok().map(|e| e.code);
                Err(CallError::Status(status, code).into_cp("logs"))
            }
        }
    }

    async fn export(&self, workspace_id: Uuid) -> CpResult<ByteStream> {
        let resp = self
            .request(Method::GET, &route::export(workspace_id))
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|_| CallError::Transport.into_cp("export"))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let code = resp.json::<ErrorAnswer>().await.ok().map(|e| e.code);
            return Err(CallError::Status(status, code).into_cp("export"));
        }
        // The archive itself is streamed through, not capped: it is the
        // workspace's data, not an answer to parse.
        Ok(Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        ))
    }

    async fn sweep(&self, dry_run: bool, actor: Actor<'_>) -> CpResult<SweepReport> {
        let rb = self.request(Method::POST, route::SWEEP).json(&SweepBody {
            dry_run,
            actor: Some(actor.to_owned()),
        });
        self.get("sweep", rb).await
    }

    async fn audit_events(
        &self,
        workspace_id: Option<Uuid>,
        limit: i64,
    ) -> CpResult<Vec<holdfast_store::AuditEvent>> {
        let limit = usize::try_from(limit).unwrap_or(0);
        let mut all: Vec<holdfast_store::AuditEvent> = Vec::new();
        while all.len() < limit {
            let want = (limit - all.len()).min(PAGE);
            let rb = self.request(Method::GET, route::AUDIT).query(&AuditQuery {
                workspace_id,
                offset: all.len(),
                limit: Some(want),
            });
            let page = self.get::<AuditAnswer>("audit", rb).await?.events;
            let done = page.len() < want;
            all.extend(page.into_iter().map(Into::into));
            if done {
                break;
            }
        }
        Ok(all)
    }
}

/// A stop is retried three times with backoff (four tries in all): a stop
/// that fails leaves a process running that was asked to go away.
async fn retry_stop<T, F, Fut>(mut attempt: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            // A 4xx will not get better by asking again.
            Err(CallError::Status(s, code)) if s.is_client_error() => {
                return Err(CallError::Status(s, code));
            }
            Err(e) if tries > 3 => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

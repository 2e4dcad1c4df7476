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
use crate::{
    Actor, ControlPlane, CpError, CpResult, InstanceState, ProvisionRequest, Provisioned,
    VolumeHistoryEntry, VolumeInfo,
};
use async_trait::async_trait;
use futures_util::StreamExt;
use holdfast_domain::VolumeState;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// The most of a JSON answer that is read.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Items per page of a listing: small enough that a page stays under
/// [`MAX_ANSWER`].
const PAGE: usize = 100;

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
            CallError::Status(status, code) => match (status, code.as_deref()) {
                (StatusCode::CONFLICT, Some("data_erased")) => CpError::DataErased,
                // The control plane's sentence names the entry, but answers
                // are never echoed into errors: say what the code means.
                (StatusCode::CONFLICT, Some("export_refused")) => CpError::ExportRefused(
                    "the workspace's data holds an entry an archive cannot include safely \
                     (a socket, a file hard-linked from outside its data, or an unreadable \
                     entry); the control plane's log names it"
                        .to_owned(),
                ),
                (StatusCode::CONFLICT, Some("image_not_found")) => CpError::ImageMissing(format!(
                    "{op}: the workspace's container image is not on the engine"
                )),
                (StatusCode::SERVICE_UNAVAILABLE, _) => CpError::Unavailable(format!(
                    "{op}: the control plane's backend is unavailable"
                )),
                (StatusCode::CONFLICT, _) => {
                    CpError::Conflict(format!("{op}: the control plane refused (409)"))
                }
                (StatusCode::NOT_FOUND, _) => {
                    CpError::NotFound(format!("{op}: not found on the control plane"))
                }
                (StatusCode::BAD_REQUEST, _) => CpError::BadRequest(format!(
                    "{op}: the control plane rejected the request (400)"
                )),
                (s, _) => CpError::Other(anyhow::anyhow!(
                    "{op}: the control plane answered {}",
                    s.as_u16()
                )),
            },
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
            let code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned));
            return Err(CallError::Status(status, code));
        }
        serde_json::from_slice(&body).map_err(|_| CallError::Malformed)
    }

    async fn get_volume_field<T: DeserializeOwned>(
        &self,
        op: &str,
        rb: reqwest::RequestBuilder,
        field: &str,
    ) -> CpResult<T> {
        let v: Value = self
            .call(rb, StatusCode::OK)
            .await
            .map_err(|e| e.into_cp(op))?;
        serde_json::from_value(v.get(field).cloned().unwrap_or(Value::Null))
            .map_err(|_| CallError::Malformed.into_cp(op))
    }
}

#[async_trait]
impl ControlPlane for HttpCp {
    async fn provision(&self, req: ProvisionRequest) -> CpResult<Provisioned> {
        let rb = self
            .request(Method::POST, "/cp/workspaces/provision")
            .json(&req);
        self.call(rb, StatusCode::CREATED)
            .await
            .map_err(|e| e.into_cp("provision"))
    }

    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        let mut query = vec![];
        if let Some(i) = instance_id {
            query.push(("instance_id", i.to_owned()));
        }
        retry_stop(|| async {
            let rb = self
                .request(Method::DELETE, &format!("/cp/workspaces/{workspace_id}"))
                .query(&query);
            self.call::<Value>(rb, StatusCode::OK).await.map(|_| ())
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
        let mut query = vec![("prune", "true".to_owned()), ("actor", actor.to_owned())];
        if let Some(i) = instance_id {
            query.push(("instance_id", i.to_owned()));
        }
        let answer: Value = retry_stop(|| async {
            let rb = self
                .request(Method::DELETE, &format!("/cp/workspaces/{workspace_id}"))
                .query(&query);
            self.call::<Value>(rb, StatusCode::OK).await
        })
        .await
        .map_err(|e| e.into_cp("stop and prune"))?;
        serde_json::from_value(answer.get("volume").cloned().unwrap_or(Value::Null))
            .map_err(|_| CallError::Malformed.into_cp("stop and prune"))
    }

    async fn confinement(&self) -> CpResult<crate::process::Confinement> {
        let rb = self.request(Method::GET, "/cp/info");
        let v = self
            .call::<Value>(rb, StatusCode::OK)
            .await
            .map_err(|e| e.into_cp("info"))?;
        serde_json::from_value(v).map_err(|_| CallError::Malformed.into_cp("info"))
    }

    async fn check_image(&self, image: Option<&holdfast_domain::ImageRef>) -> CpResult<()> {
        let mut rb = self.request(Method::GET, "/cp/images/check");
        if let Some(image) = image {
            rb = rb.query(&[("image", image.as_str())]);
        }
        match self.call::<Value>(rb, StatusCode::OK).await {
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

    async fn status(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<InstanceState> {
        let rb = self
            .request(
                Method::GET,
                &format!("/cp/workspaces/{workspace_id}/status"),
            )
            .query(&[("instance_id", instance_id)]);
        match self.call::<Value>(rb, StatusCode::OK).await {
            Ok(v) => serde_json::from_value(v.get("state").cloned().unwrap_or(Value::Null))
                .map_err(|_| CallError::Malformed.into_cp("status")),
            // A control plane that cannot be reached says nothing about the
            // workspace: it is taken to be still running.
            Err(CallError::Transport) => Ok(InstanceState::Running),
            Err(e) => Err(e.into_cp("status")),
        }
    }

    async fn retain_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
        reason: &str,
    ) -> CpResult<Option<VolumeInfo>> {
        let rb = self
            .request(
                Method::POST,
                &format!("/cp/workspaces/{workspace_id}/volume/retain"),
            )
            .json(&json!({"actor": actor, "reason": reason}));
        match self.get_volume_field("retain", rb, "volume").await {
            // Never provisioned there: nothing to retain.
            Err(CpError::NotFound(_)) => Ok(None),
            other => other,
        }
    }

    async fn volume(&self, workspace_id: Uuid) -> CpResult<Option<VolumeInfo>> {
        let rb = self.request(
            Method::GET,
            &format!("/cp/workspaces/{workspace_id}/volume"),
        );
        match self.get_volume_field("volume", rb, "volume").await {
            Err(CpError::NotFound(_)) => Ok(None),
            other => other,
        }
    }

    async fn volume_history(&self, volume_id: Uuid) -> CpResult<Vec<VolumeHistoryEntry>> {
        let rb = self.request(Method::GET, &format!("/cp/volumes/{volume_id}/history"));
        self.get_volume_field("volume history", rb, "history").await
    }

    async fn list_volumes(&self, state: Option<VolumeState>) -> CpResult<Vec<VolumeInfo>> {
        // Paged, so that every answer stays under the 64 KiB cap.
        let mut all = Vec::new();
        loop {
            let mut rb = self.request(Method::GET, "/cp/volumes").query(&[
                ("offset", all.len().to_string()),
                ("limit", PAGE.to_string()),
            ]);
            if let Some(s) = state {
                rb = rb.query(&[("state", s.as_str())]);
            }
            let page: Vec<VolumeInfo> =
                self.get_volume_field("list volumes", rb, "volumes").await?;
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
            .request(
                Method::POST,
                &format!("/cp/workspaces/{workspace_id}/volume/restore"),
            )
            .json(&json!({"actor": actor}));
        match self.get_volume_field("restore", rb, "volume").await {
            Err(CpError::NotFound(_)) => Ok(None),
            other => other,
        }
    }

    async fn export(&self, workspace_id: Uuid) -> CpResult<ByteStream> {
        let resp = self
            .request(
                Method::GET,
                &format!("/cp/workspaces/{workspace_id}/volume/export"),
            )
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|_| CallError::Transport.into_cp("export"))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let code = resp
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned));
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
        let rb = self
            .request(Method::POST, "/cp/sweep")
            .json(&json!({"dry_run": dry_run, "actor": actor}));
        self.call(rb, StatusCode::OK)
            .await
            .map_err(|e| e.into_cp("sweep"))
    }

    async fn audit_events(
        &self,
        workspace_id: Option<Uuid>,
        limit: i64,
    ) -> CpResult<Vec<holdfast_store::AuditEvent>> {
        let mut all: Vec<holdfast_store::AuditEvent> = Vec::new();
        while (all.len() as i64) < limit {
            let want = (limit - all.len() as i64).min(PAGE as i64);
            let mut rb = self.request(Method::GET, "/cp/audit").query(&[
                ("offset", all.len().to_string()),
                ("limit", want.to_string()),
            ]);
            if let Some(ws) = workspace_id {
                rb = rb.query(&[("workspace_id", ws.to_string())]);
            }
            let page: Vec<Value> = self.get_volume_field("audit", rb, "events").await?;
            let done = (page.len() as i64) < want;
            all.extend(page.into_iter().filter_map(|e| {
                Some(holdfast_store::AuditEvent {
                    id: Uuid::parse_str(e.get("id")?.as_str()?).ok()?,
                    at: e.get("at")?.as_i64()?,
                    actor: e.get("actor")?.as_str()?.to_owned(),
                    action: e.get("action")?.as_str()?.to_owned(),
                    workspace_id: e
                        .get("workspace_id")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok()),
                    volume_id: e
                        .get("volume_id")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok()),
                    reason: e.get("reason").and_then(Value::as_str).map(str::to_owned),
                    detail: e.get("detail").cloned().filter(|d| !d.is_null()),
                })
            }));
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

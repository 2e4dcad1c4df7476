//! The Kubernetes backend: each running workspace is a bare Pod
//! `ws-<workspace-id>` in one namespace, its persist data a
//! PersistentVolumeClaim `ws-<workspace-id>` (SPEC §14). The objects are
//! built by the pure functions of [`manifest`].
//!
//! The traps of this engine, and how each is avoided by construction:
//! - ownerReferences on a claim let the garbage collector erase it: nothing
//!   holdfast creates has any ([`manifest`], pinned by a test);
//! - StorageClasses default to `reclaimPolicy: Delete`: once a claim is
//!   bound its PV is patched to `Retain` (and labelled as holdfast's), and a
//!   persist start is refused when holdfast may not patch PVs;
//! - a Deployment's rolling update double-attaches a ReadWriteOnce volume:
//!   a workspace is one bare Pod of a fixed name, so the API server's
//!   AlreadyExists gives at most one;
//! - deleting a claim while a Pod still uses it leaves it Terminating: the
//!   erase deletes the Pod and waits until it is gone first;
//! - deleting a PV before its claim leaks the disk: the erase patches the PV
//!   to `Delete` and deletes the claim, and the PV controller reclaims it.
//!
//! **Architecture Invariant:** a claim is deleted in one place,
//! [`KubernetesBackend::delete_claim`], called only by
//! [`Backend::erase_volume`] (the sweeper's erase); a test reads this file
//! to keep it so. Stops, restarts and shutdowns delete Pods only, each with
//! a uid precondition so that a Pod made by another replica meanwhile is
//! never the one deleted.
//!
//! Several `serve` replicas share a namespace (and their PostgreSQL): Pods
//! outlive the replica that started them, so a restart adopts rather than
//! reaps, and a start that finds the Pod of the same config adopts it.
//! Observation: a watcher keeps a cache of the workspace Pods (relisting
//! after a 410 Gone), and reports exits as they happen.

pub mod exec;
pub mod manifest;

#[cfg(any(test, feature = "fake-k8s"))]
pub mod fake;
#[cfg(test)]
mod tests;

use crate::backend::{Backend, DataKind};
use crate::export::ByteStream;
use crate::process::{Confinement, Isolation, Limits, ProcessState, Spawn};
use crate::{CpError, CpResult};
use async_trait::async_trait;
use futures_util::StreamExt;
use holdfast_domain::{DataPersistence, ImageRef, StatusReason, StatusReasonKind, failpoint};
use holdfast_store::VolumeRow;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector;
use manifest::{
    ANNOTATION_CONFIG_HASH, ANNOTATION_INSTANCE, LABEL_DATA, LABEL_KIND, LABEL_ORG,
    LABEL_WORKSPACE, claim_name, pod_name,
};
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// The Kubernetes backend's settings (`--k8s-*`, `--kubeconfig`).
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The namespace every object lives in.
    pub namespace: String,
    /// A kubeconfig file; `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The image of a workspace whose runtime names none. It must hold the
    /// holdfast binary at [`manifest::RUNTIME_EXE`] for the built-in runtime.
    pub image: ImageRef,
    /// The StorageClass of new claims (`None`: the cluster's default).
    pub storage_class: Option<String>,
    /// How long a start waits for a new claim to bind before it leaves the
    /// PV's patch to `Retain` to a background task.
    pub bind_wait: Duration,
    /// How long a deleted Pod (or PV) may take to be gone.
    pub gone_wait: Duration,
    /// How long a helper Pod (which reads a claim) may take to run.
    pub helper_wait: Duration,
}

impl KubernetesSettings {
    pub fn new(namespace: String, kubeconfig: Option<PathBuf>, image: ImageRef) -> Self {
        KubernetesSettings {
            namespace,
            kubeconfig,
            image,
            storage_class: None,
            bind_wait: Duration::from_secs(30),
            gone_wait: Duration::from_secs(60),
            helper_wait: Duration::from_secs(120),
        }
    }
}

pub struct KubernetesBackend {
    client: kube::Client,
    settings: KubernetesSettings,
    /// The watcher's cache of workspace Pods (absent in tests that play the
    /// API server request by request).
    cache: Option<reflector::Store<Pod>>,
    exits: tokio::sync::broadcast::Sender<Uuid>,
    /// Whether the API server said holdfast may patch PVs (asked once).
    may_patch_pvs: AtomicBool,
    /// How programs run in a Pod (the API's exec).
    exec: Arc<dyn exec::Exec>,
    /// Why each workspace's Pod does not run, from the Warning events the
    /// events watcher saw (cleared once its Pod runs or goes).
    reasons: Reasons,
}

/// Readable reasons by workspace, with the uid of the Pod each is about,
/// shared with the watchers.
type Reasons =
    Arc<std::sync::Mutex<std::collections::HashMap<Uuid, (Option<String>, StatusReason)>>>;

const POST: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

const PATCH: PatchParams = PatchParams {
    dry_run: false,
    force: false,
    field_manager: None,
    field_validation: None,
};

/// The status code of an API answer, if it was one.
fn code_of(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn message_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Whether trying again may help: the API server failed or shed load, or
/// did not answer.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// How long one request may wait for the API server's answer: past it
/// the attempt counts as failed (and is tried again).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `f` up to four times while it fails transiently (or does not
/// answer within [`ATTEMPT_TIMEOUT`]), backing off 100, 200, 400 ms.
async fn retry<T, F, Fut>(mut f: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        let answer = match tokio::time::timeout(ATTEMPT_TIMEOUT, f()).await {
            Ok(answer) => answer,
            Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            )))),
        };
        match answer {
            Err(e) if transient(&e) && attempt < 3 => {
                tracing::debug!(error = %e, attempt, "the API server failed; trying again");
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}

/// Maps an API error to the control plane's kinds, each with a message an
/// operator can act on.
fn api_error(what: &str, namespace: &str, e: kube::Error) -> CpError {
    let msg = message_of(&e);
    match code_of(&e) {
        Some(403) if msg.contains("exceeded quota") => CpError::Conflict(format!(
            "{what}: the namespace {namespace:?} is over its ResourceQuota: {msg}"
        )),
        Some(403) => CpError::Conflict(format!(
            "{what}: holdfast's service account lacks a permission in namespace \
             {namespace:?} (see deploy/kubernetes/rbac.yaml): {msg}"
        )),
        Some(404) if msg.contains("namespaces") => CpError::Unavailable(format!(
            "{what}: the namespace {namespace:?} does not exist (create it, or set \
             --k8s-namespace): {msg}"
        )),
        Some(409) => CpError::Conflict(format!("{what}: {msg}")),
        Some(400 | 422) => {
            CpError::BadRequest(format!("{what}: the API server refused the object: {msg}"))
        }
        Some(401) => CpError::Unavailable(format!(
            "{what}: the API server does not accept holdfast's credentials: {msg}"
        )),
        Some(c) if c >= 500 || c == 429 => CpError::Unavailable(format!(
            "{what}: the Kubernetes API server failed ({c}), tried 4 times: {msg}"
        )),
        // An object gone meanwhile (a Pod deleted by someone, a helper
        // reclaimed), or an answer of an API server holdfast does not
        // expect: the cluster's state, never the client's fault, and
        // passing as far as holdfast can tell.
        Some(c) => CpError::Unavailable(format!("{what}: the API server answered {c}: {msg}")),
        None => CpError::Unavailable(format!(
            "{what}: the Kubernetes API server is unreachable, tried 4 times ({msg})"
        )),
    }
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A Pod's state for the control plane: Pending and Running are running (a
/// Pod that cannot be scheduled is reported in the log with its reason);
/// Succeeded and Failed have exited.
fn pod_state(pod: &Pod) -> ProcessState {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => ProcessState::Exited(Some(0)),
        Some("Failed") => {
            let code = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code);
            ProcessState::Exited(code)
        }
        _ if pod.metadata.deletion_timestamp.is_some() => ProcessState::Exited(None),
        _ => ProcessState::Running,
    }
}

/// Why a Pod does not run, typed and readable, from its own status: an
/// unschedulable Pod (its PodScheduled condition: no node, a volume's node
/// affinity, an unbound claim), a container waiting on its image or in a
/// crash loop. A container being created is on its way: no reason.
pub fn pod_reason(pod: &Pod) -> Option<StatusReason> {
    let status = pod.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            // The condition carries the scheduler's message, the same as
            // its FailedScheduling event's.
            return classify("FailedScheduling", c.message.as_deref().unwrap_or(""));
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("");
            if let Some(why) = classify(reason, w.message.as_deref().unwrap_or("")) {
                return Some(why);
            }
        }
    }
    None
}

/// The one mapping from what Kubernetes says of a Pod (a Warning event's
/// reason, or a container's waiting reason, with its message) to a typed
/// [`StatusReason`] whose sentence names the cause. `None` for what is on
/// its way (ContainerCreating, PodInitializing) and for an empty reason.
/// A pure function: `kubernetes/tests.rs` pins it with a table.
pub fn classify(reason: &str, message: &str) -> Option<StatusReason> {
    use StatusReasonKind as K;
    let message = message.trim();
    let (kind, sentence) = match reason {
        "" | "ContainerCreating" | "PodInitializing" => return None,
        "FailedScheduling" if message.contains("volume node affinity conflict") => (
            K::VolumeNodeAffinity,
            format!(
                "not scheduled: its claim's volume is bound to a node or zone that no \
                 schedulable node is in (volume node affinity conflict): {message}"
            ),
        ),
        "FailedScheduling" if message.contains("unbound immediate PersistentVolumeClaims") => (
            K::ClaimUnbound,
            format!("not scheduled: its claim is not bound to a volume yet: {message}"),
        ),
        "FailedScheduling" | "Unschedulable" => (
            K::Unschedulable,
            format!("not scheduled: no node can take it: {message}"),
        ),
        "FailedAttachVolume" if message.contains("Multi-Attach") => (
            K::VolumeMultiAttach,
            format!(
                "its claim is still attached to another node (Multi-Attach); it starts once \
                 the other Pod that uses it is gone: {message}"
            ),
        ),
        "FailedAttachVolume" => (
            K::VolumeAttachFailed,
            format!("its volume cannot be attached: {message}"),
        ),
        "FailedMount" => (
            K::VolumeMountFailed,
            format!("its volume cannot be mounted: {message}"),
        ),
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => (
            K::ImagePull,
            format!("its image cannot be pulled ({reason}): {message}"),
        ),
        "Failed" | "InspectFailed" | "BackOff" if message.contains("image") => (
            K::ImagePull,
            format!("its image cannot be pulled: {message}"),
        ),
        "CrashLoopBackOff" => (
            K::CrashLoop,
            format!(
                "its program keeps exiting and is restarted with a back-off (CrashLoopBackOff): {message}"
            ),
        ),
        "BackOff" if message.contains("restarting failed container") => (
            K::CrashLoop,
            format!("its program keeps exiting and is restarted with a back-off: {message}"),
        ),
        other => (K::Other, format!("{other}: {message}")),
    };
    Some(StatusReason::new(
        kind,
        sentence.trim_end_matches([':', ' ']),
    ))
}

/// A Pod that holds a workspace's data at `/data`, for an exec.
struct Source {
    pod: String,
    container: &'static str,
    /// A helper made for this read, to remove afterwards.
    helper: bool,
}

fn workspace_of(meta: &kube::api::ObjectMeta) -> Option<Uuid> {
    label(meta, LABEL_WORKSPACE)?.parse().ok()
}

/// Deletes the Pod `name` if its uid is `uid` (any, with `None`); a Pod of
/// another uid (a newer start, perhaps by another replica) is left alone,
/// and one already gone is fine.
async fn delete_pod_in(pods: &Api<Pod>, name: &str, uid: Option<String>) -> kube::Result<()> {
    let params = uid_precondition(uid);
    match retry(|| pods.delete(name, &params)).await {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e) == Some(404) => Ok(()),
        // The uid precondition failed: the name belongs to a newer Pod.
        Err(e) if code_of(&e) == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

fn uid_precondition(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

impl KubernetesBackend {
    /// A client from `--kubeconfig` (or the in-cluster service account),
    /// and the watcher over the namespace's workspace Pods.
    pub async fn connect(settings: KubernetesSettings) -> anyhow::Result<Arc<Self>> {
        let config = match &settings.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    anyhow::anyhow!("--kubeconfig {}: cannot be read: {e}", path.display())
                })?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("--kubeconfig {}: not usable: {e}", path.display())
                    })?
            }
            None => kube::Config::incluster().map_err(|e| {
                anyhow::anyhow!(
                    "no --kubeconfig given and not running in a cluster ({e}): pass \
                     --kubeconfig FILE"
                )
            })?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| anyhow::anyhow!("building the Kubernetes client: {e}"))?;
        let backend = Self::with_client(client, settings, true);
        Ok(Arc::new(backend))
    }

    /// The backend over `client`; `watch` starts the Pod watcher.
    pub fn with_client(client: kube::Client, settings: KubernetesSettings, watch: bool) -> Self {
        let (exits, _) = tokio::sync::broadcast::channel(256);
        let reasons = Reasons::default();
        let cache = watch.then(|| {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
            let events: Api<CoreEvent> = Api::namespaced(client.clone(), &settings.namespace);
            observe_events(events, reasons.clone());
            observe(pods, exits.clone(), reasons.clone())
        });
        KubernetesBackend {
            reasons,
            exec: Arc::new(exec::KubeExec(client.clone())),
            client,
            settings,
            cache,
            exits,
            may_patch_pvs: AtomicBool::new(false),
        }
    }

    /// The same backend with another exec transport (tests play it in
    /// memory: `tower-test` cannot play a websocket upgrade).
    pub fn with_exec(mut self, exec: Arc<dyn exec::Exec>) -> Self {
        self.exec = exec;
        self
    }

    fn ns(&self) -> &str {
        &self.settings.namespace
    }

    fn err(&self, what: &str, e: kube::Error) -> CpError {
        api_error(what, self.ns(), e)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    async fn get_pod(&self, name: &str) -> CpResult<Option<Pod>> {
        let pods = self.pods();
        retry(|| pods.get_opt(name))
            .await
            .map_err(|e| self.err("reading the workspace's Pod", e))
    }

    async fn get_claim(&self, workspace_id: Uuid) -> CpResult<Option<PersistentVolumeClaim>> {
        let claims = self.claims();
        let name = claim_name(workspace_id);
        retry(|| claims.get_opt(&name))
            .await
            .map_err(|e| self.err("reading the workspace's claim", e))
    }

    /// Asks the API server (once, then remembered) whether holdfast may
    /// patch PersistentVolumes. Data safety: without it a claim of a
    /// `Delete` StorageClass could lose its disk to someone's `kubectl
    /// delete pvc`, so persist starts are refused.
    async fn check_may_patch_pvs(&self) -> CpResult<()> {
        if self.may_patch_pvs.load(Ordering::Relaxed) {
            return Ok(());
        }
        let review: SelfSubjectAccessReview = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": { "resourceAttributes": {
                "verb": "patch", "resource": "persistentvolumes", "group": "",
            }},
        }))
        .expect("a well-formed review");
        let reviews: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let answer = retry(|| reviews.create(&POST, &review))
            .await
            .map_err(|e| self.err("asking whether holdfast may patch PersistentVolumes", e))?;
        if answer.status.is_some_and(|s| s.allowed) {
            self.may_patch_pvs.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(CpError::Conflict(
                "refusing to create a persist workspace: holdfast may not patch \
                 PersistentVolumes, so it cannot set their reclaim policy to Retain and \
                 the data would be lost with its claim under a Delete StorageClass; grant \
                 `patch` on persistentvolumes (deploy/kubernetes/rbac.yaml) or run the \
                 workspace ephemeral"
                    .to_owned(),
            ))
        }
    }

    /// Creates the claim unless it exists (a restart finds its data there).
    /// Ordering: the store's record was written before this call.
    async fn ensure_claim(&self, spec: &Spawn, org_id: Uuid) -> CpResult<PersistentVolumeClaim> {
        if let Some(claim) = self.get_claim(spec.workspace_id).await? {
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(CpError::Conflict(
                    "the workspace's claim is being deleted; it cannot be started on it".to_owned(),
                ));
            }
            return Ok(claim);
        }
        let mut claim = manifest::workspace_claim(
            spec.workspace_id,
            org_id,
            spec.volume_size_gb,
            self.settings.storage_class.as_deref(),
        );
        // Data safety: a claim deleted outside holdfast left its PV
        // Released (Retain) with the data on it. A new empty claim would
        // bind a new disk and the workspace would start without its data:
        // the new claim is bound to that PV instead.
        let kept = self.kept_pv(spec.workspace_id).await?;
        if let Some(pv) = &kept {
            manifest::bind_to(&mut claim, pv);
            tracing::warn!(
                workspace_id = %spec.workspace_id,
                pv = pv.metadata.name,
                "the workspace's claim was deleted outside holdfast; a new claim is bound to its \
                 retained PersistentVolume"
            );
        }
        let claims = self.claims();
        match retry(|| claims.create(&POST, &claim)).await {
            Ok(made) => {
                if let Some(pv) = &kept {
                    self.claim_pv_for(pv, &made).await?;
                }
                Ok(made)
            }
            // Another replica made it meanwhile (or a retried create did).
            Err(e) if code_of(&e) == Some(409) => self
                .get_claim(spec.workspace_id)
                .await?
                .ok_or_else(|| CpError::Conflict("the workspace's claim vanished".to_owned())),
            Err(e) => Err(self.err("creating the workspace's claim", e)),
        }
    }

    /// The PV labelled as the workspace's that no claim holds any more
    /// (Released, or Available after someone cleared its claimRef), if any.
    async fn kept_pv(&self, workspace_id: Uuid) -> CpResult<Option<PersistentVolume>> {
        Ok(self
            .labelled_pvs(&format!("{LABEL_WORKSPACE}={workspace_id}"))
            .await?
            .into_iter()
            .filter(|pv| pv.metadata.deletion_timestamp.is_none())
            .find(|pv| {
                matches!(
                    pv.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Released" | "Available")
                )
            }))
    }

    /// Points a kept PV's claimRef at the new claim, so that the PV
    /// controller binds the two (and no other claim can take it).
    async fn claim_pv_for(
        &self,
        pv: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> CpResult<()> {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let patch = json!({ "spec": { "claimRef": {
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": self.ns(), "name": claim.metadata.name,
            "uid": claim.metadata.uid, "resourceVersion": null,
        }}});
        let volumes = self.volumes();
        let patch = Patch::Merge(&patch);
        retry(|| volumes.patch(&name, &PATCH, &patch))
            .await
            .map_err(|e| self.err("binding the retained PersistentVolume to the new claim", e))?;
        Ok(())
    }

    /// Patches the claim's PV to `Retain` and labels it as the workspace's,
    /// when the claim is bound. Returns whether it was bound.
    async fn retain_pv(&self, claim: &PersistentVolumeClaim) -> CpResult<bool> {
        let Some(pv_name) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
            return Ok(false);
        };
        let volumes = self.volumes();
        let pv = retry(|| volumes.get_opt(&pv_name))
            .await
            .map_err(|e| self.err("reading the claim's PersistentVolume", e))?;
        let Some(pv) = pv else {
            return Ok(false);
        };
        let ws = label(&claim.metadata, LABEL_WORKSPACE).unwrap_or_default();
        let org = label(&claim.metadata, LABEL_ORG).unwrap_or_default();
        let retained = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Retain");
        if retained && label(&pv.metadata, LABEL_WORKSPACE) == Some(ws) {
            return Ok(true);
        }
        let patch = json!({
            "metadata": { "labels": {
                LABEL_WORKSPACE: ws, LABEL_ORG: org, LABEL_KIND: "data",
                manifest::LABEL_MANAGED_BY: "holdfast",
            }},
            "spec": { "persistentVolumeReclaimPolicy": "Retain" },
        });
        let patch = Patch::Merge(&patch);
        retry(|| volumes.patch(&pv_name, &PATCH, &patch))
            .await
            .map_err(|e| self.err("patching the claim's PersistentVolume to Retain", e))?;
        Ok(true)
    }

    /// Waits (up to `bind_wait`) for the claim to bind, then retains its PV;
    /// past the wait a background task keeps waiting.
    async fn retain_when_bound(
        &self,
        workspace_id: Uuid,
        claim: PersistentVolumeClaim,
    ) -> CpResult<()> {
        if self.retain_pv(&claim).await? {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.settings.bind_wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(claim) = self.get_claim(workspace_id).await?
                && self.retain_pv(&claim).await?
            {
                return Ok(());
            }
        }
        tracing::warn!(
            %workspace_id,
            "the workspace's claim is not bound yet; its PV is patched to Retain by the sweeper \
             once it is (volume_workspaces checks every labelled claim)"
        );
        Ok(())
    }

    /// Deletes the Pod `name` if its uid is `uid`; a Pod of another uid (a
    /// newer start, perhaps by another replica) is left alone.
    async fn delete_pod(&self, name: &str, uid: Option<String>) -> CpResult<()> {
        delete_pod_in(&self.pods(), name, uid)
            .await
            .map_err(|e| self.err("deleting the workspace's Pod", e))
    }

    /// Waits until no Pod of `uid` holds `name`.
    async fn wait_pod_gone(&self, name: &str, uid: Option<&str>) -> CpResult<()> {
        let deadline = tokio::time::Instant::now() + self.settings.gone_wait;
        loop {
            match self.get_pod(name).await? {
                None => return Ok(()),
                Some(p) if uid.is_some() && p.metadata.uid.as_deref() != uid => return Ok(()),
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(CpError::Unavailable(format!(
                        "the Pod {name} was deleted but is still there after {:?}",
                        self.settings.gone_wait
                    )));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Deletes the Pod and waits until it is gone.
    async fn remove_pod(&self, pod: &Pod) -> CpResult<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone();
        self.delete_pod(&name, uid.clone()).await?;
        self.wait_pod_gone(&name, uid.as_deref()).await
    }

    /// The one place a claim is deleted: only [`Backend::erase_volume`]
    /// calls it, after the Pods that mount it are gone and its PV is set to
    /// `Delete`. The uid precondition makes sure the claim deleted is the
    /// one those checks were about.
    async fn delete_claim(&self, claim: &PersistentVolumeClaim) -> anyhow::Result<()> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let claims = self.claims();
        let params = uid_precondition(claim.metadata.uid.clone());
        match retry(|| claims.delete(&name, &params)).await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(anyhow::Error::new(
                self.err("deleting the workspace's claim", e),
            )),
        }
    }

    /// The PVs labelled as the workspace's.
    async fn labelled_pvs(&self, selector: &str) -> CpResult<Vec<PersistentVolume>> {
        let volumes = self.volumes();
        let lp = ListParams::default().labels(selector);
        Ok(retry(|| volumes.list(&lp))
            .await
            .map_err(|e| self.err("listing holdfast's PersistentVolumes", e))?
            .items)
    }

    /// Patches a PV to `Delete`: its claim's deletion then reclaims the disk.
    async fn release_pv(&self, pv_name: &str) -> anyhow::Result<()> {
        let volumes = self.volumes();
        let patch = json!({ "spec": { "persistentVolumeReclaimPolicy": "Delete" } });
        let patch = Patch::Merge(&patch);
        match retry(|| volumes.patch(pv_name, &PATCH, &patch)).await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(anyhow::Error::new(
                self.err("patching the PersistentVolume to Delete", e),
            )),
        }
    }

    async fn wait_pv_gone(&self, pv_name: &str) -> anyhow::Result<()> {
        let volumes = self.volumes();
        let deadline = tokio::time::Instant::now() + self.settings.gone_wait;
        loop {
            let pv = retry(|| volumes.get_opt(pv_name))
                .await
                .map_err(|e| self.err("reading the PersistentVolume", e))?;
            if pv.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the PersistentVolume {pv_name} is still there {:?} after its claim was \
                     deleted; the erase is resumed at the next pass",
                    self.settings.gone_wait
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The Pods of the namespace carrying `selector`.
    async fn list_pods(&self, selector: &str) -> CpResult<Vec<Pod>> {
        let pods = self.pods();
        let lp = ListParams::default().labels(selector);
        Ok(retry(|| pods.list(&lp))
            .await
            .map_err(|e| self.err("listing workspace Pods", e))?
            .items)
    }

    /// Why the workspace's Pod does not run, typed and readable, from what
    /// the watchers saw (see [`Self::reason_of`]). `None` when it runs, or
    /// nothing is known.
    pub fn why_not_running(&self, workspace_id: Uuid) -> Option<StatusReason> {
        let cache = self.cache.as_ref()?;
        let key = reflector::ObjectRef::new(&pod_name(workspace_id)).within(self.ns());
        let pod = cache.get(&key)?;
        self.reason_of(workspace_id, &pod)
    }

    /// Why `pod` does not run: the latest Warning event the events watcher
    /// saw about this very Pod (its uid), else its own status. A Running
    /// Pod has only what its own status says (a container in a crash loop).
    fn reason_of(&self, workspace_id: Uuid, pod: &Pod) -> Option<StatusReason> {
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            return pod_reason(pod);
        }
        let seen = self
            .reasons
            .lock()
            .expect("reasons")
            .get(&workspace_id)
            .cloned();
        match seen {
            Some((uid, why)) if uid.is_none() || uid == pod.metadata.uid => Some(why),
            _ => pod_reason(pod),
        }
    }

    /// Where a workspace's data of `kind` can be read: the ephemeral
    /// workspace's own Pod (an emptyDir lives only there), or a new helper
    /// Pod that mounts the claim read-only. `None`: there is no such data.
    async fn data_source(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<Option<Source>> {
        match kind {
            DataKind::Scratch => {
                let name = pod_name(workspace_id);
                let Some(pod) = self.get_pod(&name).await? else {
                    return Ok(None);
                };
                let ephemeral = label(&pod.metadata, LABEL_DATA) == Some("ephemeral");
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                Ok((ephemeral && running).then_some(Source {
                    pod: name,
                    container: "workspace",
                    helper: false,
                }))
            }
            DataKind::Volume => {
                let Some(claim) = self.get_claim(workspace_id).await? else {
                    return Ok(None);
                };
                Ok(Some(self.start_helper(workspace_id, &claim).await?))
            }
        }
    }

    /// Creates a helper Pod on the claim and waits until it runs (up to
    /// `helper_wait`; then it is removed and the reason it did not run is
    /// the error).
    async fn start_helper(
        &self,
        workspace_id: Uuid,
        claim: &PersistentVolumeClaim,
    ) -> CpResult<Source> {
        let claim_of = claim_name(workspace_id);
        // A Pod that mounts the claim pins the helper to its node.
        let node = self
            .list_pods(&format!("{LABEL_WORKSPACE}={workspace_id}"))
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim_of)
                    })
            })
            .find_map(|p| p.spec?.node_name);
        let org: Uuid = label(&claim.metadata, LABEL_ORG)
            .and_then(|o| o.parse().ok())
            .unwrap_or_default();
        let helper = manifest::helper_pod(
            workspace_id,
            org,
            &self.settings.image,
            Uuid::new_v4(),
            node.as_deref(),
        );
        let name = helper.metadata.name.clone().unwrap_or_default();
        let pods = self.pods();
        let made = retry(|| pods.create(&POST, &helper))
            .await
            .map_err(|e| self.err("creating the helper Pod that reads the claim", e))?;
        let source = Source {
            pod: name.clone(),
            container: "helper",
            helper: true,
        };
        let deadline = tokio::time::Instant::now() + self.settings.helper_wait;
        let mut seen = made;
        loop {
            match seen.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Running") => return Ok(source),
                Some(phase @ ("Failed" | "Succeeded")) => {
                    let why = pod_reason(&seen)
                        .map(|r| r.message)
                        .unwrap_or_else(|| format!("it ended {phase}"));
                    self.release(&source).await;
                    return Err(CpError::Unavailable(format!(
                        "the helper Pod that reads the claim did not run: {why}"
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let why = pod_reason(&seen)
                    .map(|r| r.message)
                    .unwrap_or_else(|| "still Pending".to_owned());
                self.release(&source).await;
                return Err(CpError::Unavailable(format!(
                    "the helper Pod that reads the claim did not run within {:?}: {why}",
                    self.settings.helper_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            match self.get_pod(&name).await? {
                Some(p) => seen = p,
                None => {
                    return Err(CpError::Unavailable(
                        "the helper Pod that reads the claim was deleted before it ran".to_owned(),
                    ));
                }
            }
        }
    }

    async fn exec_in(
        &self,
        source: &Source,
        argv: Vec<String>,
        what: &str,
    ) -> CpResult<exec::ExecOutput> {
        self.exec
            .exec(self.ns(), &source.pod, source.container, argv)
            .await
            .map_err(|e| self.err(what, e))
    }

    /// Removes a helper Pod (a workspace's own Pod is left alone).
    async fn release(&self, source: &Source) {
        if source.helper
            && let Err(e) = self.delete_pod(&source.pod, None).await
        {
            tracing::warn!(pod = source.pod, error = %e, "removing a helper Pod failed; the sweep removes it");
        }
    }

    /// The Pod of a workspace's instance: from the watcher's cache when it
    /// has it, else from the API server. The cache may lag: a Pod of another instance there (the one a start
    /// just replaced or adopted) is checked with the API server.
    async fn instance_pod(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<Option<Pod>> {
        let name = pod_name(workspace_id);
        if let Some(cache) = &self.cache {
            let key = reflector::ObjectRef::new(&name).within(self.ns());
            if let Some(pod) = cache.get(&key)
                && annotation(&pod.metadata, ANNOTATION_INSTANCE) == Some(instance_id)
            {
                return Ok(Some((*pod).clone()));
            }
        }
        self.get_pod(&name).await
    }
}

/// The watcher: a reflector cache of the namespace's workspace Pods, and an
/// exit notice for each Pod that finishes or is deleted. The watcher
/// relists by itself after an error (a 410 Gone among them), with backoff.
fn observe(
    pods: Api<Pod>,
    exits: tokio::sync::broadcast::Sender<Uuid>,
    reasons: Reasons,
) -> reflector::Store<Pod> {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{LABEL_KIND}=workspace"));
    let stream = reflector::reflector(writer, watcher::watcher(pods, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let relisted = matches!(event, Ok(Event::InitApply(_)));
            match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                    if let Some(reason) = pod_reason(&pod) {
                        tracing::warn!(
                            pod = pod.metadata.name,
                            reason = %reason,
                            "a workspace Pod does not run"
                        );
                    }
                    // A Pod that runs has got past whatever held it.
                    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        && let Some(id) = workspace_of(&pod.metadata)
                    {
                        reasons.lock().expect("reasons").remove(&id);
                    }
                    // Any change of a workspace's Pod (it exited, it is held
                    // for a new reason, it was let go and runs) is worth a
                    // look by the reconciler; the resync is only a safety
                    // net. A relist's `InitApply` of every Pod is left to
                    // the reconciler's own pass.
                    let changed = !relisted || matches!(pod_state(&pod), ProcessState::Exited(_));
                    if changed && let Some(id) = workspace_of(&pod.metadata) {
                        let _ = exits.send(id);
                    }
                }
                Ok(Event::Delete(pod)) => {
                    if let Some(id) = workspace_of(&pod.metadata) {
                        reasons.lock().expect("reasons").remove(&id);
                        let _ = exits.send(id);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watching workspace Pods (relisting)"),
            }
        }
    });
    reader
}

/// A Warning event about a workspace's Pod, as the workspace it is about
/// and its typed reason ([`classify`]): a Pod no node can take
/// (FailedScheduling, a claim's volume bound to a zone no schedulable node
/// is in), a claim still attached to another node (Multi-Attach), a volume
/// that cannot be mounted, an image that cannot be pulled, a crash loop.
/// Events of helper Pods and of other objects are not a workspace's.
pub fn event_reason(ev: &CoreEvent) -> Option<(Uuid, StatusReason)> {
    if ev.type_.as_deref() != Some("Warning") || ev.involved_object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let name = ev.involved_object.name.as_deref()?;
    let id: Uuid = name.strip_prefix("ws-")?.parse().ok()?;
    let why = classify(
        ev.reason.as_deref().unwrap_or(""),
        ev.message.as_deref().unwrap_or(""),
    )?;
    Some((id, why))
}

/// The events watcher: the Warning events of the namespace's Pods, each
/// kept as its workspace's latest reason (see [`event_reason`]). It
/// relists by itself after an error, like the Pod watcher.
fn observe_events(events: Api<CoreEvent>, reasons: Reasons) {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let config = watcher::Config::default().fields("involvedObject.kind=Pod,type=Warning");
    let stream = watcher::watcher(events, config).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(ev) | Event::InitApply(ev)) => {
                    if let Some((id, why)) = event_reason(&ev) {
                        tracing::warn!(workspace_id = %id, reason = %why, "a workspace Pod does not run");
                        let uid = ev.involved_object.uid.clone();
                        reasons.lock().expect("reasons").insert(id, (uid, why));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watching Pod events (relisting)"),
            }
        }
    });
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn confinement(&self) -> Confinement {
        Confinement {
            isolation: Isolation::Pod,
            limits: Limits::Enforced,
        }
    }

    fn builtin_argv(&self) -> Vec<String> {
        vec![manifest::RUNTIME_EXE.to_owned(), "runtime".to_owned()]
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %spec.workspace_id, instance_id = %spec.instance_id))]
    async fn spawn(&self, spec: Spawn, image: Option<&ImageRef>) -> CpResult<Confinement> {
        let image = image.unwrap_or(&self.settings.image);
        let org_id = spec.org_id;
        let claim = match spec.mode {
            DataPersistence::Persist => {
                self.check_may_patch_pvs().await?;
                Some(self.ensure_claim(&spec, org_id).await?)
            }
            DataPersistence::Ephemeral => None,
        };
        failpoint::hit("k8s.spawn.after_claim");
        let pod = manifest::workspace_pod(&spec, org_id, image);
        let name = pod_name(spec.workspace_id);
        let pods = self.pods();
        // At most one Pod per workspace: the fixed name makes a second
        // create answer AlreadyExists, and then the Pod there is adopted
        // (same config, still running) or replaced.
        let mut replaced = 0;
        loop {
            match retry(|| pods.create(&POST, &pod)).await {
                Ok(_) => break,
                Err(e) if code_of(&e) == Some(409) && replaced < 2 => {
                    replaced += 1;
                    let Some(found) = self.get_pod(&name).await? else {
                        // Gone between the create and the read: create again.
                        continue;
                    };
                    let same = annotation(&found.metadata, ANNOTATION_CONFIG_HASH)
                        == annotation(&pod.metadata, ANNOTATION_CONFIG_HASH);
                    let live = matches!(pod_state(&found), ProcessState::Running);
                    // Ephemeral data begins empty at every start: a new Pod.
                    if same && live && spec.mode == DataPersistence::Persist {
                        let patch = json!({ "metadata": {
                            "annotations": { ANNOTATION_INSTANCE: spec.instance_id },
                            // The uid precondition of a merge patch: it
                            // fails if the Pod was replaced meanwhile.
                            "uid": found.metadata.uid,
                        }});
                        let patch = Patch::Merge(&patch);
                        match retry(|| pods.patch(&name, &PATCH, &patch)).await {
                            Ok(_) => {
                                tracing::info!("adopted the running Pod of the same config");
                                break;
                            }
                            Err(e) if matches!(code_of(&e), Some(404 | 409)) => {}
                            Err(e) => return Err(self.err("adopting the workspace's Pod", e)),
                        }
                    }
                    // Another config, finished, or ephemeral: replace it.
                    self.remove_pod(&found).await?;
                }
                Err(e) if code_of(&e) == Some(409) => {
                    return Err(CpError::Conflict(
                        "another Pod of this workspace was created meanwhile (another replica \
                         started it); try again"
                            .to_owned(),
                    ));
                }
                Err(e) => {
                    let what = "creating the workspace's Pod";
                    return Err(self.err(what, e));
                }
            }
        }
        if let Some(claim) = claim
            && let Err(e) = self.retain_when_bound(spec.workspace_id, claim).await
        {
            // Data safety: a workspace whose PV cannot be set to Retain
            // does not run on it (its claim stays, and a later start, once
            // the permission is there, retains it).
            self.may_patch_pvs.store(false, Ordering::Relaxed);
            if let Ok(Some(pod)) = self.get_pod(&name).await {
                let _ = self.remove_pod(&pod).await;
            }
            return Err(e);
        }
        Ok(self.confinement())
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        let name = pod_name(workspace_id);
        let Some(pod) = self.get_pod(&name).await? else {
            return Ok(());
        };
        if let Some(wanted) = instance_id
            && annotation(&pod.metadata, ANNOTATION_INSTANCE) != Some(wanted)
        {
            // Another instance holds the name now: not ours to stop.
            return Ok(());
        }
        // Data safety: the Pod only. Its claim stays; an emptyDir goes with it.
        self.delete_pod(&name, pod.metadata.uid.clone()).await
    }

    async fn has_instance(&self, _workspace_id: Uuid) -> bool {
        // The spawn replaces (or adopts) whatever holds the Pod's name
        // itself, with a uid precondition: no stop first, which would end a
        // Pod a restart could adopt.
        false
    }

    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<Uuid>> {
        self.cache.as_ref().map(|_| self.exits.subscribe())
    }

    async fn state(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<ProcessState> {
        let Some(pod) = self.instance_pod(workspace_id, instance_id).await? else {
            return Ok(ProcessState::Unknown);
        };
        if annotation(&pod.metadata, ANNOTATION_INSTANCE) != Some(instance_id) {
            return Ok(ProcessState::Unknown);
        }
        Ok(pod_state(&pod))
    }

    /// The watchers' reason ([`Self::reason_of`]), for the Pod of
    /// this very instance (a Pod of another instance holding the name, one
    /// a restart just made, is not the one asked about).
    ///
    /// The Pod comes from the watcher's cache, else from the API server
    /// (the cache may not have a Pod created a moment ago yet).
    async fn status_reason(&self, workspace_id: Uuid, instance_id: &str) -> Option<StatusReason> {
        let pod = match self.instance_pod(workspace_id, instance_id).await {
            Ok(pod) => pod?,
            Err(e) => {
                tracing::debug!(%workspace_id, error = %e, "reading the Pod for its reason failed");
                return None;
            }
        };
        if annotation(&pod.metadata, ANNOTATION_INSTANCE) != Some(instance_id) {
            return None;
        }
        self.reason_of(workspace_id, &pod)
    }

    /// Pods outlive a replica, and other replicas share the namespace:
    /// nothing is stopped at start. A start of the same config adopts its
    /// Pod; one of another config replaces it.
    async fn reap_leftovers(&self) -> anyhow::Result<usize> {
        Ok(0)
    }

    /// A graceful shutdown of one replica leaves the Pods running: the
    /// workspaces are the cluster's, and another replica (or this one,
    /// restarted) adopts them.
    async fn stop_all(&self) {}

    /// `holdfast census /data` run over exec: in a helper Pod that mounts
    /// the claim read-only, or in the ephemeral workspace's own Pod.
    async fn data_bytes(&self, workspace_id: Uuid, kind: DataKind) -> anyhow::Result<Option<u64>> {
        let Some(source) = self.data_source(workspace_id, kind).await? else {
            return Ok(None);
        };
        let argv = vec![
            manifest::RUNTIME_EXE.to_owned(),
            "census".to_owned(),
            manifest::DATA_DIR.to_owned(),
        ];
        let out = self.exec_in(&source, argv, "measuring the claim").await;
        let census = match out {
            Ok(out) => exec::read_census(out).await,
            Err(e) => Err(e),
        };
        self.release(&source).await;
        Ok(Some(census?.bytes))
    }

    async fn has_data(&self, workspace_id: Uuid, kind: DataKind) -> bool {
        match kind {
            DataKind::Volume => matches!(self.get_claim(workspace_id).await, Ok(Some(_))),
            DataKind::Scratch => matches!(
                self.get_pod(&pod_name(workspace_id)).await,
                Ok(Some(p)) if label(&p.metadata, LABEL_DATA) == Some("ephemeral")
            ),
        }
    }

    /// `holdfast archive /data` run over exec (see [`Self::data_bytes`]):
    /// its stdout is the export, which ends cleanly only after the program
    /// said it succeeded. The helper Pod goes when the stream ends.
    async fn export(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<ByteStream> {
        let source = self
            .data_source(workspace_id, kind)
            .await?
            .ok_or_else(|| CpError::NotFound("the workspace has no data to export".to_owned()))?;
        let argv = vec![
            manifest::RUNTIME_EXE.to_owned(),
            "archive".to_owned(),
            manifest::DATA_DIR.to_owned(),
        ];
        let out = match self.exec_in(&source, argv, "exporting the claim").await {
            Ok(out) => out,
            Err(e) => {
                self.release(&source).await;
                return Err(e);
            }
        };
        let release = source.helper.then(|| {
            let pods = self.pods();
            let name = source.pod.clone();
            async move {
                // The helper has done its work; its name is its own.
                if let Err(e) = delete_pod_in(&pods, &name, None).await {
                    tracing::warn!(pod = name, error = %e, "removing a helper Pod failed; the sweep removes it");
                }
            }
        });
        exec::archive_stream(out, async move {
            if let Some(release) = release {
                release.await;
            }
        })
        .await
    }

    /// The workspace container's log, from the API server (the kubelet
    /// keeps it): its last `tail` bytes and, with `follow`, what it writes
    /// next. A follow reads the log from its start and skips what was
    /// already sent, so the tail and the rest meet exactly.
    async fn logs(
        &self,
        workspace_id: Uuid,
        tail: u64,
        follow: bool,
    ) -> CpResult<Option<ByteStream>> {
        let name = pod_name(workspace_id);
        let pods = self.pods();
        let params = kube::api::LogParams {
            container: Some("workspace".to_owned()),
            ..kube::api::LogParams::default()
        };
        // `seen`: the bytes of the container's own log read so far.
        let (text, seen) = match retry(|| pods.logs(&name, &params)).await {
            Ok(text) => {
                let seen = text.len();
                (text, seen)
            }
            Err(e) if code_of(&e) == Some(404) => return Ok(None),
            // A Pod whose container has not started has no log yet: what
            // holds it is the one line there is to read.
            Err(e) if code_of(&e) == Some(400) => match self.why_not_running(workspace_id) {
                Some(why) => (
                    format!("holdfast: the workspace's Pod is not running: {why}\n"),
                    0,
                ),
                None => (String::new(), 0),
            },
            Err(e) => return Err(self.err("reading the workspace's log", e)),
        };
        let tail = usize::try_from(tail.min(crate::logs::MAX_TAIL)).unwrap_or(usize::MAX);
        let shown = text.len();
        let head = bytes::Bytes::from(text.into_bytes()).slice(shown.saturating_sub(tail)..);
        let first = futures_util::stream::once(async move { Ok(head) });
        if !follow {
            return Ok(Some(Box::pin(first)));
        }
        let params = kube::api::LogParams {
            follow: true,
            ..params
        };
        let reader = pods
            .log_stream(&name, &params)
            .await
            .map_err(|e| self.err("following the workspace's log", e))?;
        let rest = futures_util::stream::unfold(
            (Box::pin(reader), seen),
            |(mut reader, mut skip)| async move {
                use futures_util::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => return None,
                        Ok(n) => {
                            let from = skip.min(n);
                            skip -= from;
                            if from < n {
                                let chunk = bytes::Bytes::copy_from_slice(&buf[from..n]);
                                return Some((Ok(chunk), (reader, skip)));
                            }
                        }
                        Err(e) => return Some((Err(e), (reader, 0))),
                    }
                }
            },
        );
        Ok(Some(Box::pin(first.chain(rest))))
    }

    /// Erase (SPEC §14): the Pods that mount the claim are deleted and gone,
    /// the PV is patched to `Delete`, the claim is deleted with a uid
    /// precondition, and the PV is confirmed gone. Every step is idempotent,
    /// so a pass interrupted anywhere (the record stays `erasing`) resumes.
    async fn erase_volume(&self, v: &VolumeRow) -> anyhow::Result<u64> {
        let ws = v.workspace_id.to_string();
        // Ordering: first every Pod that mounts the claim, so that the claim
        // is never deleted while in use (it would hang Terminating). A Pod
        // that runs ephemeral after a switch does not mount it and keeps
        // running.
        for pod in self.list_pods(&format!("{LABEL_WORKSPACE}={ws}")).await? {
            let mounts = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|vol| {
                    vol.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim_name(v.workspace_id))
                });
            if mounts {
                self.remove_pod(&pod).await?;
            }
        }
        let claim = self.get_claim(v.workspace_id).await?;
        // The PVs to reclaim: the claim's, and any labelled as this
        // workspace's (a claim already deleted by a previous pass, or a
        // Released PV the sweeper adopted).
        let mut pv_names: Vec<String> = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref()?.volume_name.clone())
            .into_iter()
            .collect();
        for pv in self
            .labelled_pvs(&format!("{LABEL_WORKSPACE}={ws}"))
            .await?
        {
            if let Some(name) = pv.metadata.name
                && !pv_names.contains(&name)
            {
                pv_names.push(name);
            }
        }
        // Ordering: the PV is set to Delete before the claim goes, so that
        // the claim's deletion reclaims the disk instead of leaking it.
        for pv in &pv_names {
            self.release_pv(pv).await?;
        }
        failpoint::hit("erase.mid");
        if let Some(claim) = &claim {
            self.delete_claim(claim).await?;
        }
        for pv in &pv_names {
            self.wait_pv_gone(pv).await?;
        }
        Ok(u64::try_from(v.bytes).unwrap_or(0))
    }

    /// Released PVs of holdfast's whose claim is gone: each is reported by
    /// the sweeper (the disk is kept, Retain; a start of its workspace
    /// binds a new claim to it; its erase reclaims it).
    async fn volume_notes(&self) -> anyhow::Result<Vec<(Uuid, String)>> {
        let mut notes = Vec::new();
        for pv in self.labelled_pvs(&format!("{LABEL_KIND}=data")).await? {
            let Some(id) = workspace_of(&pv.metadata) else {
                continue;
            };
            if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
                continue;
            }
            if self.get_claim(id).await?.is_some() {
                continue;
            }
            notes.push((
                id,
                format!(
                    "the PersistentVolume {} holds this workspace's data but its claim {} was \
                     deleted outside holdfast; the disk is kept (Retain): a start of the \
                     workspace binds a new claim to it, and only its erase reclaims it",
                    pv.metadata.name.as_deref().unwrap_or_default(),
                    claim_name(id)
                ),
            ));
        }
        Ok(notes)
    }

    /// The workspaces with a labelled claim, or a labelled PV whose claim
    /// is gone (Released: reported, never silently lost). Bound claims whose
    /// PV is not yet `Retain` are patched here too (a start that did not
    /// see its claim bind leaves it to this pass).
    async fn volume_workspaces(&self) -> anyhow::Result<Vec<Uuid>> {
        // Helpers a crashed read left behind end by their deadline
        // (activeDeadlineSeconds): the finished ones are removed here. A
        // running one may be serving a read and is left alone.
        for helper in self.list_pods(&format!("{LABEL_KIND}=helper")).await? {
            let phase = helper.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                let name = helper.metadata.name.clone().unwrap_or_default();
                self.delete_pod(&name, helper.metadata.uid.clone()).await?;
            }
        }
        let claims = self.claims();
        let lp = ListParams::default().labels(&format!("{LABEL_KIND}=data"));
        let list = retry(|| claims.list(&lp))
            .await
            .map_err(|e| self.err("listing holdfast's claims", e))?;
        let mut ids = Vec::new();
        for claim in list.items {
            let Some(id) = workspace_of(&claim.metadata) else {
                continue;
            };
            // The label and the name must agree: a claim someone labelled by
            // hand is not taken for another's data.
            if claim.metadata.name.as_deref() != Some(&claim_name(id)) {
                continue;
            }
            if let Err(e) = self.retain_pv(&claim).await {
                tracing::warn!(workspace_id = %id, error = %e, "patching a claim's PV to Retain failed");
            }
            ids.push(id);
        }
        for pv in self.labelled_pvs(&format!("{LABEL_KIND}=data")).await? {
            let Some(id) = workspace_of(&pv.metadata) else {
                continue;
            };
            let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Released") && !ids.contains(&id) {
                tracing::warn!(
                    workspace_id = %id,
                    pv = pv.metadata.name,
                    "a Released PersistentVolume of holdfast's has lost its claim; it is kept \
                     (Retain) and recorded retained"
                );
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

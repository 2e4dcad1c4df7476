//! The container backend: each workspace is a container of a Docker Engine
//! API server (Docker, or Podman's `podman system service`), its data a named
//! volume of that engine (SPEC §14).
//!
//! Names and labels, all under this control plane's scope id (`holdfast.cp`,
//! kept in `<data-dir>/cp-id`) so that two servers sharing an engine never
//! touch each other's:
//! - container `holdfast-<workspace-id>`, labels `holdfast.workspace`,
//!   `holdfast.instance`, `holdfast.cp`, `holdfast.kind=workspace`,
//!   `holdfast.data=persist|ephemeral`. The engine refuses a second
//!   container of one name, so a workspace never has two.
//! - persist: named volume `holdfast-<workspace-id>` (`holdfast.kind=persist`),
//!   mounted at `/data`, the working directory. A stop removes the container
//!   and never the volume (no `v=1` anywhere); only [`Backend::erase_volume`]
//!   (the sweeper's erase) removes it, after the container is gone.
//! - ephemeral: a new, empty volume `holdfast-<workspace-id>-scratch`
//!   (`holdfast.kind=scratch`) at every start, removed at stop.
//! - helpers: short-lived containers `holdfast-<workspace-id>-helper-<n>`
//!   (`holdfast.kind=helper`) that mount a volume read-only: one runs
//!   `holdfast census /data` (the bind-mounted binary walks the volume and
//!   prints its entries, bytes and longest path: the volume's size, and the
//!   tally an export is checked against), another is created and never
//!   started, and the engine's archive API reads the volume through it for
//!   an export. Nothing here assumes the volume's files are on this host.
//!   An export that the archive API cannot serve whole fails loudly: a path
//!   too long for it is refused before the export starts
//!   ([`ARCHIVE_PATH_MAX`]), and an archive that holds fewer entries than
//!   the census counted aborts the stream instead of ending it.
//!
//! Confinement: no privileged mode, every capability dropped (the built-in
//! runtime needs none: it writes files it owns and listens on a high port),
//! `no-new-privileges`, a read-only root with a private `/tmp`, and the
//! tier's memory, process and CPU-share limits as container resources. The
//! network is the host's (`--network host`): the runtime registers at the
//! platform URL, which is a loopback address.
//!
//! The built-in runtime is this holdfast binary, bind-mounted read-only at
//! `/opt/holdfast/holdfast`: the image needs only the C library it links
//! (see ARCHITECTURE.md for how the test image is built without a registry).

use crate::backend::{Backend, DataKind};
use crate::export::ByteStream;
use crate::process::{Confinement, Isolation, Limits, ProcessState, Spawn};
use crate::{CpError, CpResult, tree};
use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use holdfast_domain::{DataPersistence, ImageRef, failpoint};
use holdfast_store::VolumeRow;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const LABEL_WORKSPACE: &str = "holdfast.workspace";
pub const LABEL_INSTANCE: &str = "holdfast.instance";
pub const LABEL_CP: &str = "holdfast.cp";
pub const LABEL_KIND: &str = "holdfast.kind";
pub const LABEL_DATA: &str = "holdfast.data";

/// Where a workspace sees its data (and works).
pub const DATA_DIR: &str = "/data";
/// Where a workspace sees the holdfast binary (the built-in runtime).
pub const RUNTIME_EXE: &str = "/opt/holdfast/holdfast";

/// The engine's archive API resolves every entry by its path in the
/// container, and a path of `PATH_MAX` (4,096) bytes or more cannot be
/// resolved: Podman 4.3 then leaves the rest of that directory out and still
/// ends the archive as if it were complete (about 2,047 levels of one-letter
/// names). An export whose longest path `/data/…` reaches this is refused.
pub const ARCHIVE_PATH_MAX: u64 = 4096;

/// The container backend's settings (`--container-*`).
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// The engine: `unix:///path.sock`, `tcp://host:port` or `http://…`.
    pub host: String,
    /// The image of a workspace whose runtime names none.
    pub image: ImageRef,
    /// The holdfast binary, bind-mounted read-only for the built-in runtime.
    pub runtime_exe: PathBuf,
    /// How long a container gets between SIGTERM and SIGKILL at a stop.
    pub stop_timeout: Duration,
    /// The container's network mode (`host`: the runtime reaches the
    /// platform's loopback URL).
    pub network: String,
}

pub struct ContainerBackend {
    docker: Docker,
    settings: ContainerSettings,
    /// This control plane's scope on the engine (`holdfast.cp`).
    scope: String,
}

pub fn container_name(workspace_id: Uuid) -> String {
    format!("holdfast-{workspace_id}")
}

pub fn volume_name(workspace_id: Uuid) -> String {
    format!("holdfast-{workspace_id}")
}

/// One name for every start's scratch volume: each start removes the last
/// one and creates it anew (empty), so a workspace's scratch data is always
/// found at one name and never outlives its stop.
fn scratch_name(workspace_id: Uuid) -> String {
    format!("holdfast-{workspace_id}-scratch")
}

/// The container's `CpuShares` for a tier's CPU weight: weight 100 (the
/// cgroup v2 default) is 1024 shares (the v1 default).
fn cpu_shares(weight: u64) -> i64 {
    i64::try_from(weight * 1024 / 100).unwrap_or(1024)
}

/// The create body of a workspace's container: a pure function of what to
/// run, so that its confinement is pinned by a table test.
pub fn container_config(
    spec: &Spawn,
    image: &ImageRef,
    settings: &ContainerSettings,
    data_volume: &str,
    scope: &str,
) -> ContainerCreateBody {
    let (memory, pids, weight) = crate::cgroup::tier_limits(spec.tier);
    let memory = i64::try_from(memory).unwrap_or(i64::MAX);
    let mode = match spec.mode {
        DataPersistence::Persist => "persist",
        DataPersistence::Ephemeral => "ephemeral",
    };
    let labels = HashMap::from([
        (LABEL_WORKSPACE.to_owned(), spec.workspace_id.to_string()),
        (LABEL_INSTANCE.to_owned(), spec.instance_id.clone()),
        (LABEL_CP.to_owned(), scope.to_owned()),
        (LABEL_KIND.to_owned(), "workspace".to_owned()),
        (LABEL_DATA.to_owned(), mode.to_owned()),
    ]);
    // The workspace's env first: the variables holdfast owns win.
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend([
        format!("HOME={DATA_DIR}"),
        format!("HOLDFAST_DATA_DIR={DATA_DIR}"),
        format!("HOLDFAST_WORKSPACE_ID={}", spec.workspace_id),
        format!("{}={}", crate::process::INSTANCE_ENV, spec.instance_id),
        "TMPDIR=/tmp".to_owned(),
    ]);
    ContainerCreateBody {
        image: Some(image.as_str().to_owned()),
        // The argv replaces the image's entrypoint too: what runs is exactly
        // the workspace's command.
        entrypoint: Some(vec![spec.argv[0].clone()]),
        cmd: Some(spec.argv[1..].to_vec()),
        env: Some(env),
        working_dir: Some(DATA_DIR.to_owned()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{data_volume}:{DATA_DIR}:rw"),
                format!("{}:{RUNTIME_EXE}:ro", settings.runtime_exe.display()),
            ]),
            network_mode: Some(settings.network.clone()),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=64m".to_owned(),
            )])),
            // A small init as PID 1 forwards the stop signal and reaps
            // zombies: a shell as PID 1 would ignore SIGTERM.
            init: Some(true),
            memory: Some(memory),
            // No swap beyond the memory limit.
            memory_swap: Some(memory),
            pids_limit: Some(i64::try_from(pids).unwrap_or(i64::MAX)),
            cpu_shares: Some(cpu_shares(weight)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The status code of an engine answer, if it was one.
fn status_of(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &EngineError) -> bool {
    status_of(e) == Some(404)
}

/// A create refused because a container holds the name: Docker answers
/// 409, Podman 4 a 500 that says so.
fn name_in_use(e: &EngineError) -> bool {
    match e {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 409 || message.contains("already in use"),
        _ => false,
    }
}

/// Maps an engine error to the control plane's kinds: an engine that does
/// not answer is `Unavailable` (503 with Retry-After at the API), an engine
/// that refuses is a conflict naming why.
fn engine_error(what: &str, e: EngineError) -> CpError {
    match &e {
        EngineError::DockerResponseServerError {
            status_code: 409,
            message,
        } => CpError::Conflict(format!("{what}: {message}")),
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } if *status_code >= 500 => CpError::Other(anyhow::anyhow!(
            "{what}: the engine failed ({status_code}): {message}"
        )),
        EngineError::DockerResponseServerError { .. } | EngineError::JsonDataError { .. } => {
            CpError::Other(anyhow::anyhow!("{what}: {e}"))
        }
        _ => CpError::Unavailable(format!("{what}: the container engine is unreachable ({e})")),
    }
}

/// A `Read` over a stream of engine bytes, for the tar reader on a
/// blocking thread.
fn blocking_reader(
    stream: impl futures_util::Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + 'static,
) -> impl Read + Send {
    let stream = stream.map(|r| r.map_err(io::Error::other));
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}

/// The path of an archive entry relative to the data dir. The engine's
/// archive of `/data` names its root `/` (Podman) or `data/` (Docker): the
/// first entry, which is that root, tells which prefix to strip.
fn relative_path<'a>(path: &'a [u8], root: &[u8]) -> &'a [u8] {
    let rest = path.strip_prefix(root).unwrap_or(path);
    let rest = rest.strip_prefix(b"/").unwrap_or(rest);
    rest.strip_prefix(b"./").unwrap_or(rest)
}

/// Rewrites an engine's tar of `/data` as our export: a `.tar.gz` whose
/// entries are relative to the data dir, written to `out`. Every entry is
/// copied (links as links, never followed); one that cannot be read fails
/// the whole export, and so does an archive that holds fewer than
/// `expected` entries (what the census counted): the engine left some out,
/// and the export must not end as if it were whole.
fn repack_archive(reader: impl Read, out: impl Write, expected: u64) -> io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    let mut archive = tar::Archive::new(reader);
    let mut root: Option<Vec<u8>> = None;
    let mut written = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        let Some(root) = root.as_deref() else {
            // The archive's first entry is the data dir itself.
            let mut r = path.clone();
            if !r.ends_with(b"/") {
                r.push(b'/');
            }
            root = Some(if r == b"/" || r == b"./" {
                Vec::new()
            } else {
                r
            });
            continue;
        };
        let rel = relative_path(&path, root).to_vec();
        if rel.is_empty() {
            continue;
        }
        let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&rel));
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target = relative_link(kind.is_hard_link(), &target, root);
            builder.append_link(&mut header, &rel, target)?;
        } else {
            builder.append_data(&mut header, &rel, &mut entry)?;
        }
        written += 1;
    }
    // Ordering: checked before the archive's end is written, so that a
    // short archive is a failed download, never a complete-looking one.
    if written < expected {
        return Err(io::Error::other(format!(
            "the engine's archive held {written} of the {expected} entries of the data; \
             the export is incomplete and is aborted"
        )));
    }
    let gz = builder.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()
}

/// A hard link names another entry of the archive (rebased like every
/// path); a symbolic link's target is the workspace's own text, kept as is.
fn relative_link(hard: bool, target: &[u8], root: &[u8]) -> PathBuf {
    let bytes = if hard {
        relative_path(target, root).to_vec()
    } else {
        target.to_vec()
    };
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
}

impl ContainerBackend {
    /// Connects to the engine (asking it its API version; an engine that
    /// does not answer now is tried again at each call, with API 1.41) and
    /// stops what a previous run of this control plane left there.
    pub async fn connect(
        settings: ContainerSettings,
        data_dir: &Path,
    ) -> anyhow::Result<Arc<Self>> {
        let docker = connect(&settings.host)?;
        // Asked once, to say early when the engine is not there; requests use
        // API 1.41, which every engine of the contract serves.
        if let Err(e) = docker.clone().negotiate_version().await {
            tracing::warn!(
                host = settings.host,
                error = %e,
                "the container engine does not answer; workspaces cannot start until it does"
            );
        }
        let scope = scope_id(data_dir)?;
        Ok(Arc::new(ContainerBackend {
            docker,
            settings,
            scope,
        }))
    }

    fn labels(&self, workspace_id: Uuid, kind: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_WORKSPACE.to_owned(), workspace_id.to_string()),
            (LABEL_CP.to_owned(), self.scope.clone()),
            (LABEL_KIND.to_owned(), kind.to_owned()),
        ])
    }

    fn filters(&self, pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{LABEL_CP}={}", self.scope)];
        labels.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_owned(), labels)])
    }

    /// Whether `labels` carry this scope and every pair. Listings are
    /// filtered again here: an engine may read several label filters as
    /// "any of" (Podman 4 does for volumes), and a volume or container of
    /// another scope must never be taken for ours.
    fn matches(&self, labels: &HashMap<String, String>, pairs: &[(&str, &str)]) -> bool {
        labels.get(LABEL_CP) == Some(&self.scope)
            && pairs
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// The names of this scope's volumes that carry every pair.
    async fn our_volumes(&self, pairs: &[(&str, &str)]) -> CpResult<Vec<bollard::models::Volume>> {
        let filters = self.filters(pairs);
        let list = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_error("listing volumes", e))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| self.matches(&v.labels, pairs))
            .collect())
    }

    /// Removes this scope's scratch volumes that carry every pair.
    async fn remove_scratch_where(&self, pairs: &[(&str, &str)]) -> CpResult<()> {
        let pairs = [pairs, &[(LABEL_KIND, "scratch")]].concat();
        for v in self.our_volumes(&pairs).await? {
            // Only scratch volumes by label and by name: a persist volume is
            // never named here.
            if !v.name.ends_with("-scratch") {
                continue;
            }
            match self
                .docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(engine_error("removing a scratch volume", e)),
            }
        }
        Ok(())
    }

    /// Creates the named volume unless it exists (a restart finds its data
    /// there). One call: the engine's volume create is idempotent (Docker
    /// and Podman both answer an existing volume of that name, untouched:
    /// never emptied, labels kept). Ordering: the store's record was written
    /// before this call.
    async fn ensure_volume(&self, workspace_id: Uuid) -> CpResult<String> {
        let name = volume_name(workspace_id);
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(self.labels(workspace_id, "persist")),
                ..Default::default()
            })
            .await
            .map_err(|e| engine_error("creating the workspace's volume", e))?;
        Ok(name)
    }

    /// Removes the workspace's container, whatever its instance: the stop
    /// signal, the stop timeout, then removal. Never its volumes.
    async fn remove_container(&self, name: &str) -> CpResult<()> {
        let t = i32::try_from(self.settings.stop_timeout.as_secs()).unwrap_or(10);
        match self
            .docker
            .stop_container(
                name,
                Some(StopContainerOptionsBuilder::default().t(t).build()),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(e) if status_of(&e) == Some(304) => {}
            Err(e) if status_of(&e).is_some() => {
                tracing::debug!(error = %e, "stop refused; removing by force");
            }
            Err(e) => return Err(engine_error("stopping the workspace's container", e)),
        }
        // Data safety: `v` stays false. Named volumes are kept by the engine
        // anyway, and nothing else is mounted.
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_error("removing the workspace's container", e)),
        }
    }

    /// Removes the scratch volumes of a workspace (an ephemeral stop).
    async fn remove_scratch(&self, workspace_id: Uuid) -> CpResult<()> {
        let ws = workspace_id.to_string();
        self.remove_scratch_where(&[(LABEL_WORKSPACE, &ws)]).await
    }

    /// A container (created, never started) that mounts `volume` at
    /// `/data`, for the archive API. The caller removes it.
    async fn helper(&self, workspace_id: Uuid, volume: &str) -> CpResult<String> {
        let name = format!("holdfast-{workspace_id}-helper-{}", Uuid::new_v4().simple());
        let body = ContainerCreateBody {
            image: Some(self.settings.image.as_str().to_owned()),
            entrypoint: Some(vec!["true".to_owned()]),
            labels: Some(self.labels(workspace_id, "helper")),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{volume}:{DATA_DIR}:ro")]),
                network_mode: Some("none".to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                readonly_rootfs: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| image_or_engine_error(&self.settings.image, "reading the volume", e))?;
        Ok(name)
    }

    async fn drop_helper(&self, name: &str) {
        if let Err(e) = self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
            && !is_not_found(&e)
        {
            tracing::warn!(name, error = %e, "removing a helper container failed");
        }
    }

    /// Runs `holdfast census /data` in a helper that mounts `volume`
    /// read-only (no network, no capability but reading past permissions,
    /// which the engine's archiver has too), and reads its answer.
    async fn census(&self, workspace_id: Uuid, volume: &str) -> CpResult<tree::Census> {
        let name = format!("holdfast-{workspace_id}-helper-{}", Uuid::new_v4().simple());
        let body = ContainerCreateBody {
            image: Some(self.settings.image.as_str().to_owned()),
            entrypoint: Some(vec![RUNTIME_EXE.to_owned()]),
            cmd: Some(vec!["census".to_owned(), DATA_DIR.to_owned()]),
            labels: Some(self.labels(workspace_id, "helper")),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{volume}:{DATA_DIR}:ro"),
                    format!("{}:{RUNTIME_EXE}:ro", self.settings.runtime_exe.display()),
                ]),
                network_mode: Some("none".to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                cap_add: Some(vec!["DAC_READ_SEARCH".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                readonly_rootfs: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| image_or_engine_error(&self.settings.image, "counting the volume", e))?;
        let counted = self.run_census(&name).await;
        self.drop_helper(&name).await;
        counted
    }

    async fn run_census(&self, name: &str) -> CpResult<tree::Census> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| engine_error("counting the volume", e))?;
        let code = match self.docker.wait_container(name, None).next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(engine_error("counting the volume", e)),
            None => -1,
        };
        let mut logs = self.docker.logs(
            name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(line) = logs.next().await {
            match line.map_err(|e| engine_error("counting the volume", e))? {
                LogOutput::StdOut { message } => out.push_str(&String::from_utf8_lossy(&message)),
                LogOutput::StdErr { message } => err.push_str(&String::from_utf8_lossy(&message)),
                _ => {}
            }
        }
        match tree::Census::parse(&out) {
            Some(c) if code == 0 => Ok(c),
            _ => Err(CpError::Other(anyhow::anyhow!(
                "counting the volume failed (exit {code}): {}",
                err.trim()
            ))),
        }
    }

    /// The name of the volume that holds a workspace's data of `kind`, if
    /// the engine has it.
    async fn data_volume(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<Option<String>> {
        let name = match kind {
            DataKind::Volume => volume_name(workspace_id),
            DataKind::Scratch => scratch_name(workspace_id),
        };
        match self.docker.inspect_volume(&name).await {
            Ok(_) => Ok(Some(name)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(engine_error("reading the workspace's volume", e)),
        }
    }

    /// The container that shows a workspace's data of `kind` at `/data`,
    /// and whether it is a helper to remove afterwards. `None`: no data.
    async fn data_source(
        &self,
        workspace_id: Uuid,
        kind: DataKind,
    ) -> CpResult<Option<(String, bool)>> {
        match kind {
            DataKind::Volume => {
                let volume = volume_name(workspace_id);
                match self.docker.inspect_volume(&volume).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => return Ok(None),
                    Err(e) => return Err(engine_error("reading the workspace's volume", e)),
                }
                Ok(Some((self.helper(workspace_id, &volume).await?, true)))
            }
            DataKind::Scratch => {
                let name = container_name(workspace_id);
                match self.docker.inspect_container(&name, None).await {
                    Ok(c) => {
                        let ephemeral = c
                            .config
                            .and_then(|c| c.labels)
                            .and_then(|l| l.get(LABEL_DATA).cloned())
                            .is_some_and(|m| m == "ephemeral");
                        Ok(ephemeral.then_some((name, false)))
                    }
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(engine_error("reading the workspace's container", e)),
                }
            }
        }
    }

    fn archive(
        &self,
        container: &str,
    ) -> impl futures_util::Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + 'static {
        self.docker.download_from_container(
            container,
            Some(
                DownloadFromContainerOptionsBuilder::default()
                    .path(DATA_DIR)
                    .build(),
            ),
        )
    }

    /// The containers of this control plane on the engine (any state).
    async fn our_containers(&self, pairs: &[(&str, &str)]) -> CpResult<Vec<String>> {
        let filters = self.filters(pairs);
        let mut attempt = 0;
        let list = loop {
            match self
                .docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
            {
                Ok(list) => break list,
                // Podman 4 lists a container whose process just ended (a
                // census helper, between its exit and its clean-up) in a
                // state `stopped` that the Docker API does not have, and
                // the client refuses the whole listing. The state passes
                // within moments: list again.
                Err(e @ EngineError::JsonDataError { .. })
                    if e.to_string().contains("unknown variant") && attempt < 40 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(engine_error("listing containers", e)),
            }
        };
        Ok(list
            .into_iter()
            .filter(|c| c.labels.as_ref().is_some_and(|l| self.matches(l, pairs)))
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect())
    }
}

/// A client of the engine at `host` speaking API 1.41.
fn connect(host: &str) -> anyhow::Result<Docker> {
    const TIMEOUT_SECS: u64 = 120;
    let version = bollard::ClientVersion {
        major_version: 1,
        minor_version: 41,
    };
    let docker = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, TIMEOUT_SECS, &version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, TIMEOUT_SECS, &version)
    } else {
        anyhow::bail!(
            "--container-host {host:?}: use unix://PATH, tcp://HOST:PORT or http://HOST:PORT"
        );
    };
    docker.map_err(|e| anyhow::anyhow!("--container-host {host:?} is not usable: {e}"))
}

/// Refuses an export the engine's archive API cannot serve whole.
fn check_archivable(census: &tree::Census) -> CpResult<()> {
    let longest = DATA_DIR.len() as u64 + 1 + census.longest;
    if longest >= ARCHIVE_PATH_MAX {
        return Err(CpError::ExportRefused(format!(
            "its deepest entry is {} levels down ({longest} bytes as {DATA_DIR}/…), and the \
             container engine's archive API cannot read a path of {ARCHIVE_PATH_MAX} bytes or \
             more, so the export would be incomplete; move or shorten that tree",
            census.depth
        )));
    }
    Ok(())
}

/// A 404 on create means the image is missing: say which, and how to get it.
fn image_or_engine_error(image: &ImageRef, what: &str, e: EngineError) -> CpError {
    match &e {
        EngineError::DockerResponseServerError {
            status_code: 404, ..
        } => CpError::ImageMissing(format!(
            "the container image {image} is not on the engine (pull, build or import it there)"
        )),
        _ => engine_error(what, e),
    }
}

/// This control plane's scope id on the engine, made on first start.
fn scope_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("cp-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    let id = Uuid::new_v4().simple().to_string();
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(id)
}

/// A paused container: unpaused when dropped (from any thread).
struct Paused {
    docker: Docker,
    name: String,
    runtime: tokio::runtime::Handle,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let name = std::mem::take(&mut self.name);
        let unpause = async move {
            if let Err(e) = docker.unpause_container(&name).await {
                tracing::warn!(name, error = %e, "unpausing the container after a snapshot failed");
            }
        };
        // Waited for, so that "thawed" holds once the guard is gone (on a
        // single-threaded runtime, which cannot block, it runs as a task).
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            // A worker (or a blocking thread) of the server's runtime.
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                let runtime = self.runtime.clone();
                tokio::task::block_in_place(move || runtime.block_on(unpause));
            }
            Ok(_) => {
                self.runtime.spawn(unpause);
            }
            Err(_) => self.runtime.block_on(unpause),
        }
    }
}

#[async_trait]
impl Backend for ContainerBackend {
    fn confinement(&self) -> Confinement {
        Confinement {
            isolation: Isolation::Container,
            limits: Limits::Enforced,
        }
    }

    fn builtin_argv(&self) -> Vec<String> {
        vec![RUNTIME_EXE.to_owned(), "runtime".to_owned()]
    }

    async fn check_image(&self, image: Option<&ImageRef>) -> CpResult<()> {
        let image = image.unwrap_or(&self.settings.image);
        match self.docker.inspect_image(image.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(image_or_engine_error(image, "reading the image", e)),
        }
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %spec.workspace_id, instance_id = %spec.instance_id))]
    async fn spawn(&self, spec: Spawn, image: Option<&ImageRef>) -> CpResult<Confinement> {
        let image = image.unwrap_or(&self.settings.image);
        let name = container_name(spec.workspace_id);
        let volume = match spec.mode {
            DataPersistence::Persist => self.ensure_volume(spec.workspace_id).await?,
            DataPersistence::Ephemeral => {
                // Every start of an ephemeral workspace begins empty.
                self.remove_scratch(spec.workspace_id).await?;
                let scratch = scratch_name(spec.workspace_id);
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(scratch.clone()),
                        labels: Some(self.labels(spec.workspace_id, "scratch")),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| engine_error("creating the scratch volume", e))?;
                scratch
            }
        };
        let body = container_config(&spec, image, &self.settings, &volume, &self.scope);
        let create = || {
            self.docker.create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body.clone(),
            )
        };
        // At most one container per workspace: the engine refuses a second
        // of one name, and whatever holds the name (left by a crash, or
        // stopped behind our back) goes before a second try. Usually nothing
        // does (a stop removed it), so the name is not cleared first.
        match create().await {
            Ok(_) => {}
            Err(e) if name_in_use(&e) => {
                self.remove_container(&name).await?;
                create().await.map_err(|e| {
                    image_or_engine_error(image, "creating the workspace's container", e)
                })?;
            }
            Err(e) => {
                return Err(image_or_engine_error(
                    image,
                    "creating the workspace's container",
                    e,
                ));
            }
        }
        if let Err(e) = self.docker.start_container(&name, None).await {
            let err = engine_error("starting the workspace's container", e);
            let _ = self.remove_container(&name).await;
            return Err(err);
        }
        Ok(self.confinement())
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        let name = container_name(workspace_id);
        if let Some(wanted) = instance_id {
            match self.docker.inspect_container(&name, None).await {
                Ok(c) => {
                    let instance = c
                        .config
                        .and_then(|c| c.labels)
                        .and_then(|l| l.get(LABEL_INSTANCE).cloned());
                    // Another instance holds the name now: not ours to stop.
                    if instance.as_deref() != Some(wanted) {
                        return Ok(());
                    }
                }
                Err(e) if is_not_found(&e) => {
                    return self.remove_scratch(workspace_id).await;
                }
                Err(e) => return Err(engine_error("reading the workspace's container", e)),
            }
        }
        self.remove_container(&name).await?;
        // Ordering: the container is gone before its scratch volume goes (an
        // engine refuses to remove a volume in use).
        self.remove_scratch(workspace_id).await
    }

    async fn has_instance(&self, workspace_id: Uuid) -> bool {
        // An unreadable engine counts as "maybe": the spawn removes by name
        // anyway.
        !matches!(
            self.docker.inspect_container(&container_name(workspace_id), None).await,
            Err(e) if is_not_found(&e)
        )
    }

    async fn state(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<ProcessState> {
        match self
            .docker
            .inspect_container(&container_name(workspace_id), None)
            .await
        {
            Ok(c) => {
                let instance = c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned());
                if instance.as_deref() != Some(instance_id) {
                    return Ok(ProcessState::Unknown);
                }
                let state = c.state.unwrap_or_default();
                Ok(if state.running.unwrap_or(false) {
                    ProcessState::Running
                } else {
                    ProcessState::Exited(state.exit_code.and_then(|c| i32::try_from(c).ok()))
                })
            }
            Err(e) if is_not_found(&e) => Ok(ProcessState::Unknown),
            Err(e) => Err(engine_error("reading the workspace's container", e)),
        }
    }

    /// Replaces rather than adopts (as the process backend does): every
    /// container of this scope is removed, and the platform starts each
    /// workspace that should run once, with a fresh token.
    async fn reap_leftovers(&self) -> anyhow::Result<usize> {
        let names = match self.our_containers(&[]).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers left by a previous run");
                return Ok(0);
            }
        };
        for name in &names {
            self.remove_container(name).await?;
        }
        // Scratch volumes of the previous run: ephemeral data, begun anew at
        // the next start anyway.
        if let Err(e) = self.remove_scratch_where(&[]).await {
            tracing::warn!(error = %e, "removing scratch volumes of a previous run failed");
        }
        Ok(names.len())
    }

    async fn stop_all(&self) {
        let names = match self.our_containers(&[(LABEL_KIND, "workspace")]).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing containers at shutdown failed");
                return;
            }
        };
        let stops = names.iter().map(|name| async move {
            if let Err(e) = self.remove_container(name).await {
                tracing::warn!(name, error = %e, "stopping at shutdown failed");
            }
        });
        futures_util::future::join_all(stops).await;
        if let Err(e) = self.remove_scratch_where(&[]).await {
            tracing::warn!(error = %e, "removing scratch volumes at shutdown failed");
        }
    }

    async fn data_bytes(&self, workspace_id: Uuid, kind: DataKind) -> anyhow::Result<Option<u64>> {
        let Some(volume) = self.data_volume(workspace_id, kind).await? else {
            return Ok(None);
        };
        Ok(Some(self.census(workspace_id, &volume).await?.bytes))
    }

    async fn has_data(&self, workspace_id: Uuid, kind: DataKind) -> bool {
        // The volume itself, not the container that mounts it: scratch data
        // that outlived its container would still be data.
        let name = match kind {
            DataKind::Volume => volume_name(workspace_id),
            DataKind::Scratch => scratch_name(workspace_id),
        };
        self.docker.inspect_volume(&name).await.is_ok()
    }

    async fn export(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<ByteStream> {
        let none = || CpError::NotFound("the workspace has no data to export".to_owned());
        let volume = self
            .data_volume(workspace_id, kind)
            .await?
            .ok_or_else(none)?;
        // Ordering: counted before the response starts, so that what the
        // archive API cannot serve is a clear 409, not a broken download.
        let census = self.census(workspace_id, &volume).await?;
        check_archivable(&census)?;
        let (container, helper) = self
            .data_source(workspace_id, kind)
            .await?
            .ok_or_else(none)?;
        let reader = blocking_reader(self.archive(&container));
        let expected = census.entries;
        let (stream, done) =
            crate::export::stream_with(move |out| repack_archive(reader, out, expected));
        if helper {
            let docker = self.docker.clone();
            tokio::spawn(async move {
                let _ = done.await;
                let _ = docker
                    .remove_container(
                        &container,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            });
        }
        Ok(stream)
    }

    fn snapshots_by_archive(&self) -> bool {
        true
    }

    async fn volume_archive(
        &self,
        workspace_id: Uuid,
    ) -> CpResult<Option<crate::backend::VolumeArchive>> {
        let Some(volume) = self.data_volume(workspace_id, DataKind::Volume).await? else {
            return Ok(None);
        };
        // Counted first (what the archive must hold), through the same
        // read-only helper as an export.
        let census = self.census(workspace_id, &volume).await?;
        check_archivable(&census)?;
        let helper = self.helper(workspace_id, &volume).await?;
        let reader = blocking_reader(self.archive(&helper));
        let docker = self.docker.clone();
        Ok(Some(crate::backend::VolumeArchive {
            reader: Box::new(reader),
            expected: census.entries,
            done: Box::pin(async move {
                let _ = docker
                    .remove_container(
                        &helper,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            }),
        }))
    }

    /// Pauses the workspace's container (the engine's freezer) while it
    /// runs; the guard unpauses it when dropped.
    async fn freeze(&self, workspace_id: Uuid) -> Option<Box<dyn Send>> {
        let name = container_name(workspace_id);
        let running = self
            .docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .is_some_and(|s| s.running == Some(true) && s.paused != Some(true));
        if !running {
            return None;
        }
        if let Err(e) = self.docker.pause_container(&name).await {
            tracing::warn!(%workspace_id, error = %e, "could not pause the container for a snapshot; capturing it running");
            return None;
        }
        Some(Box::new(Paused {
            docker: self.docker.clone(),
            name,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    async fn erase_volume(&self, v: &VolumeRow) -> anyhow::Result<u64> {
        let ws = v.workspace_id.to_string();
        // Ordering: every container that mounts the volume goes first (the
        // workspace's, helpers), so the volume is removed only once nothing
        // uses it. A workspace that runs ephemeral after a switch does not
        // mount it, and keeps running.
        let name = container_name(v.workspace_id);
        let mounts_it = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(LABEL_DATA).cloned())
                .is_none_or(|mode| mode != "ephemeral"),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(anyhow::Error::new(engine_error("reading the container", e))),
        };
        if mounts_it {
            self.remove_container(&name).await?;
        }
        for helper in self
            .our_containers(&[(LABEL_WORKSPACE, &ws), (LABEL_KIND, "helper")])
            .await?
        {
            self.drop_helper(&helper).await;
        }
        let bytes = self
            .data_bytes(v.workspace_id, DataKind::Volume)
            .await?
            .unwrap_or(0);
        failpoint::hit("erase.mid");
        // A size or export that began meanwhile holds a helper on the volume
        // for a moment: remove helpers and try again a few times before
        // leaving the erasure to the next pass (it stays `erasing`).
        let mut attempt = 0;
        loop {
            match self
                .docker
                .remove_volume(
                    &volume_name(v.workspace_id),
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => return Ok(bytes),
                // Already gone: a resumed erasure.
                Err(e) if is_not_found(&e) => return Ok(bytes),
                Err(e) if status_of(&e) == Some(409) && attempt < 10 => {
                    attempt += 1;
                    for helper in self
                        .our_containers(&[(LABEL_WORKSPACE, &ws), (LABEL_KIND, "helper")])
                        .await?
                    {
                        self.drop_helper(&helper).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(engine_error("removing the volume", e)));
                }
            }
        }
    }

    async fn volume_workspaces(&self) -> anyhow::Result<Vec<Uuid>> {
        Ok(self
            .our_volumes(&[(LABEL_KIND, "persist")])
            .await?
            .into_iter()
            .filter_map(|v| {
                let id = v.labels.get(LABEL_WORKSPACE)?.parse::<Uuid>().ok()?;
                // The label and the name must agree: a volume someone
                // labelled by hand is not taken for another's data.
                (v.name == volume_name(id)).then_some(id)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use holdfast_domain::Tier;
    use std::collections::BTreeMap;

    fn settings() -> ContainerSettings {
        ContainerSettings {
            host: "unix:///run/podman.sock".to_owned(),
            image: ImageRef::parse("localhost/holdfast-runtime:1").unwrap(),
            runtime_exe: PathBuf::from("/usr/bin/holdfast"),
            stop_timeout: Duration::from_secs(10),
            network: "host".to_owned(),
        }
    }

    fn spawn(mode: DataPersistence, tier: i64) -> Spawn {
        Spawn {
            workspace_id: Uuid::nil(),
            instance_id: "i-1".to_owned(),
            argv: vec!["sh".to_owned(), "-c".to_owned(), "sleep 1".to_owned()],
            env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            mode,
            tier: Tier::from_stored(tier),
            org_id: Uuid::nil(),
            volume_size_gb: None,
        }
    }

    fn summary(body: &ContainerCreateBody) -> String {
        let h = body.host_config.clone().unwrap();
        let mut labels: Vec<_> = body.labels.clone().unwrap().into_iter().collect();
        labels.sort();
        format!(
            "image={:?} entrypoint={:?} cmd={:?} workdir={:?}\nlabels={labels:?}\nenv={:?}\n\
             binds={:?} network={:?} privileged={:?} cap_drop={:?} security={:?} ro={:?} tmpfs={:?} init={:?}\n\
             memory={:?} swap={:?} pids={:?} shares={:?}",
            body.image,
            body.entrypoint,
            body.cmd,
            body.working_dir,
            body.env,
            h.binds,
            h.network_mode,
            h.privileged,
            h.cap_drop,
            h.security_opt,
            h.readonly_rootfs,
            h.tmpfs,
            h.init,
            h.memory,
            h.memory_swap,
            h.pids_limit,
            h.cpu_shares,
        )
    }

    #[test]
    fn a_persist_workspace_mounts_its_named_volume_confined_by_its_tier() {
        let body = container_config(
            &spawn(DataPersistence::Persist, 1),
            &settings().image,
            &settings(),
            &volume_name(Uuid::nil()),
            "scope1",
        );
        expect![[r#"
            image=Some("localhost/holdfast-runtime:1") entrypoint=Some(["sh"]) cmd=Some(["-c", "sleep 1"]) workdir=Some("/data")
            labels=[("holdfast.cp", "scope1"), ("holdfast.data", "persist"), ("holdfast.instance", "i-1"), ("holdfast.kind", "workspace"), ("holdfast.workspace", "00000000-0000-0000-0000-000000000000")]
            env=Some(["A=1", "HOME=/data", "HOLDFAST_DATA_DIR=/data", "HOLDFAST_WORKSPACE_ID=00000000-0000-0000-0000-000000000000", "HOLDFAST_INSTANCE_ID=i-1", "TMPDIR=/tmp"])
            binds=Some(["holdfast-00000000-0000-0000-0000-000000000000:/data:rw", "/usr/bin/holdfast:/opt/holdfast/holdfast:ro"]) network=Some("host") privileged=Some(false) cap_drop=Some(["ALL"]) security=Some(["no-new-privileges"]) ro=Some(true) tmpfs=Some({"/tmp": "rw,nosuid,nodev,size=64m"}) init=Some(true)
            memory=Some(268435456) swap=Some(268435456) pids=Some(64) shares=Some(512)"#]]
        .assert_eq(&summary(&body));
    }

    #[test]
    fn tiers_become_container_resources() {
        let limits: Vec<_> = (1..=4)
            .map(|tier| {
                let body = container_config(
                    &spawn(DataPersistence::Ephemeral, tier),
                    &settings().image,
                    &settings(),
                    "scratch",
                    "s",
                );
                let h = body.host_config.unwrap();
                (
                    tier,
                    h.memory.unwrap() >> 20,
                    h.pids_limit.unwrap(),
                    h.cpu_shares.unwrap(),
                )
            })
            .collect();
        expect![[r#"[(1, 256, 64, 512), (2, 512, 128, 1024), (3, 1024, 256, 2048), (4, 2048, 512, 4096)]"#]]
            .assert_eq(&format!("{limits:?}"));
    }

    #[test]
    fn names_of_a_workspace() {
        let id = Uuid::nil();
        expect![[r#"("holdfast-00000000-0000-0000-0000-000000000000", "holdfast-00000000-0000-0000-0000-000000000000", "holdfast-00000000-0000-0000-0000-000000000000-scratch")"#]]
            .assert_eq(&format!(
                "{:?}",
                (container_name(id), volume_name(id), scratch_name(id))
            ));
    }

    /// An engine archive of `/data` (rooted as Podman or as Docker names it)
    /// becomes an export whose entries are relative to the data dir.
    fn repacked(root: &str) -> Vec<String> {
        // Raw names, as an engine writes them (the tar crate's own setters
        // refuse Podman's absolute ones).
        fn append(raw: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, name: &str, body: &[u8]) {
            if name.len() < 100 {
                let field = &mut h.as_old_mut().name;
                field.fill(0);
                field[..name.len()].copy_from_slice(name.as_bytes());
                h.set_size(body.len() as u64);
                h.set_cksum();
                raw.append(&h, body).unwrap();
            } else {
                h.set_size(body.len() as u64);
                raw.append_data(&mut h, name, body).unwrap();
            }
        }
        let mut raw = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        append(&mut raw, dir, root, b"");
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o644);
        append(&mut raw, file.clone(), &format!("{root}a/b.txt"), b"hi");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_link_name("/etc/passwd").unwrap();
        append(&mut raw, link, &format!("{root}l"), b"");
        // Past 100 bytes a GNU long-name entry carries the name.
        let long = format!("{}{}", root.trim_start_matches('/'), "d/".repeat(80) + "x");
        append(&mut raw, file, &long, b"yo");
        let raw = raw.into_inner().unwrap();
        // Fewer entries than the census counted: the engine left some out,
        // and the export fails rather than end as if it were whole.
        let err = repack_archive(&raw[..], &mut Vec::new(), 4).unwrap_err();
        assert!(err.to_string().contains("held 3 of the 4 entries"), "{err}");
        let mut out = Vec::new();
        repack_archive(&raw[..], &mut out, 3).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                format!(
                    "{} {:?} {link:?}",
                    path.len().min(12),
                    &path[..path.len().min(12)]
                )
            })
            .collect()
    }

    #[test]
    fn a_path_the_archive_api_cannot_read_refuses_the_export() {
        let census = |longest| tree::Census {
            entries: 1,
            bytes: 0,
            longest,
            depth: longest / 2,
        };
        // "/data/" + 4,089 bytes = 4,095: the longest path it reads.
        assert!(check_archivable(&census(4089)).is_ok());
        let err = check_archivable(&census(4090)).unwrap_err();
        assert!(
            matches!(&err, CpError::ExportRefused(m) if m.contains("2045 levels")),
            "{err}"
        );
    }

    #[test]
    fn exports_are_relative_to_the_data_dir_whatever_the_engine() {
        let expected = expect![[r#"
            [
                "7 \"a/b.txt\" None",
                "1 \"l\" Some(\"/etc/passwd\")",
                "12 \"d/d/d/d/d/d/\" None",
            ]
        "#]];
        expected.assert_debug_eq(&repacked("/"));
        expected.assert_debug_eq(&repacked("data/"));
    }
}

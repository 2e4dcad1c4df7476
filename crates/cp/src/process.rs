//! The process backend: each workspace is a child process in its own process
//! group, working in its data directory.
//!
//! Layout under the control plane's data dir (SPEC §3):
//! - `volumes/<workspace-id>/`: a persist workspace's durable volume;
//! - `scratch/<workspace-id>/`: an ephemeral workspace's data, emptied before
//!   every start and removed at every stop;
//! - `logs/<workspace-id>.log`: the process's stdout and stderr, kept outside
//!   the data so that logs never count as (or leak into) saved data.

use crate::tree;
use holdfast_domain::DataPersistence;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The environment variable that ties a process to its instance.
pub const INSTANCE_ENV: &str = "HOLDFAST_INSTANCE_ID";

/// The environment variable that ties a process to the control plane (by its
/// data dir) that started it; used after a crash of the server to find every
/// process it left behind, recorded or not, and never anyone else's.
pub const ROOT_ENV: &str = "HOLDFAST_CP_ROOT";

/// Variables of the server's own environment a workspace inherits. Everything
/// else (the admin token above all) is withheld.
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "RUST_LOG"];

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn volumes_root(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn volume_dir(&self, workspace_id: Uuid) -> PathBuf {
        self.volumes_root().join(workspace_id.to_string())
    }

    pub fn scratch_dir(&self, workspace_id: Uuid) -> PathBuf {
        self.root.join("scratch").join(workspace_id.to_string())
    }

    pub fn data_dir(&self, workspace_id: Uuid, mode: DataPersistence) -> PathBuf {
        match mode {
            DataPersistence::Persist => self.volume_dir(workspace_id),
            DataPersistence::Ephemeral => self.scratch_dir(workspace_id),
        }
    }

    /// Where an erasure moves a volume before deleting it.
    pub fn trash_dir(&self, volume_id: Uuid) -> PathBuf {
        self.root.join("trash").join(volume_id.to_string())
    }

    pub fn log_file(&self, workspace_id: Uuid) -> PathBuf {
        self.root.join("logs").join(format!("{workspace_id}.log"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub workspace_id: Uuid,
    pub instance_id: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mode: DataPersistence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// The process exited on its own (or was killed by someone else).
    Exited(Option<i32>),
    /// We know of no such instance.
    Unknown,
}

struct Child {
    instance_id: String,
    pid: i32,
    mode: DataPersistence,
    exit: watch::Receiver<Option<Option<i32>>>,
}

/// How workspace processes are confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// A plain child process (its own process group, cleared environment,
    /// working directory in its data dir).
    None,
    /// Inside bubblewrap: `/usr` and `/etc` read-only, a private `/tmp`,
    /// `/proc` and `/dev`, its own pid, IPC and UTS namespaces, and of the
    /// host's files only its own data dir (read-write) and the holdfast
    /// binary (read-only, for the built-in runtime). The network is shared:
    /// the runtime registers with the platform over loopback.
    Bwrap {
        bwrap: PathBuf,
        holdfast_exe: PathBuf,
    },
}

impl Sandbox {
    /// The argv that runs `program args…` in `data_dir` under this sandbox.
    pub fn wrap(
        &self,
        program: &Path,
        argv0: &str,
        args: &[String],
        data_dir: &Path,
    ) -> (PathBuf, Vec<String>) {
        match self {
            Sandbox::None => {
                let _ = argv0;
                (program.to_path_buf(), args.to_vec())
            }
            Sandbox::Bwrap {
                bwrap,
                holdfast_exe,
            } => {
                let dir = data_dir.display().to_string();
                let mut out: Vec<String> = [
                    "--ro-bind",
                    "/usr",
                    "/usr",
                    "--ro-bind",
                    "/etc",
                    "/etc",
                    "--symlink",
                    "usr/bin",
                    "/bin",
                    "--symlink",
                    "usr/sbin",
                    "/sbin",
                    "--symlink",
                    "usr/lib",
                    "/lib",
                    "--symlink",
                    "usr/lib64",
                    "/lib64",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--tmpfs",
                    "/tmp",
                    "--unshare-pid",
                    "--unshare-ipc",
                    "--unshare-uts",
                    // Nothing of a workspace outlives its bwrap, which is
                    // what a stop signals.
                    "--die-with-parent",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                let exe = holdfast_exe.display().to_string();
                if !exe.starts_with("/usr/") {
                    out.extend(["--ro-bind".to_owned(), exe.clone(), exe]);
                }
                out.extend([
                    "--bind".to_owned(),
                    dir.clone(),
                    dir.clone(),
                    "--chdir".to_owned(),
                    dir,
                ]);
                // bubblewrap 0.8 (Debian 12) has no --argv0: the program
                // sees its full path as argv[0].
                let _ = argv0;
                out.extend(["--".to_owned(), program.display().to_string()]);
                out.extend(args.iter().cloned());
                (bwrap.clone(), out)
            }
        }
    }
}

/// The live children of this server.
pub struct ProcessBackend {
    layout: Layout,
    stop_timeout: Duration,
    sandbox: Sandbox,
    children: Mutex<HashMap<Uuid, Child>>,
}

impl ProcessBackend {
    pub fn new(layout: Layout, stop_timeout: Duration, sandbox: Sandbox) -> Arc<Self> {
        Arc::new(ProcessBackend {
            layout,
            stop_timeout,
            sandbox,
            children: Mutex::new(HashMap::new()),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Prepares the data dir and starts the process. Returns its pid.
    #[tracing::instrument(skip_all, fields(workspace_id = %spec.workspace_id, instance_id = %spec.instance_id))]
    pub async fn spawn(&self, spec: Spawn) -> anyhow::Result<i32> {
        let data_dir = self.layout.data_dir(spec.workspace_id, spec.mode);
        let log_path = self.layout.log_file(spec.workspace_id);
        if spec.mode == DataPersistence::Ephemeral {
            // Every start of an ephemeral workspace begins empty. The tree may
            // be large, so it is removed off the async threads.
            let scratch = self.layout.root().join("scratch");
            let name = spec.workspace_id.to_string();
            tokio::task::spawn_blocking(move || tree::erase_tree(&scratch, &name)).await??;
        }
        // Two mkdirs of paths that usually exist: cheaper inline than a hop to
        // the blocking pool, and on the create → online path.
        std::fs::create_dir_all(&data_dir)?;
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        // std spawns with posix_spawn (no fork of this large process) only for
        // a program given by path; look it up in the child's PATH ourselves.
        let program = resolve_program(&spec.argv[0], std::env::var_os("PATH").as_deref());
        let (program, args) =
            self.sandbox
                .wrap(&program, &spec.argv[0], &spec.argv[1..], &data_dir);
        let mut cmd = tokio::process::Command::new(&program);
        if self.sandbox == Sandbox::None {
            cmd.arg0(&spec.argv[0]);
        }
        cmd.args(&args)
            .current_dir(&data_dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        for key in INHERITED_ENV {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.env("HOME", &data_dir);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.env("HOLDFAST_DATA_DIR", &data_dir);
        cmd.env("HOLDFAST_WORKSPACE_ID", spec.workspace_id.to_string());
        cmd.env(INSTANCE_ENV, &spec.instance_id);
        cmd.env(ROOT_ENV, self.layout.root());
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", spec.argv[0]))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = tx.send(Some(code));
        });
        self.children.lock().expect("children lock").insert(
            spec.workspace_id,
            Child {
                instance_id: spec.instance_id,
                pid,
                mode: spec.mode,
                exit: rx,
            },
        );
        Ok(pid)
    }

    pub fn state(&self, workspace_id: Uuid, instance_id: &str) -> ProcessState {
        let children = self.children.lock().expect("children lock");
        match children.get(&workspace_id) {
            Some(c) if c.instance_id == instance_id => match *c.exit.borrow() {
                None => ProcessState::Running,
                Some(code) => ProcessState::Exited(code),
            },
            _ => ProcessState::Unknown,
        }
    }

    /// The instance currently known for a workspace, if any.
    pub fn current_instance(&self, workspace_id: Uuid) -> Option<String> {
        let children = self.children.lock().expect("children lock");
        children.get(&workspace_id).map(|c| c.instance_id.clone())
    }

    /// Stops the workspace's process (SIGTERM to its group, SIGKILL after the
    /// stop timeout) and, for an ephemeral workspace, removes its scratch data.
    /// Never touches a durable volume. Stopping what is not running succeeds.
    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    pub async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> anyhow::Result<()> {
        let child = {
            let mut children = self.children.lock().expect("children lock");
            match children.get(&workspace_id) {
                Some(c) if instance_id.is_none_or(|i| i == c.instance_id) => {
                    children.remove(&workspace_id)
                }
                _ => None,
            }
        };
        let Some(mut child) = child else {
            return Ok(());
        };
        if child.exit.borrow().is_none() {
            terminate_group(child.pid, &mut child.exit, self.stop_timeout).await;
        }
        if child.mode == DataPersistence::Ephemeral {
            let scratch = self.layout.root().join("scratch");
            let name = workspace_id.to_string();
            tokio::task::spawn_blocking(move || tree::erase_tree(&scratch, &name)).await??;
        }
        Ok(())
    }

    /// Stops every child (a graceful server shutdown). Data is kept.
    pub async fn stop_all(&self) {
        let ids: Vec<Uuid> = self
            .children
            .lock()
            .expect("children lock")
            .keys()
            .copied()
            .collect();
        for id in ids {
            if let Err(e) = self.stop(id, None).await {
                tracing::warn!(workspace_id = %id, error = %e, "stopping at shutdown failed");
            }
        }
    }
}

/// The path of `argv0`: as given when it contains a `/`, else the first
/// executable regular file of that name in `path` (a `PATH` value). Falls
/// back to the bare name, which lets the spawn report "not found".
fn resolve_program(argv0: &str, path: Option<&std::ffi::OsStr>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if argv0.contains('/') {
        return PathBuf::from(argv0);
    }
    for dir in std::env::split_paths(path.unwrap_or_default()) {
        let candidate = dir.join(argv0);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    PathBuf::from(argv0)
}

async fn terminate_group(
    pid: i32,
    exit: &mut watch::Receiver<Option<Option<i32>>>,
    timeout: Duration,
) {
    let pgid = Pid::from_raw(pid);
    let _ = killpg(pgid, Signal::SIGTERM);
    let timed_out = tokio::time::timeout(timeout, exit.wait_for(Option::is_some))
        .await
        .is_err();
    if timed_out {
        tracing::warn!(pid, "process ignored SIGTERM; sending SIGKILL");
    }
    // The group leader may be gone while others in its group linger; make sure
    // nothing of this workspace survives its stop.
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = exit.wait_for(Option::is_some).await;
}

/// Kills every process group whose leader carries `HOLDFAST_CP_ROOT=<root>`
/// in its environment: what a previous run of this control plane left
/// running. Returns how many it killed. Reading `/proc/<pid>/environ` (rather
/// than trusting recorded pids) means a recycled pid is never signalled and a
/// process started just before a crash, not yet recorded, is still found.
pub fn reap_leftovers(root: &Path) -> usize {
    let needle = format!("{ROOT_ENV}={}", root.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            // Kill the whole group (the workspace's children too), then the
            // process itself in case it left its group.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

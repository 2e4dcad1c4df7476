//! The process backend: each workspace is a child process in its own process
//! group and cgroup (where the host allows), by default inside bubblewrap,
//! working in its data directory.
//!
//! Layout under the control plane's data dir (SPEC §3):
//! - `volumes/<workspace-id>/`: a persist workspace's durable volume;
//! - `scratch/<workspace-id>/`: an ephemeral workspace's data, emptied before
//!   every start and removed at every stop;
//! - `logs/<workspace-id>.log`: the process's stdout and stderr, kept outside
//!   the data so that logs never count as (or leak into) saved data;
//! - `run/<workspace-id>.pid`: the running process's pid and start time, so
//!   that a server restarted after `kill -9` stops what it left behind even
//!   where there are no cgroups;
//! - `sandbox/etc/`: the minimal `/etc` a sandboxed workspace sees.

use crate::cgroup::{Cgroups, WorkspaceCgroup};
use crate::tree;
use holdfast_domain::{DataPersistence, Tier};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The environment variable that ties a process to its instance.
pub const INSTANCE_ENV: &str = "HOLDFAST_INSTANCE_ID";

/// The environment variable that older versions of holdfast set on every
/// workspace process, naming the control plane's data dir. It is no longer
/// set (a workspace's environment names nothing of the server's); it is
/// still looked for at start, to stop what an older version left running.
pub const LEGACY_ROOT_ENV: &str = "HOLDFAST_CP_ROOT";

/// Variables of the server's own environment an unsandboxed workspace
/// inherits (it runs the host's programs, found by the host's `PATH`).
/// Everything else (the admin token above all) is withheld. A sandboxed
/// workspace inherits nothing of the server's environment.
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// Where a sandboxed workspace sees its data dir.
pub const SANDBOX_DATA_DIR: &str = "/data";

/// Where a sandboxed workspace sees the holdfast binary (the built-in
/// runtime).
const SANDBOX_EXE: &str = "/opt/holdfast/holdfast";

/// What a sandboxed workspace's `PATH` is.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

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

    pub fn pid_file(&self, workspace_id: Uuid) -> PathBuf {
        self.root.join("run").join(format!("{workspace_id}.pid"))
    }

    /// The minimal `/etc` of the sandbox.
    pub fn sandbox_etc(&self) -> PathBuf {
        self.root.join("sandbox").join("etc")
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
    pub tier: Tier,
    /// The workspace's org (the Kubernetes backend labels its objects).
    pub org_id: Uuid,
    /// The size a new durable volume asks for, where the backend sizes
    /// volumes (a Kubernetes claim); `None`: the backend's default.
    pub volume_size_gb: Option<u16>,
}

/// What a started workspace got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confinement {
    pub isolation: Isolation,
    pub limits: Limits,
}

/// How a workspace is isolated from the host (`isolation` in its JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Bwrap,
    Container,
    Pod,
    None,
}

/// Whether the tier's limits apply (`limits` in its JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limits {
    Enforced,
    None,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Bwrap => "bwrap",
            Isolation::Container => "container",
            Isolation::Pod => "pod",
            Isolation::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bwrap" => Isolation::Bwrap,
            "container" => Isolation::Container,
            "pod" => Isolation::Pod,
            "none" => Isolation::None,
            _ => return None,
        })
    }
}

impl Limits {
    pub fn as_str(self) -> &'static str {
        match self {
            Limits::Enforced => "enforced",
            Limits::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "enforced" => Limits::Enforced,
            "none" => Limits::None,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// The process exited on its own (or was killed by someone else).
    Exited(Option<i32>),
    /// We know of no such instance.
    Unknown,
}

/// A frozen workspace: thawed when dropped.
pub struct Frozen {
    pgid: i32,
    cgroup: Option<WorkspaceCgroup>,
    v2: bool,
    stopped: Vec<i32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.v2 {
            if let Some(cg) = &self.cgroup {
                cg.thaw();
            }
            return;
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGCONT);
        for p in &self.stopped {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGCONT);
        }
    }
}

struct Child {
    instance_id: String,
    pid: i32,
    mode: DataPersistence,
    cgroup: Option<WorkspaceCgroup>,
    exit: watch::Receiver<Option<Option<i32>>>,
}

/// How workspace processes are confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// A plain child process (its own process group and cgroup, cleared
    /// environment, working directory in its data dir).
    None,
    /// Inside bubblewrap, in its own user (no capabilities), pid, IPC, UTS
    /// and cgroup namespaces and its own session. It sees `/usr` read-only,
    /// a minimal `/etc` (generated: no host accounts, no secrets), a private
    /// `/tmp`, its data dir at `/data` (read-write, its working directory)
    /// and the holdfast binary (read-only, for the built-in runtime); the
    /// rest of its root is read-only and empty. The network is shared: the
    /// runtime registers with the platform over loopback.
    Bwrap {
        bwrap: PathBuf,
        holdfast_exe: PathBuf,
        etc: PathBuf,
    },
}

/// Host files a sandbox's minimal `/etc` shows, read-only, where they exist:
/// what dynamically linked programs, TLS clients and name lookups need, none
/// of it secret.
const ETC_PASSTHROUGH: &[&str] = &[
    "ld.so.cache",
    "localtime",
    "resolv.conf",
    "alternatives",
    "ssl/certs",
];

impl Sandbox {
    /// Writes the minimal `/etc` the sandbox shows (accounts for the
    /// workspace's own uid only).
    pub fn write_etc(etc: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(etc)?;
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let mut passwd = format!("agent:x:{uid}:{gid}:workspace:{SANDBOX_DATA_DIR}:/bin/sh\n");
        let mut group = format!("agent:x:{gid}:\n");
        if uid != 65534 {
            passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
            group.push_str("nogroup:x:65534:\n");
        }
        std::fs::write(etc.join("passwd"), passwd)?;
        std::fs::write(etc.join("group"), group)?;
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        std::fs::write(etc.join("hostname"), "workspace\n")?;
        std::fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files dns\n",
        )?;
        Ok(())
    }

    /// The argv that runs `program args…` in `data_dir` under this sandbox.
    pub fn wrap(&self, program: &Path, args: &[String], data_dir: &Path) -> (PathBuf, Vec<String>) {
        match self {
            Sandbox::None => (program.to_path_buf(), args.to_vec()),
            Sandbox::Bwrap {
                bwrap,
                holdfast_exe,
                etc,
            } => {
                let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
                let mut out = s(&[
                    "--unshare-user",
                    "--unshare-pid",
                    "--unshare-ipc",
                    "--unshare-uts",
                    "--unshare-cgroup-try",
                    "--hostname",
                    "workspace",
                    "--cap-drop",
                    "ALL",
                    // Its own session: no signals to, or input injection
                    // into, the server's terminal.
                    "--new-session",
                    // Nothing of a workspace outlives the server that
                    // started it, nor the bwrap a stop ends.
                    "--die-with-parent",
                    "--ro-bind",
                    "/usr",
                    "/usr",
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
                    "--dir",
                    "/etc",
                ]);
                for f in ["passwd", "group", "hosts", "hostname", "nsswitch.conf"] {
                    out.extend([
                        "--ro-bind".to_owned(),
                        etc.join(f).display().to_string(),
                        format!("/etc/{f}"),
                    ]);
                }
                for f in ETC_PASSTHROUGH {
                    out.extend([
                        "--ro-bind-try".to_owned(),
                        format!("/etc/{f}"),
                        format!("/etc/{f}"),
                    ]);
                }
                out.extend([
                    "--ro-bind".to_owned(),
                    holdfast_exe.display().to_string(),
                    SANDBOX_EXE.to_owned(),
                    "--bind".to_owned(),
                    data_dir.display().to_string(),
                    SANDBOX_DATA_DIR.to_owned(),
                    "--chdir".to_owned(),
                    SANDBOX_DATA_DIR.to_owned(),
                    // Everything but /data and /tmp is read-only.
                    "--remount-ro".to_owned(),
                    "/".to_owned(),
                    "--".to_owned(),
                ]);
                // The built-in runtime is the holdfast binary, seen at its
                // sandbox path; any other program is the host's, by path.
                let program = if program == holdfast_exe.as_path() {
                    SANDBOX_EXE.to_owned()
                } else {
                    program.display().to_string()
                };
                out.push(program);
                out.extend(args.iter().cloned());
                (bwrap.clone(), out)
            }
        }
    }

    /// Runs `true` in this sandbox: whether it works on this host.
    pub fn probe(&self, scratch: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(scratch)?;
        let (program, args) = self.wrap(Path::new("/usr/bin/true"), &[], scratch);
        let out = std::process::Command::new(&program)
            .args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            anyhow::bail!(
                "{} failed ({}): {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }

    pub fn isolation(&self) -> Isolation {
        match self {
            Sandbox::None => Isolation::None,
            Sandbox::Bwrap { .. } => Isolation::Bwrap,
        }
    }
}

/// The live children of this server.
pub struct ProcessBackend {
    layout: Layout,
    stop_timeout: Duration,
    sandbox: Sandbox,
    cgroups: Cgroups,
    /// What puts a workspace into its cgroup before it runs: the small
    /// `holdfast-contain` beside the holdfast binary, or (`true`: where it
    /// is missing) the holdfast binary's own `contain` subcommand.
    launcher: (PathBuf, bool),
    children: Mutex<HashMap<Uuid, Child>>,
    /// Waits for each child, its pidfd kept out of this process's
    /// descriptor table (see `reaper.rs`).
    reaper: crate::reaper::Reaper,
    /// Tells whoever listens that a workspace's process exited (on its own
    /// or stopped): the reconciler acts on it at once instead of polling.
    exits: tokio::sync::broadcast::Sender<Uuid>,
}

impl ProcessBackend {
    pub fn new(
        layout: Layout,
        stop_timeout: Duration,
        sandbox: Sandbox,
        cgroups: Cgroups,
        holdfast_exe: PathBuf,
    ) -> Arc<Self> {
        let small = holdfast_exe.with_file_name("holdfast-contain");
        let launcher = if small.is_file() {
            (small, false)
        } else {
            (holdfast_exe, true)
        };
        Arc::new(ProcessBackend {
            layout,
            stop_timeout,
            sandbox,
            cgroups,
            launcher,
            children: Mutex::new(HashMap::new()),
            reaper: crate::reaper::Reaper::start(),
            exits: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Workspace ids whose process exited, as they exit.
    pub fn exits(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.exits.subscribe()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// What a workspace started now gets.
    pub fn confinement(&self) -> Confinement {
        Confinement {
            isolation: self.sandbox.isolation(),
            limits: if self.cgroups.limits() {
                Limits::Enforced
            } else {
                Limits::None
            },
        }
    }

    /// Prepares the data dir and starts the process. Returns what it got.
    #[tracing::instrument(skip_all, fields(workspace_id = %spec.workspace_id, instance_id = %spec.instance_id))]
    pub async fn spawn(&self, spec: Spawn) -> anyhow::Result<Confinement> {
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
        let sandboxed = self.sandbox != Sandbox::None;
        // std spawns with posix_spawn (no fork of this large process) only for
        // a program given by path; look it up in the child's PATH ourselves.
        let path = if sandboxed {
            Some(std::ffi::OsString::from(SANDBOX_PATH))
        } else {
            std::env::var_os("PATH")
        };
        let program = resolve_program(&spec.argv[0], path.as_deref());
        let (program, args) = self.sandbox.wrap(&program, &spec.argv[1..], &data_dir);
        let mut confinement = self.confinement();
        let cgroup = if self.cgroups.contained() {
            match self.cgroups.create(spec.workspace_id, spec.tier) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup for this workspace; its limits are not enforced");
                    confinement.limits = Limits::None;
                    None
                }
            }
        } else {
            None
        };
        let mut cmd = match &cgroup {
            // The launcher joins the cgroup, then execs the program: nothing
            // of the workspace ever runs outside it.
            Some(cg) => {
                let mut cmd = std::process::Command::new(&self.launcher.0);
                if self.launcher.1 {
                    cmd.arg("contain");
                }
                for f in cg.procs_files() {
                    cmd.arg("--cgroup").arg(f);
                }
                if !sandboxed {
                    cmd.arg("--argv0").arg(&spec.argv[0]);
                }
                cmd.arg("--").arg(&program).args(&args);
                cmd
            }
            None => {
                let mut cmd = std::process::Command::new(&program);
                if !sandboxed {
                    cmd.arg0(&spec.argv[0]);
                }
                cmd.args(&args);
                cmd
            }
        };
        cmd.current_dir(&data_dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        let seen_dir = if sandboxed {
            PathBuf::from(SANDBOX_DATA_DIR)
        } else {
            for key in INHERITED_ENV {
                if let Ok(v) = std::env::var(key) {
                    cmd.env(key, v);
                }
            }
            data_dir.clone()
        };
        if sandboxed {
            cmd.env("PATH", SANDBOX_PATH).env("TMPDIR", "/tmp");
        }
        cmd.env("HOME", &seen_dir);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.env("HOLDFAST_DATA_DIR", &seen_dir);
        cmd.env("HOLDFAST_WORKSPACE_ID", spec.workspace_id.to_string());
        cmd.env(INSTANCE_ENV, &spec.instance_id);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", spec.argv[0]))?;
        // The log's descriptors go with the command: none of this start's
        // stays open here.
        drop(cmd);
        let pid = i32::try_from(child.id()).unwrap_or(0);
        // Ordering: recorded right after the spawn, so that a server killed
        // from now on finds this process at its next start.
        if let Err(e) = write_pid_file(&self.layout.pid_file(spec.workspace_id), pid) {
            tracing::warn!(error = %e, "recording the pid failed");
        }
        let (tx, rx) = watch::channel(None);
        self.reaper.watch(crate::reaper::Watched {
            child,
            workspace_id: spec.workspace_id,
            exit: tx,
            exits: self.exits.clone(),
        });
        self.children.lock().expect("children lock").insert(
            spec.workspace_id,
            Child {
                instance_id: spec.instance_id,
                pid,
                mode: spec.mode,
                cgroup,
                exit: rx,
            },
        );
        Ok(confinement)
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

    /// Freezes every process of the workspace's running instance for a
    /// snapshot: the cgroup v2 freezer where there is one, otherwise
    /// SIGSTOP to its process group and to every member of its cgroup,
    /// repeated until no new process appears. `None` when nothing runs.
    /// The guard thaws when dropped, whatever happened meanwhile.
    pub fn freeze(&self, workspace_id: Uuid) -> Option<Frozen> {
        let (pid, cgroup) = {
            let children = self.children.lock().expect("children lock");
            let c = children.get(&workspace_id)?;
            if c.exit.borrow().is_some() {
                return None;
            }
            (c.pid, c.cgroup.clone())
        };
        if let Some(cg) = &cgroup
            && cg.freeze(Duration::from_secs(1))
        {
            return Some(Frozen {
                pgid: pid,
                cgroup,
                v2: true,
                stopped: Vec::new(),
            });
        }
        let mut stopped: Vec<i32> = Vec::new();
        let _ = killpg(Pid::from_raw(pid), Signal::SIGSTOP);
        for _ in 0..10 {
            let members = cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
            let new: Vec<i32> = members
                .into_iter()
                .filter(|p| !stopped.contains(p))
                .collect();
            if new.is_empty() {
                break;
            }
            for p in &new {
                let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGSTOP);
            }
            stopped.extend(new);
        }
        Some(Frozen {
            pgid: pid,
            cgroup,
            v2: false,
            stopped,
        })
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
            terminate_group(
                child.pid,
                child.cgroup.as_ref(),
                &mut child.exit,
                self.stop_timeout,
            )
            .await;
        }
        // Whatever left the process group (`setsid`, a double fork) is still
        // in the cgroup: nothing of the workspace survives its stop.
        if let Some(cg) = child.cgroup.take() {
            tokio::task::spawn_blocking(move || {
                cg.kill_and_wait(Duration::from_secs(10));
                cg.remove();
            })
            .await?;
        }
        let _ = std::fs::remove_file(self.layout.pid_file(workspace_id));
        if child.mode == DataPersistence::Ephemeral {
            let scratch = self.layout.root().join("scratch");
            let name = workspace_id.to_string();
            tokio::task::spawn_blocking(move || tree::erase_tree(&scratch, &name)).await??;
        }
        Ok(())
    }

    /// Stops whatever a previous run of this control plane left running
    /// (after `kill -9`): every process in its workspaces' cgroups, every
    /// recorded process that is still the one recorded, and anything an
    /// older version marked with its data dir. Returns how many it stopped.
    pub fn reap_leftovers(&self) -> usize {
        let mut killed = self.cgroups.reap_all();
        let run = self.layout.root().join("run");
        if let Ok(entries) = std::fs::read_dir(&run) {
            for e in entries.flatten() {
                if let Some((pid, start)) = read_pid_file(&e.path())
                    && start_time(pid) == Some(start)
                {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    killed += 1;
                }
                let _ = std::fs::remove_file(e.path());
            }
        }
        killed + reap_legacy(self.layout.root())
    }

    /// At a graceful shutdown, after [`Self::stop_all`].
    pub fn release(&self) {
        self.cgroups.remove_bases();
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
        // Many at once: a shutdown with thousands of workspaces must not
        // take one stop timeout after another.
        use futures_util::StreamExt;
        futures_util::stream::iter(ids)
            .for_each_concurrent(64, |id| async move {
                if let Err(e) = self.stop(id, None).await {
                    tracing::warn!(workspace_id = %id, error = %e, "stopping at shutdown failed");
                }
            })
            .await;
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
    cgroup: Option<&WorkspaceCgroup>,
    exit: &mut watch::Receiver<Option<Option<i32>>>,
    timeout: Duration,
) {
    let pgid = Pid::from_raw(pid);
    let _ = killpg(pgid, Signal::SIGTERM);
    if let Some(cg) = cgroup {
        cg.signal(Signal::SIGTERM);
    }
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

/// A process's start time (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`): with the pid, what tells a process from a later one
/// that reused its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn write_pid_file(path: &Path, pid: i32) -> std::io::Result<()> {
    let start = start_time(pid).unwrap_or(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{pid} {start}\n"))
}

fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    (pid > 1).then_some((pid, start))
}

/// Kills every process group whose leader carries `HOLDFAST_CP_ROOT=<root>`
/// in its environment: what an older version of holdfast, which marked its
/// workspaces so, left running.
fn reap_legacy(root: &Path) -> usize {
    let needle = format!("{LEGACY_ROOT_ENV}={}", root.display());
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
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

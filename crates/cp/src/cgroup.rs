//! Containment and limits: each workspace's processes live in a cgroup of
//! their own, so a stop can end all of them (including any that called
//! `setsid` or double-forked) and the tier's limits apply to all of them.
//!
//! Hosts differ: pure cgroup v2 (`/sys/fs/cgroup/cgroup.controllers`), a
//! v1/v2 hybrid (v2 mounted at `/sys/fs/cgroup/unified`, without
//! controllers, beside v1 hierarchies), or v1 only. Membership and the
//! atomic kill use v2 (`cgroup.kill`) wherever it is mounted, otherwise the
//! v1 `pids` hierarchy; memory, process and CPU limits use v2 controllers
//! where they can be enabled, otherwise v1's `memory`, `pids` and `cpu`.
//! Where nothing can be written the backend runs without cgroups: one
//! warning, and `"limits":"none"`, never a failure.
//!
//! Every workspace of one data dir lives under `holdfast-<hash of the data
//! dir>/ws-<workspace id>` in each hierarchy, so a server that restarts
//! after `kill -9` finds exactly what it left behind, and nothing else.

use holdfast_domain::Tier;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

const ROOT: &str = "/sys/fs/cgroup";

/// The tier's limits (memory bytes, processes, CPU weight 1–10000).
pub fn tier_limits(tier: Tier) -> (u64, u64, u64) {
    match tier.get() {
        1 => (256 << 20, 64, 50),
        2 => (512 << 20, 128, 100),
        3 => (1 << 30, 256, 200),
        _ => (2 << 30, 512, 400),
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// A v2 hierarchy: membership, `cgroup.kill`, and the controllers it
    /// could enable (`memory`, `pids`, `cpu`).
    V2 { controllers: Vec<String> },
    /// A v1 hierarchy of one controller (`pids`, `memory`, `cpu`).
    V1(&'static str),
}

#[derive(Debug, Clone)]
struct Hierarchy {
    /// `<mount>/holdfast-<hash>`.
    base: PathBuf,
    kind: Kind,
}

/// The cgroups this control plane can use, found once at start.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// The first is the one that holds membership (v2, or v1 `pids`).
    hierarchies: Vec<Hierarchy>,
    limits: bool,
}

/// One workspace's cgroup in every hierarchy.
#[derive(Debug, Clone)]
pub struct WorkspaceCgroup {
    dirs: Vec<PathBuf>,
    /// The membership directory is v2 (has `cgroup.kill`).
    v2: bool,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}

fn base_name(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    format!("holdfast-{}", holdfast_domain::hex::hex(&digest[..6]))
}

impl Cgroups {
    /// No cgroups at all (tests, or a host that allows none).
    pub fn none() -> Self {
        Cgroups::default()
    }

    /// Finds and prepares what this host allows for `data_dir`'s
    /// workspaces. Never fails: what cannot be used is left out.
    pub fn detect(data_dir: &Path) -> Self {
        Self::detect_under(Path::new(ROOT), data_dir)
    }

    fn detect_under(root: &Path, data_dir: &Path) -> Self {
        let name = base_name(data_dir);
        let mut hierarchies = Vec::new();
        let v2_mount = if root.join("cgroup.controllers").exists() {
            Some(root.to_path_buf())
        } else if root.join("unified/cgroup.controllers").exists() {
            Some(root.join("unified"))
        } else {
            None
        };
        let mut v2_controllers = Vec::new();
        if let Some(mount) = v2_mount {
            let base = mount.join(&name);
            if std::fs::create_dir_all(&base).is_ok() && base.join("cgroup.kill").exists() {
                // Controllers must be enabled from the top down; the ones
                // the host has bound to v1 simply are not offered here.
                let offered =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                for c in ["memory", "pids", "cpu"] {
                    if offered.split_whitespace().any(|o| o == c)
                        && write(&mount.join("cgroup.subtree_control"), &format!("+{c}")).is_ok()
                        && write(&base.join("cgroup.subtree_control"), &format!("+{c}")).is_ok()
                    {
                        v2_controllers.push(c.to_owned());
                    }
                }
                hierarchies.push(Hierarchy {
                    base,
                    kind: Kind::V2 {
                        controllers: v2_controllers.clone(),
                    },
                });
            }
        }
        for c in ["pids", "memory", "cpu"] {
            if v2_controllers.iter().any(|v| v == c) {
                continue;
            }
            let mount = root.join(c);
            if !mount.join("cgroup.procs").exists() || mount.join("cgroup.controllers").exists() {
                continue;
            }
            let base = mount.join(&name);
            if std::fs::create_dir_all(&base).is_ok() {
                hierarchies.push(Hierarchy {
                    base,
                    kind: Kind::V1(c),
                });
            }
        }
        let has = |c: &str| {
            hierarchies.iter().any(|h| match &h.kind {
                Kind::V2 { controllers } => controllers.iter().any(|x| x == c),
                Kind::V1(x) => *x == c,
            })
        };
        let limits = has("memory") && has("pids") && has("cpu");
        // Membership needs v2 or v1 pids at the front.
        hierarchies.sort_by_key(|h| match h.kind {
            Kind::V2 { .. } => 0,
            Kind::V1("pids") => 1,
            Kind::V1(_) => 2,
        });
        let contained = hierarchies
            .first()
            .is_some_and(|h| matches!(h.kind, Kind::V2 { .. } | Kind::V1("pids")));
        if !contained {
            hierarchies.clear();
        }
        let cg = Cgroups {
            hierarchies,
            limits: limits && contained,
        };
        if cg.limits {
            // Checked on a real cgroup: a host may let us make directories
            // yet refuse the limits.
            let probe = Uuid::new_v4();
            match cg.create(probe, Tier::from_stored(1)) {
                Ok(c) => c.remove(),
                Err(e) => {
                    tracing::warn!(error = %e, "cgroup limits cannot be set here");
                    return Cgroups {
                        limits: false,
                        ..cg
                    };
                }
            }
        }
        cg
    }

    /// Whether a stop can end every process of a workspace.
    pub fn contained(&self) -> bool {
        !self.hierarchies.is_empty()
    }

    /// Whether the tier limits are enforced.
    pub fn limits(&self) -> bool {
        self.limits
    }

    /// Makes the workspace's cgroup (emptying any left from before) and sets
    /// its tier's limits.
    pub fn create(&self, workspace_id: Uuid, tier: Tier) -> io::Result<WorkspaceCgroup> {
        let (memory, pids, weight) = tier_limits(tier);
        let leaf = format!("ws-{workspace_id}");
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let dir = h.base.join(&leaf);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            dirs.push(dir.clone());
            if !self.limits {
                continue;
            }
            match &h.kind {
                Kind::V2 { controllers } => {
                    for c in controllers {
                        match c.as_str() {
                            "memory" => {
                                write(&dir.join("memory.max"), &memory.to_string())?;
                                let _ = write(&dir.join("memory.swap.max"), "0");
                            }
                            "pids" => write(&dir.join("pids.max"), &pids.to_string())?,
                            "cpu" => write(&dir.join("cpu.weight"), &weight.to_string())?,
                            _ => {}
                        }
                    }
                }
                Kind::V1("memory") => {
                    write(&dir.join("memory.limit_in_bytes"), &memory.to_string())?;
                }
                Kind::V1("pids") => write(&dir.join("pids.max"), &pids.to_string())?,
                // v1 shares: 1024 is the default weight of 100.
                Kind::V1("cpu") => {
                    write(&dir.join("cpu.shares"), &(weight * 1024 / 100).to_string())?
                }
                Kind::V1(_) => {}
            }
        }
        let v2 = matches!(
            self.hierarchies.first().map(|h| &h.kind),
            Some(Kind::V2 { .. })
        );
        Ok(WorkspaceCgroup { dirs, v2 })
    }

    /// The cgroup of a workspace, whether or not it exists.
    pub fn of(&self, workspace_id: Uuid) -> WorkspaceCgroup {
        let leaf = format!("ws-{workspace_id}");
        WorkspaceCgroup {
            dirs: self
                .hierarchies
                .iter()
                .map(|h| h.base.join(&leaf))
                .collect(),
            v2: matches!(
                self.hierarchies.first().map(|h| &h.kind),
                Some(Kind::V2 { .. })
            ),
        }
    }

    /// Kills everything in every workspace cgroup of this data dir (what a
    /// previous run left after `kill -9`) and removes them. Returns how many
    /// cgroups held processes.
    pub fn reap_all(&self) -> usize {
        let Some(first) = self.hierarchies.first() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(&first.base) else {
            return 0;
        };
        let mut reaped = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ws-"))
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let cg = self.of(id);
            if !cg.pids().is_empty() {
                reaped += 1;
            }
            cg.kill_and_wait(Duration::from_secs(5));
            cg.remove();
        }
        reaped
    }

    /// Removes the data dir's base cgroups if they are empty (at a graceful
    /// shutdown).
    pub fn remove_bases(&self) {
        for h in &self.hierarchies {
            let _ = std::fs::remove_dir(&h.base);
        }
    }
}

impl WorkspaceCgroup {
    /// The `cgroup.procs` files a process joins (the launcher writes its
    /// own pid into each before it execs the workspace's program).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every process in it.
    pub fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every process in it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process in it (v2: `cgroup.kill`, which also catches
    /// processes forked meanwhile; v1: SIGKILL until it is empty) and waits
    /// up to `timeout` for it to be empty.
    pub fn kill_and_wait(&self, timeout: Duration) -> bool {
        let Some(dir) = self.dirs.first() else {
            return true;
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.v2 {
                let _ = write(&dir.join("cgroup.kill"), "1");
            } else {
                self.signal(nix::sys::signal::Signal::SIGKILL);
            }
            if self.pids().is_empty() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(cgroup = %dir.display(), "processes survive a kill");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Freezes every process in it with the v2 freezer (`cgroup.freeze`),
    /// waiting up to `wait` until the kernel says it is frozen. False where
    /// there is no v2 freezer (the caller stops the processes with signals).
    pub fn freeze(&self, wait: Duration) -> bool {
        let Some(dir) = self.dirs.first().filter(|_| self.v2) else {
            return false;
        };
        if write(&dir.join("cgroup.freeze"), "1").is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l.trim() == "frozen 1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Undoes [`Self::freeze`].
    pub fn thaw(&self) {
        if let Some(dir) = self.dirs.first().filter(|_| self.v2) {
            let _ = write(&dir.join("cgroup.freeze"), "0");
        }
    }

    /// Removes its directories (each must be empty of processes).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The launcher's side: `holdfast contain [--cgroup FILE]… [--argv0 NAME]
/// -- PROGRAM ARGS…` writes its own pid into each `cgroup.procs` FILE, then
/// execs PROGRAM in its place. Joining before the exec is what leaves no
/// window in which the workspace could fork outside its cgroup. Returns
/// only on failure (the caller exits non-zero).
pub fn contain_main(args: &[std::ffi::OsString]) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut files = Vec::new();
    let mut argv0 = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].to_str() {
            Some("--cgroup") if i + 1 < args.len() => {
                files.push(PathBuf::from(&args[i + 1]));
                i += 2;
            }
            Some("--argv0") if i + 1 < args.len() => {
                argv0 = Some(args[i + 1].clone());
                i += 2;
            }
            Some("--") => {
                i += 1;
                break;
            }
            _ => {
                return io::Error::other(
                    "usage: holdfast contain [--cgroup FILE]… -- PROGRAM ARGS…",
                );
            }
        }
    }
    let Some(program) = args.get(i) else {
        return io::Error::other("contain: no program");
    };
    close_inherited_fds();
    let me = std::process::id().to_string();
    for f in &files {
        if let Err(e) = write(f, &me) {
            // Running outside the cgroup would break the promise of a
            // contained stop: refuse to start instead.
            return io::Error::new(e.kind(), format!("joining {}: {e}", f.display()));
        }
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args[i + 1..]);
    if let Some(a) = argv0 {
        cmd.arg0(a);
    }
    cmd.exec()
}

/// Marks every descriptor above stderr close-on-exec, so that nothing this
/// process inherited (from whoever started the server) reaches a workspace:
/// a child gets exactly stdin, stdout and stderr.
pub fn close_inherited_fds() {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_tier_table() {
        let t = |n| tier_limits(Tier::from_stored(n));
        assert_eq!(t(1), (256 << 20, 64, 50));
        assert_eq!(t(2), (512 << 20, 128, 100));
        assert_eq!(t(3), (1 << 30, 256, 200));
        assert_eq!(t(4), (2 << 30, 512, 400));
    }

    #[test]
    fn a_host_without_cgroups_gives_none_and_no_failure() {
        let fake = tempfile::tempdir().unwrap();
        let cg = Cgroups::detect_under(fake.path(), Path::new("/srv/x"));
        assert!(!cg.contained());
        assert!(!cg.limits());
        assert!(cg.pids_of_nothing());
    }

    impl Cgroups {
        fn pids_of_nothing(&self) -> bool {
            self.of(Uuid::nil()).pids().is_empty()
        }
    }

    #[test]
    fn the_base_is_per_data_dir() {
        assert_ne!(base_name(Path::new("/a")), base_name(Path::new("/b")));
        assert_eq!(base_name(Path::new("/a")), base_name(Path::new("/a")));
    }
}

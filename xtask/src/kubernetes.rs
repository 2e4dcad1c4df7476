//! `cargo xtask test`'s Kubernetes step, for the backend no cluster can be
//! had for here (ENGINES.md):
//! 1. every manifest holdfast makes (the golden files the backend's tests
//!    keep equal to its builders, `deploy/kubernetes/golden/`) and ships
//!    (`deploy/kubernetes/*.yaml`) is checked with `kubernetes-validate
//!    --strict` (pinned, in a venv under `target/`) against Kubernetes 1.30,
//!    the oldest supported, and the newest schemas it bundles;
//! 2. the golden claim and persist Pod run for real with `podman kube
//!    play` on a throwaway Podman: data written by the Pod survives `kube
//!    down` of the Pod (a stop) and a second `kube play` (a restart).
//!
//! Under `CI=true` a missing tool is installed or fails the run; outside CI
//! the step skips and says why.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// kubernetes-validate, pinned: its bundled schemas are what is checked.
const PIN: &str = "1.37.0";
/// The oldest API version the backend supports, and the newest bundled.
const VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// The image the golden Pods name.
const IMAGE: &str = "localhost/holdfast-runtime:test";
/// The uid the golden Pods run as (`manifest::RUN_AS`).
const RUN_AS: &str = "65532";
const POD: &str = "ws-00000000-0000-0000-0000-000000001111";

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
}

pub fn run(root: &Path, ci: bool) -> anyhow::Result<()> {
    validate(root, ci)?;
    kube_play(root, ci)
}

fn installed(tool: &Path) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(PIN))
}

fn install(venv: &Path) -> anyhow::Result<()> {
    eprintln!(
        "==> install kubernetes-validate {PIN} into {}",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (kubernetes-validate needs Python 3)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", &format!("kubernetes-validate=={PIN}")])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install kubernetes-validate=={PIN} failed ({status})");
    }
    Ok(())
}

/// The manifests to check: the goldens and the shipped deploy files.
fn manifests(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in ["deploy/kubernetes", "deploy/kubernetes/golden"] {
        for entry in std::fs::read_dir(root.join(dir)).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.len() < 4 {
        bail!("expected the golden and deploy manifests, found {files:?}");
    }
    Ok(files)
}

fn validate(root: &Path, ci: bool) -> anyhow::Result<()> {
    let venv = target_dir(root).join(format!("kubernetes-validate-{PIN}"));
    let tool = venv.join("bin/kubernetes-validate");
    if !installed(&tool)
        && let Err(e) = install(&venv)
    {
        if ci {
            return Err(e);
        }
        eprintln!("skipping the manifest validation: {e:#}");
        return Ok(());
    }
    let files = manifests(root)?;
    for version in VERSIONS {
        eprintln!(
            "==> kubernetes-validate --strict -k {version}: {} files",
            files.len()
        );
        let status = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .status()
            .context("running kubernetes-validate")?;
        if !status.success() {
            bail!("kubernetes-validate --strict -k {version} found invalid manifests ({status})");
        }
    }
    Ok(())
}

/// A Podman of its own: config and storage under a scratch dir, removed
/// (with `podman system reset`) when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn podman(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .podman(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running podman {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The workspace container's log, once it holds `want` (up to 30 s).
    fn wait_log(&self, want: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .podman(&["logs", &format!("{POD}-workspace")])
                .output()
                .context("running podman logs")?;
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if log.trim_end() == want {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("the workspace Pod's log is {log:?}, expected {want:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self
            .podman(&["system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(line: &str) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .args(["-c", line])
        .output()
        .with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kube_play(root: &Path, ci: bool) -> anyhow::Result<()> {
    if !(on_path("podman") && Path::new("/bin/busybox").exists()) {
        if !ci {
            eprintln!(
                "skipping podman kube play of the golden manifests: podman or busybox is not \
                 installed (apt-get install -y podman runc busybox-static)"
            );
            return Ok(());
        }
        sh("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y podman runc busybox-static")
            .context("installing podman")?;
    }
    let dir = std::env::temp_dir().join(format!("holdfast-kube-play-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The same engine settings as the container suite's Podman (see
    // ENGINES.md: runc, and the hard nofile limit this host allows).
    let hard = sh("ulimit -Hn")?.trim().to_owned();
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile={hard}:{hard}\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
            dir.display()
        ),
    )?;
    let podman = Scratch { dir: dir.clone() };
    // A busybox image whose /data belongs to the workspace's uid: Podman
    // copies a mount point's owner into a new, empty volume, where a
    // kubelet would apply the Pod's fsGroup (which Podman ignores).
    let rootfs = dir.join("rootfs");
    for d in ["bin", "data", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying busybox")?;
    for applet in sh("/bin/busybox --list")?.lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    sh(&format!(
        "chown {RUN_AS}:{RUN_AS} '{0}/data' && chmod 1777 '{0}/tmp'",
        rootfs.display()
    ))?;
    eprintln!("==> kube play: image {IMAGE} (busybox, /data owned by {RUN_AS})");
    let status = podman
        .podman(&[
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "WORKDIR /data",
            "-",
            IMAGE,
        ])
        .stdin(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .args(["-c", "."])
                .stdout(Stdio::piped())
                .spawn()
                .context("running tar")?
                .stdout
                .context("tar's output")?,
        )
        .stdout(Stdio::null())
        .status()
        .context("running podman import")?;
    if !status.success() {
        bail!("podman import of {IMAGE} failed ({status})");
    }
    let golden = root.join("deploy/kubernetes/golden");
    let claim = golden.join("claim.yaml");
    let pod = golden.join("pod-persist.yaml");
    let (claim, pod) = (
        claim.to_str().context("a UTF-8 path")?,
        pod.to_str().context("a UTF-8 path")?,
    );
    // The claim first (it becomes a named volume), then the Pod on it.
    eprintln!("==> kube play: the claim, then the persist Pod");
    podman.run(&["kube", "play", claim])?;
    podman.run(&["kube", "play", pod])?;
    podman.wait_log("kept")?;
    // A stop: the Pod goes, the claim (volume) stays.
    eprintln!("==> kube play: kube down the Pod, kube play it again");
    podman.run(&["kube", "down", pod])?;
    let volumes = podman.run(&["volume", "ls", "--format", "{{.Name}}"])?;
    if !volumes.lines().any(|v| v == POD) {
        bail!("kube down of the Pod removed its claim's volume: {volumes:?}");
    }
    podman.run(&["kube", "play", pod])?;
    // The second run appends to what the first wrote.
    podman.wait_log("kept\nkept")?;
    podman.run(&["kube", "down", pod])?;
    eprintln!("==> kube play: the persist workspace's data survived kube down + kube play");
    Ok(())
}

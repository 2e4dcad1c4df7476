//! A throwaway Podman serving the Docker Engine API for the container
//! backend's test run: its `containers.conf` (runc, ulimits this host
//! allows) and `storage.conf` (everything under a scratch dir), a local
//! image built without any registry, and `podman system service` on a
//! socket in that dir. Stopped, and its storage wiped, when dropped.
//!
//! The image: a static busybox (a shell and the usual tools for command
//! runtimes) plus the C library files the holdfast binary links, found with
//! `ldd`, so that the built-in runtime (holdfast itself, bind-mounted by the
//! backend) runs in it. It is imported from a directory tree in about a
//! second; no registry is reachable on CI.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "localhost/holdfast-runtime:test";

pub struct Engine {
    dir: PathBuf,
    service: Child,
    pub host: String,
    pub volumes: PathBuf,
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
}

fn sh(line: &str) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .args(["-c", line])
        .output()
        .with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Engine {
    /// Starts the engine. Outside CI a host without Podman gets `None` (the
    /// caller says the container run is skipped, and why); under CI Podman
    /// is installed, and any failure fails the run.
    pub fn start(ci: bool, holdfast: &Path) -> anyhow::Result<Option<Engine>> {
        if !(on_path("podman") && Path::new("/bin/busybox").exists()) {
            if !ci {
                eprintln!(
                    "skipping the API tests and the contract on the container backend: podman or busybox is not \
                     installed (apt-get install -y podman runc busybox-static)"
                );
                return Ok(None);
            }
            sh("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y podman runc busybox-static")
                .context("installing podman")?;
        }
        let dir = std::env::temp_dir().join(format!("holdfast-podman-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let hard = sh("ulimit -Hn")?.trim().to_owned();
        // crun refuses hybrid cgroups here, and the default ulimits exceed
        // what root may set: runc and this host's hard limit.
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
        let env = [
            ("CONTAINERS_CONF", dir.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
        ];
        build_image(&dir, &env, holdfast)?;
        let socket = dir.join("podman.sock");
        let host = format!("unix://{}", socket.display());
        eprintln!("==> container engine: podman system service --time=0 {host}");
        let service = Command::new("podman")
            .args(["system", "service", "--time=0", &host])
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("service.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .context("starting podman system service")?;
        let mut engine = Engine {
            volumes: dir.join("root").join("volumes"),
            dir,
            service,
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline || engine.service.try_wait()?.is_some() {
                let log =
                    std::fs::read_to_string(engine.dir.join("service.log")).unwrap_or_default();
                bail!("podman system service did not start: {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(engine))
    }

    /// The variables that put the API suite on this engine.
    pub fn test_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOLDFAST_TEST_BACKEND", "container".to_owned()),
            ("HOLDFAST_TEST_CONTAINER_HOST", self.host.clone()),
            ("HOLDFAST_TEST_CONTAINER_IMAGE", IMAGE.to_owned()),
            (
                "HOLDFAST_TEST_CONTAINER_VOLUMES",
                self.volumes.display().to_string(),
            ),
        ]
    }
}

/// Busybox and the holdfast binary's C library, imported as [`IMAGE`].
pub fn build_image(dir: &Path, env: &[(&str, PathBuf)], holdfast: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for d in ["bin", "data", "tmp", "opt/holdfast"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying busybox")?;
    for applet in sh("/bin/busybox --list")?.lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    let ldd = sh(&format!("ldd '{}'", holdfast.display()))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a library has a folder"))?;
        std::fs::copy(lib, &target).with_context(|| format!("copying {lib}"))?;
    }
    eprintln!("==> container image: {IMAGE} (busybox + the C library of holdfast)");
    let mut import = Command::new("sh");
    import
        .args([
            "-c",
            &format!(
                "tar -C '{}' -c . | podman import --change 'ENV PATH=/bin' --change 'WORKDIR /data' - {IMAGE}",
                rootfs.display()
            ),
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdout(Stdio::null());
    let status = import.status().context("running podman import")?;
    if !status.success() {
        bail!("podman import of {IMAGE} failed ({status})");
    }
    Ok(())
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
        // Its storage holds overlay mounts: Podman itself takes them down.
        let _ = Command::new("podman")
            .args(["system", "reset", "--force"])
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

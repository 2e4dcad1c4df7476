//! Data on disk for the deletion benchmarks: files of pseudo-random bytes,
//! `cp -a`, `rm -rf`, `sync`, and a wait for a workspace to be online.
//!
//! The files hold real (incompressible, non-zero) data written in full, so
//! that the filesystem allocates and later frees every block, as it would
//! for a workspace's own files; a file of zeros could be sparse or trivially
//! cheap to free and would flatter both sides of a comparison.

use super::server::Server;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const MIB: u64 = 1024 * 1024;

/// Writes `count` files of `size` bytes each, named `<prefix><i>`, into
/// `dir` (created if needed). Each file's bytes come from its own seed.
/// Returns the bytes written.
pub fn write_files(dir: &Path, prefix: &str, count: usize, size: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let mut buf = vec![0u8; usize::try_from(size.min(4 * MIB)).unwrap_or(0)];
    let mut total = 0;
    for i in 0..count {
        let path = dir.join(format!("{prefix}{i}"));
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut rng = XorShift::new(path.as_os_str().len() as u64 * 1_000_003 + i as u64);
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])
                .with_context(|| format!("writing {}", path.display()))?;
            left -= n as u64;
        }
        total += size;
    }
    Ok(total)
}

/// xorshift64*: fast enough to produce a GiB in well under a second, and
/// its output does not compress or deduplicate.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Runs a command to completion, failing unless it exits 0; returns its wall
/// time (start to exit, as a shell's `time` would show).
pub fn run(program: &str, args: &[&Path]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    let took = start.elapsed();
    if !status.success() {
        bail!("{program} {args:?} failed ({status})");
    }
    Ok(took)
}

/// `cp -a <from> <to>`.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    run("cp", &[Path::new("-a"), from, to]).map(|_| ())
}

/// `sync`: dirty pages written back, so that a timed deletion does not also
/// pay for (or, by dropping dirty pages unwritten, save) the writeback of
/// the copy made just before it.
pub fn sync() -> anyhow::Result<()> {
    run("sync", &[]).map(|_| ())
}

/// How many entries `dir` holds; a missing dir holds none.
pub fn entries(dir: &Path) -> anyhow::Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// `<data-dir>/volumes/<workspace-id>`, where the server keeps a persist
/// workspace's data.
pub fn volume_dir(server: &Server, workspace_id: &str) -> PathBuf {
    server.data_dir.join("volumes").join(workspace_id)
}

const ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `GET /workspaces/<id>` every millisecond until it is `online`.
pub async fn wait_online(server: &Server, id: &str, mut status: String) -> anyhow::Result<()> {
    let start = Instant::now();
    while status != "online" {
        if status == "failed" || start.elapsed() > ONLINE_TIMEOUT {
            bail!(
                "workspace {id} is {status:?}, not online, after {:?}; server output:\n{}",
                start.elapsed(),
                server.recent_output()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        status = server.workspace_status(id).await?;
    }
    Ok(())
}

//! A throwaway PostgreSQL cluster for the test run: `initdb` into a temp
//! dir, started on a free loopback port with its socket in that dir, and
//! stopped (and removed) when dropped. As root, PostgreSQL's tools run as the
//! `postgres` user (initdb refuses root).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub url: String,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, if any.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
fn pg(bin: &Path, tool: &str, args: &[String]) -> anyhow::Result<()> {
    pg_with(bin, tool, args, std::process::Stdio::inherit())
}

fn pg_with(
    bin: &Path,
    tool: &str,
    args: &[String],
    stdout: std::process::Stdio,
) -> anyhow::Result<()> {
    let program = bin.join(tool);
    let status = if is_root() {
        let line = std::iter::once(program.display().to_string())
            .chain(
                args.iter()
                    .map(|a| format!("'{}'", a.replace('\'', "'\\''"))),
            )
            .collect::<Vec<_>>()
            .join(" ");
        Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", &line])
            .stdout(stdout)
            .status()
    } else {
        Command::new(&program).args(args).stdout(stdout).status()
    }
    .with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} failed ({status})");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Starts a cluster. Without PostgreSQL installed: under CI it is
    /// installed from Debian's packages (a failure fails the run); outside
    /// CI, `Ok(None)` with a printed reason.
    pub fn start(ci: bool) -> anyhow::Result<Option<Cluster>> {
        let bin = match find_bin() {
            Some(b) => b,
            None if ci => {
                eprintln!("==> installing PostgreSQL (apt-get install -y postgresql)");
                let ok = Command::new("sh")
                    .args(["-c", "apt-get update && apt-get install -y postgresql"])
                    .status()
                    .is_ok_and(|s| s.success());
                match find_bin() {
                    Some(b) if ok => b,
                    _ => bail!(
                        "CI=true and PostgreSQL could not be installed: the PostgreSQL tests cannot run"
                    ),
                }
            }
            None => {
                eprintln!(
                    "skipping PostgreSQL tests: no /usr/lib/postgresql/*/bin/initdb (apt-get install -y postgresql)"
                );
                return Ok(None);
            }
        };
        let dir = std::env::temp_dir().join(format!("holdfast-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown postgres {} failed", dir.display());
            }
        }
        let data = dir.join("data");
        pg(
            &bin,
            "initdb",
            &[
                "-D".into(),
                data.display().to_string(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
            ],
        )?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400",
            dir.display()
        );
        let cluster = Cluster {
            bin,
            dir: dir.clone(),
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        pg(
            &cluster.bin,
            "pg_ctl",
            &[
                "-D".into(),
                data.display().to_string(),
                "-o".into(),
                options,
                "-l".into(),
                dir.join("log").display().to_string(),
                "-w".into(),
                "start".into(),
            ],
        )?;
        eprintln!("==> PostgreSQL for the tests at {}", cluster.url);
        Ok(Some(cluster))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        if let Err(e) = pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D".into(),
                data,
                "-m".into(),
                "fast".into(),
                "-w".into(),
                "stop".into(),
            ],
        ) {
            eprintln!("stopping the test PostgreSQL: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

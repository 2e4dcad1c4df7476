//! `holdfast serve`: settings, the admin token, and the server's life.

use anyhow::Context;
use clap::Args;
use holdfast_cp::container::ContainerSettings;
use holdfast_cp::kubernetes::KubernetesSettings;
use holdfast_cp::process::{Layout, Sandbox};
use holdfast_cp::{BackendChoice, ControlPlane, CpPolicy, EmbeddedCp, HttpCp};
use holdfast_domain::{DataPersistence, DurationArg, ImageRef};
use holdfast_platform::{App, Controller, ReconcilerSettings, Secret, Settings, generate_token};
use holdfast_store::Store;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "127.0.0.1:7420")]
    listen: String,
    /// Where the database, volumes, scratch data and logs live.
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "./.holdfast")]
    data_dir: PathBuf,
    /// PostgreSQL (`postgres://…`) instead of SQLite in the data dir; several
    /// replicas may share it.
    #[arg(long, env = "HOLDFAST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The admin token (default: generated on first start into
    /// <data-dir>/admin-token).
    #[arg(long, env = "HOLDFAST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// How often the sweeper runs (it also runs at start).
    #[arg(long, env = "HOLDFAST_SWEEP_INTERVAL", default_value = "60s")]
    sweep_interval: DurationArg,
    /// A workspace still `provisioning` after this long becomes `failed`
    /// (its compute and data are left alone).
    #[arg(long, env = "HOLDFAST_PROVISION_TIMEOUT", default_value = "2m")]
    provision_timeout: DurationArg,
    /// How often runtimes heartbeat; three missed beats make a workspace
    /// offline (and restarted).
    #[arg(long, env = "HOLDFAST_HEARTBEAT_INTERVAL", default_value = "5s")]
    heartbeat_interval: DurationArg,
    /// The first delay before restarting a crashed workspace; it doubles at
    /// each crash up to one minute and resets after a minute of stable run.
    #[arg(long, env = "HOLDFAST_RESTART_BACKOFF", default_value = "500ms")]
    restart_backoff: DurationArg,
    /// How often the reconciler also looks at every workspace, as a safety
    /// net: it acts on process exits, requests and deadlines as they
    /// happen. (A control plane that reports no exits, such as a remote one,
    /// is polled every 500 ms instead.)
    #[arg(long, env = "HOLDFAST_RESYNC_INTERVAL", default_value = "60s")]
    resync_interval: DurationArg,
    /// The URL workspaces reach this server at (`HOLDFAST_PLATFORM_URL` in
    /// their env). Default: `http://` and the listen address, which suits
    /// the process and container backends; on `--backend kubernetes` give
    /// the Service's URL (`http://holdfast.holdfast.svc:7420`).
    #[arg(long, env = "HOLDFAST_PUBLIC_URL")]
    public_url: Option<String>,
    /// How long a canvas sign-in lasts (Sign out ends it sooner).
    #[arg(long, env = "HOLDFAST_SESSION_TTL", default_value = "12h")]
    session_ttl: DurationArg,
    /// Use the control plane at this URL (`holdfast cp serve`) instead of
    /// the embedded one.
    #[arg(long, env = "HOLDFAST_CP_URL", requires_all = ["cp_shared_secret", "cp_tenant_token"])]
    cp_url: Option<String>,
    /// The remote control plane's shared secret.
    #[arg(long, env = "HOLDFAST_CP_SHARED_SECRET", hide_env_values = true)]
    cp_shared_secret: Option<String>,
    /// This platform's tenant token on the remote control plane.
    #[arg(long, env = "HOLDFAST_CP_TENANT_TOKEN", hide_env_values = true)]
    cp_tenant_token: Option<String>,
}

/// Creates the data dir (mode 0700) if missing, and makes an existing one
/// 0700: it holds the admin token, the store and every workspace's data.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making data dir {} private (mode 0700)", dir.display()))
}

/// Reads, or creates on first start, the admin token. Returns it and whether
/// it was just generated (and so must be printed once).
fn admin_token(data_dir: &Path, given: Option<String>) -> anyhow::Result<(Secret, bool)> {
    let path = data_dir.join("admin-token");
    if let Some(token) = given.filter(|t| !t.trim().is_empty()) {
        return Ok((Secret::new(token.trim()), false));
    }
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((Secret::new(s.trim()), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = generate_token("hfa");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.expose().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((token, true))
}

/// The control plane's policy flags, shared by `serve` (its embedded control
/// plane) and `cp serve`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What a workspace without `compute.data_persistence` (auto) gets.
    #[arg(
        long,
        env = "HOLDFAST_DEFAULT_DATA_PERSISTENCE",
        default_value = "persist"
    )]
    default_data_persistence: DataPersistence,
    /// How long data of a workspace deleted without erase is kept.
    #[arg(long, env = "HOLDFAST_RETENTION_GRACE", default_value = "7d")]
    retention_grace: DurationArg,
    /// How long data of a workspace deleted with erase can still be restored.
    #[arg(long, env = "HOLDFAST_ERASE_GRACE", default_value = "5m")]
    erase_grace: DurationArg,
    /// How long a workspace process gets between SIGTERM and SIGKILL.
    #[arg(long, env = "HOLDFAST_STOP_TIMEOUT", default_value = "10s")]
    stop_timeout: DurationArg,
    /// How workspaces are isolated: `bwrap` runs each inside bubblewrap
    /// (and refuses to start where it cannot), `none` runs plain child
    /// processes, `auto` is bwrap where it works on this host, otherwise
    /// none with a warning.
    #[arg(long, env = "HOLDFAST_SANDBOX", default_value = "auto", value_parser = ["auto", "bwrap", "none"])]
    sandbox: String,
    /// What runs workspaces: `process` (a child process each, data in the
    /// data dir), `container` (a container each on a Docker Engine API
    /// server, Docker or Podman, data in its named volumes), `kubernetes`
    /// (a bare Pod each in `--k8s-namespace`, data on PersistentVolumeClaims).
    #[arg(long, env = "HOLDFAST_BACKEND", default_value = "process", value_parser = ["process", "container", "kubernetes"])]
    backend: String,
    /// The container engine (`--backend container`): `unix:///…sock`,
    /// `tcp://host:port`. Default: `$DOCKER_HOST`, else
    /// `unix:///var/run/docker.sock`.
    #[arg(long, env = "HOLDFAST_CONTAINER_HOST")]
    container_host: Option<String>,
    /// The image of a workspace whose `runtime.image` is not set. It must be
    /// on the engine and hold a C library: the built-in runtime is this
    /// binary, mounted read-only into the container. On `--backend
    /// kubernetes` the image must hold holdfast at /opt/holdfast/holdfast.
    #[arg(
        long,
        env = "HOLDFAST_CONTAINER_IMAGE",
        default_value = "localhost/holdfast-runtime:latest"
    )]
    container_image: String,
    /// The containers' network mode. `host` lets the built-in runtime reach
    /// the platform's loopback URL and be reached at its own.
    #[arg(long, env = "HOLDFAST_CONTAINER_NETWORK", default_value = "host")]
    container_network: String,
    /// The kubeconfig file of `--backend kubernetes`. Without it, the
    /// in-cluster service account is used (holdfast running in a Pod).
    #[arg(long, env = "HOLDFAST_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The namespace of `--backend kubernetes`: every workspace Pod and
    /// claim lives there. Replicas sharing one PostgreSQL share it.
    #[arg(long, env = "HOLDFAST_K8S_NAMESPACE", default_value = "holdfast")]
    k8s_namespace: String,
    /// The StorageClass of new claims (`--backend kubernetes`); unset: the
    /// cluster's default class. Its PVs are patched to Retain once bound.
    #[arg(long, env = "HOLDFAST_K8S_STORAGE_CLASS")]
    k8s_storage_class: Option<String>,
    /// How often every attached volume's size is measured (and quotas
    /// checked): `data.bytes` is at most this old.
    #[arg(long, env = "HOLDFAST_USAGE_INTERVAL", default_value = "30s")]
    pub usage_interval: DurationArg,
    /// The longest a running workspace stays frozen for a snapshot: past
    /// it the workspace is thawed and the capture goes on as a
    /// crash-consistent, best-effort one (said in the snapshot).
    #[arg(long, env = "HOLDFAST_SNAPSHOT_FREEZE_MAX", default_value = "10s")]
    pub snapshot_freeze_max: DurationArg,
}

impl PolicyArgs {
    /// `with_workspaces`: whether the control plane shares the platform's
    /// store (embedded), so that its sweeper can tell orphan records.
    pub fn policy(&self, with_workspaces: bool, data_dir: &Path) -> anyhow::Result<CpPolicy> {
        let exe = std::env::current_exe().context("locating the holdfast binary")?;
        let sandbox = match self.sandbox.as_str() {
            // A container is its own sandbox: bubblewrap is for processes.
            _ if self.backend != "process" => Sandbox::None,
            "none" => Sandbox::None,
            wanted => {
                let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|d| d.join("bwrap"))
                    .find(|p| p.is_file());
                let tried = found
                    .context("bubblewrap (bwrap) is not on the PATH (apt-get install bubblewrap)")
                    .and_then(|bwrap| {
                        let sandbox = Sandbox::Bwrap {
                            bwrap,
                            holdfast_exe: exe.clone(),
                            etc: Layout::new(data_dir).sandbox_etc(),
                        };
                        let etc = Layout::new(data_dir).sandbox_etc();
                        Sandbox::write_etc(&etc)
                            .with_context(|| format!("writing {}", etc.display()))?;
                        sandbox.probe(&data_dir.join("sandbox").join("probe"))?;
                        Ok(sandbox)
                    });
                match (tried, wanted) {
                    (Ok(sandbox), _) => sandbox,
                    (Err(e), "bwrap") => {
                        return Err(e.context("--sandbox bwrap cannot sandbox on this host"));
                    }
                    (Err(e), _) => {
                        tracing::warn!(
                            error = %format!("{e:#}"),
                            "--sandbox auto: bubblewrap does not work here; workspaces run \
                             WITHOUT a sandbox (isolation \"none\")"
                        );
                        Sandbox::None
                    }
                }
            }
        };
        let backend = match self.backend.as_str() {
            "process" => BackendChoice::Process,
            "container" => BackendChoice::Container(ContainerSettings {
                host: self
                    .container_host
                    .clone()
                    .filter(|h| !h.trim().is_empty())
                    .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
                    .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned()),
                image: ImageRef::parse(&self.container_image)
                    .map_err(|e| anyhow::anyhow!("--container-image: {}", e.message))?,
                runtime_exe: exe.clone(),
                stop_timeout: self.stop_timeout.0,
                network: self.container_network.clone(),
            }),
            "kubernetes" => {
                let mut settings = KubernetesSettings::new(
                    self.k8s_namespace.clone(),
                    self.kubeconfig.clone(),
                    ImageRef::parse(&self.container_image)
                        .map_err(|e| anyhow::anyhow!("--container-image: {}", e.message))?,
                );
                settings.storage_class = self.k8s_storage_class.clone();
                BackendChoice::Kubernetes(settings)
            }
            other => anyhow::bail!("--backend {other}: use process, container or kubernetes"),
        };
        Ok(CpPolicy {
            backend,
            default_persistence: self.default_data_persistence,
            retention_grace: self.retention_grace.0,
            erase_grace: self.erase_grace.0,
            runtime_exe: exe,
            stop_timeout: self.stop_timeout.0,
            with_workspaces,
            sandbox,
            usage_interval: self.usage_interval.0,
            snapshot_freeze_max: self.snapshot_freeze_max.0,
        })
    }
}

/// How long a client may take over a request, shared by `serve` and
/// `cp serve`: slow clients are cut off so that they cannot hold
/// connections (and memory) open.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// A request's head must arrive within this long (from its first byte,
    /// or from the connection's accept for its first request).
    #[arg(long, env = "HOLDFAST_HEADER_TIMEOUT", default_value = "10s")]
    header_timeout: DurationArg,
    /// A request's whole body must arrive within this long of its head
    /// (otherwise 408).
    #[arg(long, env = "HOLDFAST_BODY_TIMEOUT", default_value = "30s")]
    body_timeout: DurationArg,
    /// A kept-alive connection idle for this long is closed.
    #[arg(long, env = "HOLDFAST_IDLE_TIMEOUT", default_value = "60s")]
    idle_timeout: DurationArg,
}

impl HttpArgs {
    pub fn timeouts(&self) -> holdfast_platform::server::Timeouts {
        holdfast_platform::server::Timeouts {
            header: self.header_timeout.0,
            body: self.body_timeout.0,
            idle: self.idle_timeout.0,
        }
    }
}

/// This replica's id, kept in `<data-dir>/replica-id` (made on first start).
fn replica_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("replica-{}", uuid::Uuid::new_v4());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Logs to stderr, filtered by `HOLDFAST_LOG` (default `info`), coloured
/// only when stderr is a terminal: a log file or a journal gets plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOLDFAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing();

    private_dir(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize()?;
    let (token, generated) = admin_token(&data_dir, args.admin_token)?;

    let store = match &args.database_url {
        Some(url) => Store::open_url(url).await?,
        None => Store::open_sqlite(&data_dir.join("holdfast.db")).await?,
    };
    // The embedded control plane (default), or a remote one over HTTP.
    let (cp, embedded): (Arc<dyn ControlPlane>, Option<Arc<EmbeddedCp>>) = match &args.cp_url {
        Some(url) => {
            let secret = args
                .cp_shared_secret
                .as_deref()
                .context("--cp-url needs --cp-shared-secret")?;
            let tenant = args
                .cp_tenant_token
                .as_deref()
                .context("--cp-url needs --cp-tenant-token")?;
            (Arc::new(HttpCp::new(url, secret, tenant)?), None)
        }
        None => {
            let policy = args.policy.policy(true, &data_dir)?;
            let cp = EmbeddedCp::start(store.clone(), data_dir.clone(), policy).await?;
            (cp.clone(), Some(cp))
        }
    };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = args
        .public_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| format!("http://{addr}"));
    let reconciler = ReconcilerSettings {
        heartbeat_interval: args.heartbeat_interval.0,
        heartbeat_window: args.heartbeat_interval.0 * 3,
        provision_timeout: args.provision_timeout.0,
        backoff_base: args.restart_backoff.0,
        usage_interval: args.policy.usage_interval.0,
        resync: args.resync_interval.0,
        ..ReconcilerSettings::default()
    };
    let ctl = Controller::new(
        store,
        cp,
        Settings {
            admin_token: token.clone(),
            public_url: url.clone(),
            reconciler,
            replica_id: replica_id(&data_dir)?,
            session_ttl: args.session_ttl.0,
        },
    )
    .await?;
    let background = ctl.spawn_background();
    let sweeper = ctl.spawn_sweeper(args.sweep_interval.0);
    let quotas = ctl.spawn_quota_watch();
    let history = ctl.spawn_usage_history();
    let app = App::new(Arc::clone(&ctl))?;
    if embedded.is_some() {
        // The canvas dates a delete's outcome by these (a remote control
        // plane's own settings are not known here).
        app.set_graces(holdfast_platform::Graces {
            retention: args.policy.retention_grace.0,
            erase: args.policy.erase_grace.0,
        });
    }
    let usage = embedded.as_ref().map(|cp| cp.spawn_usage());

    let mut out = std::io::stdout().lock();
    if generated {
        writeln!(
            out,
            "admin token: {} (saved to {})",
            token.expose(),
            data_dir.join("admin-token").display()
        )?;
    }
    writeln!(out, "holdfast listening on http://{addr}")?;
    out.flush()?;
    drop(out);

    let closing = Arc::clone(&ctl);
    holdfast_platform::server::serve(
        listener,
        holdfast_platform::router(Arc::clone(&app)),
        args.http.timeouts(),
        async move {
            shutdown_signal().await;
            closing.begin_shutdown();
        },
    )
    .await?;
    background.abort();
    sweeper.abort();
    quotas.abort();
    history.abort();
    if let Some(usage) = usage {
        usage.abort();
    }
    // A graceful stop stops the workspaces' processes (never their data); the
    // next start starts them again. A remote control plane keeps running
    // them: it is a service of its own.
    if let Some(cp) = embedded {
        cp.backend().stop_all().await;
        cp.backend().release();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

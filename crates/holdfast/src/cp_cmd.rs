//! `holdfast cp serve` (the control plane as its own service) and
//! `holdfast cp tenant add` (a platform instance allowed to use it).

use anyhow::Context;
use clap::{Args, Subcommand};
use holdfast_cp::http_server::{CpService, router, token_hash};
use holdfast_cp::{ControlPlane, EmbeddedCp};
use holdfast_domain::{DurationArg, now_millis};
use holdfast_store::Store;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum CpCommand {
    /// Run the control plane as an HTTP service.
    Serve(Box<CpServeArgs>),
    /// Manage the platform instances (tenants) allowed to use it.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its token, once, alone on stdout.
    Add {
        /// The tenant's name (1 to 64 characters).
        name: String,
        /// The control plane's data dir (where its store is).
        #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "./.holdfast-cp")]
        data_dir: PathBuf,
        /// The control plane's PostgreSQL, if it uses one.
        #[arg(long, env = "HOLDFAST_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CpServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "127.0.0.1:7421")]
    listen: String,
    /// Where the control plane keeps its database, volumes, scratch data and
    /// logs (the same layout as `holdfast serve`'s data dir).
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "./.holdfast-cp")]
    data_dir: PathBuf,
    /// PostgreSQL (`postgres://…`) instead of SQLite in the data dir.
    #[arg(long, env = "HOLDFAST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The secret every platform sends as `Authorization: Bearer …`.
    #[arg(long, env = "HOLDFAST_SHARED_SECRET", hide_env_values = true)]
    shared_secret: String,
    #[command(flatten)]
    policy: crate::serve::PolicyArgs,
    #[command(flatten)]
    http: crate::serve::HttpArgs,
    /// How often the sweeper runs (it also runs at start).
    #[arg(long, env = "HOLDFAST_SWEEP_INTERVAL", default_value = "60s")]
    sweep_interval: DurationArg,
}

pub async fn open_store(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Store> {
    crate::serve::private_dir(data_dir)?;
    match database_url {
        Some(url) => Store::open_url(url).await,
        None => Store::open_sqlite(&data_dir.join("holdfast.db")).await,
    }
}

pub async fn run(cmd: CpCommand) -> anyhow::Result<()> {
    match cmd {
        CpCommand::Tenant {
            cmd:
                TenantCommand::Add {
                    name,
                    data_dir,
                    database_url,
                },
        } => {
            let name = name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                anyhow::bail!("a tenant name is 1 to 64 characters without control characters");
            }
            let store = open_store(&data_dir, database_url.as_deref()).await?;
            let token = holdfast_platform::generate_token("hft");
            store
                .insert_tenant(name, &token_hash(token.expose()), now_millis())
                .await?;
            // Alone on stdout, so that scripts can capture it.
            println!("{}", token.expose());
            Ok(())
        }
        CpCommand::Serve(args) => serve(*args).await,
    }
}

async fn serve(args: CpServeArgs) -> anyhow::Result<()> {
    crate::serve::init_tracing();
    if args.shared_secret.trim().is_empty() {
        anyhow::bail!("--shared-secret must not be empty");
    }
    let store = open_store(&args.data_dir, args.database_url.as_deref()).await?;
    let data_dir = args.data_dir.canonicalize()?;
    // A standalone control plane has no workspace table: records are never
    // taken for orphans by the absence of one.
    let policy = args.policy.policy(false, &data_dir)?;
    let engine = EmbeddedCp::start(store.clone(), data_dir, policy).await?;
    let svc = CpService::new(engine.clone(), store, args.shared_secret.trim());
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);

    // The control plane owns its volumes, so it sweeps them itself.
    let sweeper_engine = engine.clone();
    let every = args.sweep_interval.0;
    let usage = engine.spawn_usage();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweeper_engine.sweep(false, "sweeper").await {
                Ok(r) if !r.items.is_empty() => {
                    tracing::info!(actions = r.items.len(), "sweeper pass")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
            }
        }
    });

    println!("holdfast control plane listening on {url}");
    holdfast_platform::server::serve(
        listener,
        router(svc),
        args.http.timeouts(),
        crate::serve::shutdown_signal(),
    )
    .await?;
    sweeper.abort();
    usage.abort();
    engine.backend().stop_all().await;
    engine.backend().release();
    tracing::info!("stopped");
    Ok(())
}

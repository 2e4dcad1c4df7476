//! The durable state of holdfast: intent (workspaces, desired states), the
//! audit log, tokens, and the control plane's volume and instance records.
//!
//! One [`Store`] type over an `sqlx::AnyPool`; its queries are written in the
//! SQL that SQLite and PostgreSQL share (`$1` parameters, integer
//! millisecond timestamps, JSON as text), so a PostgreSQL URL selects a second
//! backend without a second implementation. Only migrations are per dialect.
//!
//! **Architecture Invariant:** callers write here before any side effect; no
//! transaction is held across a call to the control plane or the filesystem.

mod audit;
mod cache;
mod import;
mod orgs;
mod sessions;
mod snapshots;
mod tenants;
mod tokens;
mod usage;
mod volumes;
mod workspaces;

pub use audit::{AuditEvent, AuditScope, NewAuditEvent};
pub use cache::CacheStats;
pub use import::{ImportUpdate, ImportWrite};
pub use orgs::Org;
pub use sessions::{Session, SessionIdentity};
pub use snapshots::{Captured, SnapshotEraseCandidate, SnapshotRow};
pub use tenants::Tenant;
pub use usage::{USAGE_BUCKET_MS, USAGE_BUCKETS, UsageSample, usage_bucket};
pub use volumes::{
    Presence, SweepCandidate, VolumeHistoryRow, VolumeRow, VolumeTransition, VolumeUsage,
};
pub use workspaces::{Fence, NewWorkspace, Started, WorkspacePatch, WorkspaceRow};

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::str::FromStr;

/// An error the caller can branch on; everything else is `Other`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A volume's compare-and-set lost: it was not in a state the write
    /// expected (`found`, when known), because another writer moved it.
    #[error("volume {volume_id} is {}, not in the state this change expects", found.map_or("changed", |s| s.as_str()))]
    VolumeMoved {
        volume_id: uuid::Uuid,
        found: Option<holdfast_domain::VolumeState>,
    },
    /// The workspace is removed, or was removed while the write ran.
    #[error("workspace {0} is removed")]
    WorkspaceRemoved(uuid::Uuid),
    /// The workspace is live: a restore that another one beat to it.
    #[error("workspace {0} is not removed")]
    WorkspaceNotRemoved(uuid::Uuid),
    /// A unique name is taken.
    #[error("{kind} named {name:?} exists")]
    NameTaken { kind: &'static str, name: String },
    /// The rows an import planned against changed before it was written.
    #[error("{0}")]
    ImportRaced(String),
    /// This replica no longer holds the workspace's lease (another took it
    /// over): its write of observed state is refused.
    #[error("lease on workspace {0} lost; the write is refused")]
    Fenced(uuid::Uuid),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Other(anyhow::Error::new(e))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The store. Cheap to clone (clones share the pool and the read cache).
#[derive(Clone)]
pub struct Store {
    /// Every statement that may write, and every transaction.
    pool: AnyPool,
    /// Statements that only read: on SQLite a few connections of their own
    /// (WAL lets them read while the writer writes), on PostgreSQL the same
    /// pool as `pool`.
    reader: AnyPool,
    dialect: Dialect,
    cache: std::sync::Arc<cache::ReadCache>,
}

/// Reader connections of a SQLite store: two cores' worth, plus one so a
/// long read (a reconciler pass over the fleet) does not hold up the rest.
const READERS: u32 = 3;

/// The pool, for statements that may write: dropping it (after the
/// statement or transaction is done) invalidates the read cache.
pub(crate) struct Written<'a> {
    store: &'a Store,
}

impl std::ops::Deref for Written<'_> {
    type Target = AnyPool;
    fn deref(&self) -> &AnyPool {
        &self.store.pool
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        self.store.cache.wrote();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and runs the
    /// migrations.
    pub async fn open_sqlite(path: &Path) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        // The file holds token and session hashes: it is made 0600 before
        // SQLite opens it (SQLite gives its -wal and -shm files the
        // database file's mode), and files an older version left readable
        // are tightened.
        private_files(path)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // One connection: SQLite has one writer anyway, and a single connection
        // rules out SQLITE_BUSY on read-to-write upgrades. No transaction is
        // ever held across a side effect, so nothing waits long on it.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL with synchronous=NORMAL is durable across a crash of
                    // the process (kill -9); a power cut may lose the last
                    // commits but never corrupts the file.
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .context("running SQLite migrations")?;
        private_files(path)?;
        // Readers: their own connections, so that a read never queues
        // behind the writer (or behind a long read such as a reconciler
        // pass). `query_only` makes a write sent to them fail loudly
        // rather than bypass the single writer.
        let reader = AnyPoolOptions::new()
            .min_connections(1)
            .max_connections(READERS)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON; PRAGMA query_only=ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("opening SQLite database {} to read", path.display()))?;
        Ok(Store {
            pool,
            reader,
            dialect: Dialect::Sqlite,
            // This process is the file's only writer: see `cache.rs`.
            cache: std::sync::Arc::new(cache::ReadCache::new(true)),
        })
    }

    /// Opens the store a `--database-url` names: `postgres://…` (or
    /// `postgresql://…`) for PostgreSQL, `sqlite://PATH` for SQLite.
    pub async fn open_url(url: &str) -> anyhow::Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::open_postgres(url).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Store::open_sqlite(Path::new(path.split('?').next().unwrap_or(path))).await
        } else {
            anyhow::bail!("--database-url must start with postgres://, postgresql:// or sqlite://")
        }
    }

    /// Connects to PostgreSQL and runs the migrations. Several replicas may
    /// share the database: the migrator takes PostgreSQL's advisory lock.
    pub async fn open_postgres(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            // The URL may hold a password: it is not repeated in the error.
            .context("connecting to PostgreSQL (--database-url)")?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .context("running PostgreSQL migrations")?;
        Ok(Store {
            reader: pool.clone(),
            pool,
            dialect: Dialect::Postgres,
            // Other replicas write here too: no cache (see `cache.rs`).
            cache: std::sync::Arc::new(cache::ReadCache::new(false)),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Hits and misses of the read cache (see `cache.rs`).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The pool, for statements that only read. Anything that may write
    /// goes through [`Store::write`] instead (a test checks the sources).
    pub(crate) fn read(&self) -> &AnyPool {
        &self.reader
    }

    /// The pool, for statements and transactions that may write; see
    /// [`Written`].
    pub(crate) fn write(&self) -> Written<'_> {
        Written { store: self }
    }
}

/// Creates `path` with mode 0600 if missing, and sets 0600 on it and on
/// its SQLite `-wal` and `-shm` files where they exist.
fn private_files(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("making {file:?} private (mode 0600)"));
            }
        }
    }
    Ok(())
}

pub(crate) fn parse_uuid(row: &AnyRow, col: &str) -> StoreResult<uuid::Uuid> {
    let s: String = row.try_get(col)?;
    uuid::Uuid::parse_str(&s)
        .with_context(|| format!("column {col}: bad uuid {s:?}"))
        .map_err(Into::into)
}

pub(crate) fn parse_opt_uuid(row: &AnyRow, col: &str) -> StoreResult<Option<uuid::Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| uuid::Uuid::parse_str(&s).with_context(|| format!("column {col}: bad uuid {s:?}")))
        .transpose()
        .map_err(Into::into)
}

pub(crate) fn parse_text<T: FromStr<Err = String>>(row: &AnyRow, col: &str) -> StoreResult<T> {
    let s: String = row.try_get(col)?;
    T::from_str(&s).map_err(|e| StoreError::Other(anyhow::anyhow!("column {col}: {e}")))
}

pub(crate) fn parse_opt_text<T: FromStr<Err = String>>(
    row: &AnyRow,
    col: &str,
) -> StoreResult<Option<T>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| T::from_str(&s).map_err(|e| StoreError::Other(anyhow::anyhow!("column {col}: {e}"))))
        .transpose()
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &str,
) -> StoreResult<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s)
        .with_context(|| format!("column {col}: bad JSON"))
        .map_err(Into::into)
}

/// Helpers for tests that need a database of their own.
pub mod testing {
    use anyhow::Context;
    use sqlx::{Connection, Executor};

    /// Creates an empty database on the PostgreSQL server that `admin_url`
    /// names and returns a URL for it.
    pub async fn fresh_postgres_database(admin_url: &str) -> anyhow::Result<String> {
        sqlx::any::install_default_drivers();
        let name = format!("holdfast_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::AnyConnection::connect(admin_url)
            .await
            .context("connecting to the test PostgreSQL")?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        conn.close().await?;
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url, String::new()),
        };
        // Replace the database part of the URL (after the host's '/').
        let prefix_len = base.find("://").map_or(0, |i| i + 3);
        let base = match base[prefix_len..].find('/') {
            Some(slash) => &base[..prefix_len + slash],
            None => base,
        };
        Ok(format!("{base}/{name}{query}"))
    }
}

#[cfg(test)]
mod write_paths {
    /// Every store function whose SQL may write uses `Store::write`, whose
    /// guard invalidates the read cache; `Store::read` is for reads only.
    /// A function that reads through `read()` and holds a writing statement
    /// fails here.
    #[test]
    fn no_write_goes_through_the_read_pool() {
        let sources = [
            ("audit.rs", include_str!("audit.rs")),
            ("import.rs", include_str!("import.rs")),
            ("orgs.rs", include_str!("orgs.rs")),
            ("sessions.rs", include_str!("sessions.rs")),
            ("tenants.rs", include_str!("tenants.rs")),
            ("tokens.rs", include_str!("tokens.rs")),
            ("usage.rs", include_str!("usage.rs")),
            ("volumes.rs", include_str!("volumes.rs")),
            ("workspaces.rs", include_str!("workspaces.rs")),
        ];
        let mut checked = 0;
        for (file, text) in sources {
            // Each use of `read()` with the statement it runs: the text back
            // to the `sqlx::query` before it.
            let mut rest = text;
            while let Some(at) = rest.find("self.read()") {
                let statement = &rest[rest[..at].rfind("sqlx::query").unwrap_or(0)..at];
                checked += 1;
                assert!(
                    !writes(statement),
                    "{file}: a statement that may write runs through `read()`: {statement}"
                );
                rest = &rest[at + 1..];
            }
        }
        assert!(
            checked > 10,
            "the scan found the read functions ({checked})"
        );
    }

    /// Whether a statement may write: its SQL names a writing verb, or it
    /// runs with `execute` (SQL built elsewhere, as the fenced updates are,
    /// shows no verb here).
    fn writes(statement: &str) -> bool {
        ["INSERT ", "UPDATE ", "DELETE ", ".begin()", ".acquire()"]
            .iter()
            .any(|verb| statement.contains(verb))
            || statement.trim_end().ends_with(".execute(")
    }

    #[test]
    fn the_scan_catches_a_planted_write() {
        assert!(writes("sqlx::query(\"UPDATE x SET y = 1\").execute("));
        assert!(!writes("sqlx::query(\"SELECT y FROM x\").fetch_all("));
        assert!(writes("sqlx::query(&sql).bind(id)\n        .execute("));
    }
}

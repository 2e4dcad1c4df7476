//! What the store's test files share.

use holdfast_store::Store;

/// Every store this test runs against: SQLite always, PostgreSQL when
/// `HOLDFAST_TEST_DATABASE_URL` names a server (a fresh database is created
/// on it). Under `CI=true` a missing PostgreSQL is a failure, not a skip.
pub async fn stores() -> Vec<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let mut out = vec![(dir, sqlite)];
    match std::env::var("HOLDFAST_TEST_DATABASE_URL") {
        Ok(admin_url) => {
            let url = holdfast_store::testing::fresh_postgres_database(&admin_url)
                .await
                .unwrap();
            out.push((
                tempfile::tempdir().unwrap(),
                Store::open_url(&url).await.unwrap(),
            ));
        }
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true but HOLDFAST_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run"
            )
        }
        Err(_) => eprintln!("skipping PostgreSQL: HOLDFAST_TEST_DATABASE_URL is not set"),
    }
    out
}

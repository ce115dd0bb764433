//! PostgreSQL for the storage modules' own tests: a schema of a test's own on `TEST_POSTGRES_URL`'s
//! server (a statement that fails can drop its connection, so tables cannot be temporary ones).
//! With `CI=true` a missing `TEST_POSTGRES_URL` is an error, as in the integration tests.

use sqlx::{AnyPool, AssertSqlSafe};

/// A schema of one test's own, and a pool whose every connection works in it.
pub struct TestSchema {
    pub pool: AnyPool,
    name: String,
    admin: AnyPool,
}

impl TestSchema {
    /// A new schema and a pool of `connections` in it, or `None` when `TEST_POSTGRES_URL` is not set.
    pub async fn create(prefix: &str, connections: u32) -> Option<Self> {
        let url = postgres_url()?;
        sqlx::any::install_default_drivers();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = AnyPool::connect(&url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let search_path = format!("SET search_path TO {name}");
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |connection, _| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(search_path))
                        .execute(connection)
                        .await
                        .map(drop)
                })
            })
            .connect(&url)
            .await
            .unwrap();
        Some(Self { pool, name, admin })
    }

    /// Closes the pool and drops the schema with everything in it.
    pub async fn remove(self) {
        self.pool.close().await;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// `TEST_POSTGRES_URL`, or `None` when it is not set (outside CI).
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("CI=true but TEST_POSTGRES_URL is not set: a PostgreSQL test would be skipped")
        }
        _ => None,
    }
}

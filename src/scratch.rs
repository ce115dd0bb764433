//! Scratch PostgreSQL databases, made whole and dropped whole on a server an admin URL reaches: each
//! test server, drill and benchmark gets a fresh one. The service itself never uses them.

use anyhow::Context;
use sqlx::Connection;

/// Creates the database `name` on the PostgreSQL server `admin_url` reaches; returns its URL.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<url::Url> {
    let mut url = url::Url::parse(admin_url).context("the PostgreSQL URL")?;
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await.ok();
    url.set_path(name);
    Ok(url)
}

/// Drops the database `name` made by [`create_database`], closing whatever is still connected.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await.ok();
    Ok(())
}

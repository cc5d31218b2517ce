//! Portal-wide settings (key -> text) shared by all portal nodes.

use sqlx::Row;

use super::{Conn, Result};

/// The value of `key`, if set (tests read sealed settings back).
#[cfg(any(test, feature = "testing"))]
pub async fn get(conn: &mut Conn, key: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|row| row.try_get("value")).transpose()?)
}

/// Replaces the value of `key`.
pub async fn set(conn: &mut Conn, key: &str, value: &str) -> Result<()> {
    sqlx::query("UPDATE settings SET value = $2 WHERE key = $1")
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The value of `key`, creating it with `generate()` if absent. Two nodes
/// racing agree on whichever value was stored first.
pub async fn get_or_create(
    conn: &mut Conn,
    key: &str,
    generate: impl FnOnce() -> String,
) -> Result<String> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(generate())
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("value")?)
}

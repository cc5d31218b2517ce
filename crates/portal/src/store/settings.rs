//! Portal-wide settings (key -> text) shared by all portal nodes.

use sqlx::Row;

use super::{Conn, Result};

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

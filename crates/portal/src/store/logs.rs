//! The session log (sign-ins and channel connections) and the flow log that
//! gateways report (SPEC F28, F29).

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Conn, Result, opt_uuid_column};
use crate::domain::from_millis;

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SessionEntry {
    pub cursor: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub actor_id: Option<Uuid>,
    pub device_id: Option<Uuid>,
    pub kind: String,
    pub remote_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FlowEntry {
    pub cursor: i64,
    pub gateway_id: String,
    pub client_id: String,
    pub resource_id: String,
    pub actor_id: Option<String>,
    pub protocol: i64,
    pub source: String,
    pub destination: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<jiff::Timestamp>,
}

/// A session log line to write.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub actor_id: Option<Uuid>,
    pub device_id: Option<Uuid>,
    pub kind: &'a str,
    pub remote_ip: Option<String>,
    pub user_agent: Option<&'a str>,
}

pub async fn record_session(
    conn: &mut Conn,
    account: Uuid,
    session: &NewSession<'_>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (account_id, at, actor_id, device_id, kind, remote_ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(account.to_string())
    .bind(now_ms)
    .bind(session.actor_id.map(|id| id.to_string()))
    .bind(session.device_id.map(|id| id.to_string()))
    .bind(session.kind)
    .bind(session.remote_ip.clone())
    .bind(session.user_agent)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn sessions(
    conn: &mut Conn,
    account: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<SessionEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor_id, device_id, kind, remote_ip, user_agent FROM sessions \
         WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SessionEntry {
                cursor: row.try_get("seq")?,
                at: from_millis(row.try_get("at")?),
                actor_id: opt_uuid_column(row, "sessions", "actor_id")?,
                device_id: opt_uuid_column(row, "sessions", "device_id")?,
                kind: row.try_get("kind")?,
                remote_ip: row.try_get("remote_ip")?,
                user_agent: row.try_get("user_agent")?,
            })
        })
        .collect()
}

pub async fn flows(
    conn: &mut Conn,
    account: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<FlowEntry>> {
    let rows = sqlx::query(
        "SELECT seq, gateway_id, client_id, resource_id, actor_id, protocol, source, destination, \
         bytes_in, bytes_out, started_at, ended_at FROM flows \
         WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(FlowEntry {
                cursor: row.try_get("seq")?,
                gateway_id: row.try_get("gateway_id")?,
                client_id: row.try_get("client_id")?,
                resource_id: row.try_get("resource_id")?,
                actor_id: row.try_get("actor_id")?,
                protocol: row.try_get("protocol")?,
                source: row.try_get("source")?,
                destination: row.try_get("destination")?,
                bytes_in: row.try_get("bytes_in")?,
                bytes_out: row.try_get("bytes_out")?,
                started_at: from_millis(row.try_get("started_at")?),
                ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_millis),
            })
        })
        .collect()
}

//! Log retention (SPEC 7.5): audit, session and flow log entries older than
//! `--log-retention-days` are deleted in the background, a thousand rows per
//! transaction with a pause between, so writers never wait long behind it.

use std::time::Duration;

use crate::Store;
use crate::store::logs::{self, Log};

/// Days the logs are kept unless the operator says otherwise.
pub const DEFAULT_DAYS: u32 = 90;
/// How often the logs are pruned.
const EVERY: Duration = Duration::from_secs(3600);
/// Between two deleting transactions.
const PAUSE: Duration = Duration::from_millis(20);

/// Deletes every log entry older than `days` before `now_ms`; how many.
pub async fn prune(store: &Store, days: u32, now_ms: i64) -> crate::store::Result<u64> {
    let before = now_ms.saturating_sub(i64::from(days) * 86_400_000);
    let mut total = 0;
    for log in [Log::Audit, Log::Sessions, Log::Flows] {
        loop {
            let mut tx = store.write().await?;
            let deleted = logs::prune_batch(&mut tx, log, before).await?;
            tx.commit().await?;
            total += deleted;
            if deleted < logs::PRUNE_BATCH as u64 {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(total)
}

/// Prunes now and every hour, for as long as the runtime runs.
pub fn spawn(store: Store, days: u32) {
    tokio::spawn(async move {
        loop {
            let now = jiff::Timestamp::now().as_millisecond();
            match prune(&store, days, now).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, days, "old log entries pruned"),
                Err(error) => {
                    tracing::warn!(%error, "cannot prune the logs; trying again in an hour")
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(store: &Store, table: &str) -> i64 {
        let mut tx = store.read().await.unwrap();
        let row: (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        row.0
    }

    /// Entries past the retention go, in batches (more than one batch
    /// here), newer ones stay, in every log.
    #[tokio::test]
    async fn entries_older_than_the_retention_are_pruned_and_newer_ones_kept() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let init = crate::setup::init_account(&store, "acme", "admin@example.test")
            .await
            .unwrap();
        let account = init.account.id.to_string();
        let day = 86_400_000i64;
        let now = 400 * day;
        let mut tx = store.write().await.unwrap();
        let audit_before = count_in(&mut tx, "audit_log").await;
        for n in 0..2_500i64 {
            let at = if n < 2_400 { now - 91 * day } else { now - day };
            sqlx::query("INSERT INTO sessions (account_id, at, kind) VALUES ($1, $2, 'sign_in')")
                .bind(&account)
                .bind(at)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO audit_log (account_id, at, action, object_type, object_id) \
                 VALUES ($1, $2, 'create', 'site', 'x')",
            )
            .bind(&account)
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO flows (account_id, gateway_id, client_id, resource_id, protocol, \
                 source, destination, bytes_in, bytes_out, started_at, ended_at) \
                 VALUES ($1, 'g', 'c', 'r', 6, 's', 'd', 1, 1, $2, $2)",
            )
            .bind(&account)
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let deleted = prune(&store, 90, now).await.unwrap();
        assert_eq!(deleted, 3 * 2_400);
        assert_eq!(count(&store, "sessions").await, 100);
        assert_eq!(count(&store, "flows").await, 100);
        // The account's own creation entries (stamped today, after this
        // test's "now") are kept with the recent ones.
        assert_eq!(count(&store, "audit_log").await, audit_before + 100);
    }

    async fn count_in(tx: &mut crate::store::Tx, table: &str) -> i64 {
        let row: (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut **tx)
                .await
                .unwrap();
        row.0
    }
}

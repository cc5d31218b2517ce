//! The authorizations the portal holds (see `channels::hub::ledger` for how
//! the hub keeps them): one row per (client device, resource, gateway) that
//! a gateway was told to enforce, with the facts the decision used. The
//! hub writes them as outputs its shell applies; an account's load reads
//! them back with whether their token and devices still exist.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use jiff::Timestamp;
use postern_model::protocol::Peer;
use postern_model::{ClientId, GatewayId, PublicKey, ResourceId};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, StoreError, opt_uuid_column, uuid_column};
use crate::domain::from_millis;

/// Which authorization a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub client: ClientId,
    pub resource: ResourceId,
    pub gateway: GatewayId,
}

/// An authorization with the facts it was decided with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub account_id: Uuid,
    pub client: Peer<ClientId>,
    pub resource_id: ResourceId,
    pub gateway: Peer<GatewayId>,
    pub actor_id: Uuid,
    pub token_id: Uuid,
    pub token_expires_at: Option<Timestamp>,
    pub identity_provider_id: Option<Uuid>,
    pub remote_ip: IpAddr,
    pub country: Option<String>,
    pub os: Option<String>,
    pub verified: bool,
    pub expires_at: Option<Timestamp>,
    pub granted_at: Timestamp,
}

impl GrantRecord {
    pub fn key(&self) -> GrantKey {
        GrantKey {
            client: self.client.id,
            resource: self.resource_id,
            gateway: self.gateway.id,
        }
    }
}

/// A stored authorization as a load reads it, with what still exists of
/// what it was made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGrant {
    pub record: GrantRecord,
    /// The token still exists (revoked tokens are deleted).
    pub token_live: bool,
    /// The client device still exists, and whether it is verified now.
    pub client_verified: Option<bool>,
    /// The gateway device still exists.
    pub gateway_live: bool,
}

/// A change to the stored authorizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantWrite {
    /// A new authorization (or one made again with new facts).
    Put(Box<GrantRecord>),
    /// Its expiry moved; nothing if it is gone meanwhile (another node
    /// revoked it: an update must not bring it back).
    Extend {
        key: GrantKey,
        expires_at: Option<Timestamp>,
    },
    Delete(GrantKey),
}

pub async fn apply(conn: &mut Conn, write: &GrantWrite) -> Result<()> {
    match write {
        GrantWrite::Put(record) => put(conn, record).await,
        GrantWrite::Extend { key, expires_at } => {
            sqlx::query(
                "UPDATE grants SET expires_at = $1 \
                 WHERE client_id = $2 AND resource_id = $3 AND gateway_id = $4",
            )
            .bind(expires_at.map(|at| at.as_millisecond()))
            .bind(key.client.0.to_string())
            .bind(key.resource.0.to_string())
            .bind(key.gateway.0.to_string())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        GrantWrite::Delete(key) => {
            sqlx::query(
                "DELETE FROM grants WHERE client_id = $1 AND resource_id = $2 AND gateway_id = $3",
            )
            .bind(key.client.0.to_string())
            .bind(key.resource.0.to_string())
            .bind(key.gateway.0.to_string())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

async fn put(conn: &mut Conn, r: &GrantRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO grants (account_id, client_id, resource_id, gateway_id, client_key, \
         client_ipv4, client_ipv6, gateway_key, gateway_ipv4, gateway_ipv6, actor_id, token_id, \
         token_expires_at, identity_provider_id, remote_ip, country, os, verified, expires_at, \
         granted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20) \
         ON CONFLICT (client_id, resource_id, gateway_id) DO UPDATE SET \
         account_id = excluded.account_id, client_key = excluded.client_key, \
         client_ipv4 = excluded.client_ipv4, client_ipv6 = excluded.client_ipv6, \
         gateway_key = excluded.gateway_key, gateway_ipv4 = excluded.gateway_ipv4, \
         gateway_ipv6 = excluded.gateway_ipv6, actor_id = excluded.actor_id, \
         token_id = excluded.token_id, token_expires_at = excluded.token_expires_at, \
         identity_provider_id = excluded.identity_provider_id, remote_ip = excluded.remote_ip, \
         country = excluded.country, os = excluded.os, verified = excluded.verified, \
         expires_at = excluded.expires_at, granted_at = excluded.granted_at",
    )
    .bind(r.account_id.to_string())
    .bind(r.client.id.0.to_string())
    .bind(r.resource_id.0.to_string())
    .bind(r.gateway.id.0.to_string())
    .bind(r.client.public_key.to_base64())
    .bind(r.client.ipv4.to_string())
    .bind(r.client.ipv6.to_string())
    .bind(r.gateway.public_key.to_base64())
    .bind(r.gateway.ipv4.to_string())
    .bind(r.gateway.ipv6.to_string())
    .bind(r.actor_id.to_string())
    .bind(r.token_id.to_string())
    .bind(r.token_expires_at.map(|at| at.as_millisecond()))
    .bind(r.identity_provider_id.map(|id| id.to_string()))
    .bind(r.remote_ip.to_string())
    .bind(r.country.clone())
    .bind(r.os.clone())
    .bind(i64::from(r.verified))
    .bind(r.expires_at.map(|at| at.as_millisecond()))
    .bind(r.granted_at.as_millisecond())
    .execute(&mut *conn)
    .await
    .map_err(super::classify)?;
    Ok(())
}

/// The account's stored authorizations, with what still exists of their
/// tokens and devices.
pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<StoredGrant>> {
    let rows = sqlx::query(
        "SELECT g.account_id, g.client_id, g.resource_id, g.gateway_id, g.client_key, \
         g.client_ipv4, g.client_ipv6, g.gateway_key, g.gateway_ipv4, g.gateway_ipv6, \
         g.actor_id, g.token_id, g.token_expires_at, g.identity_provider_id, g.remote_ip, \
         g.country, g.os, g.verified, g.expires_at, g.granted_at, \
         t.id AS live_token, c.verified AS live_client_verified, w.id AS live_gateway \
         FROM grants g \
         LEFT JOIN tokens t ON t.id = g.token_id \
         LEFT JOIN devices c ON c.id = g.client_id AND c.kind = 'client' \
         LEFT JOIN devices w ON w.id = g.gateway_id AND w.kind = 'gateway' \
         WHERE g.account_id = $1 ORDER BY g.granted_at, g.client_id, g.resource_id",
    )
    .bind(account.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &AnyRow) -> Result<StoredGrant> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "grants",
        detail,
    };
    let key = |column: &str| -> Result<PublicKey> {
        let text: String = row.try_get(column)?;
        PublicKey::from_base64(&text).ok_or_else(|| corrupt(format!("{column} is not a key")))
    };
    let v4 = |column: &str| -> Result<Ipv4Addr> {
        let text: String = row.try_get(column)?;
        text.parse()
            .map_err(|_| corrupt(format!("{column} is not an IPv4 address")))
    };
    let v6 = |column: &str| -> Result<Ipv6Addr> {
        let text: String = row.try_get(column)?;
        text.parse()
            .map_err(|_| corrupt(format!("{column} is not an IPv6 address")))
    };
    let millis = |column: &str| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
    };
    let remote_ip: String = row.try_get("remote_ip")?;
    let record = GrantRecord {
        account_id: uuid_column(row, "grants", "account_id")?,
        client: Peer {
            id: ClientId(uuid_column(row, "grants", "client_id")?),
            public_key: key("client_key")?,
            ipv4: v4("client_ipv4")?,
            ipv6: v6("client_ipv6")?,
        },
        resource_id: ResourceId(uuid_column(row, "grants", "resource_id")?),
        gateway: Peer {
            id: GatewayId(uuid_column(row, "grants", "gateway_id")?),
            public_key: key("gateway_key")?,
            ipv4: v4("gateway_ipv4")?,
            ipv6: v6("gateway_ipv6")?,
        },
        actor_id: uuid_column(row, "grants", "actor_id")?,
        token_id: uuid_column(row, "grants", "token_id")?,
        token_expires_at: millis("token_expires_at")?,
        identity_provider_id: opt_uuid_column(row, "grants", "identity_provider_id")?,
        remote_ip: remote_ip
            .parse()
            .map_err(|_| corrupt("remote_ip is not an address".to_string()))?,
        country: row.try_get("country")?,
        os: row.try_get("os")?,
        verified: row.try_get::<i64, _>("verified")? != 0,
        expires_at: millis("expires_at")?,
        granted_at: from_millis(row.try_get("granted_at")?),
    };
    Ok(StoredGrant {
        record,
        token_live: row.try_get::<Option<String>, _>("live_token")?.is_some(),
        client_verified: row
            .try_get::<Option<i64>, _>("live_client_verified")?
            .map(|v| v != 0),
        gateway_live: row.try_get::<Option<String>, _>("live_gateway")?.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, accounts};

    fn record(account: Uuid, client: u128, gateway: u128, at: i64) -> GrantRecord {
        GrantRecord {
            account_id: account,
            client: Peer {
                id: ClientId::from_u128(client),
                public_key: PublicKey([1; 32]),
                ipv4: Ipv4Addr::new(100, 64, 0, 2),
                ipv6: "fd7e:5057:6e00::2".parse().unwrap(),
            },
            resource_id: ResourceId::from_u128(0x100),
            gateway: Peer {
                id: GatewayId::from_u128(gateway),
                public_key: PublicKey([2; 32]),
                ipv4: Ipv4Addr::new(100, 64, 0, 3),
                ipv6: "fd7e:5057:6e00::3".parse().unwrap(),
            },
            actor_id: Uuid::from_u128(0xa1),
            token_id: Uuid::from_u128(0x70),
            token_expires_at: Some(from_millis(9_000_000)),
            identity_provider_id: None,
            remote_ip: "192.0.2.1".parse().unwrap(),
            country: Some("DE".to_string()),
            os: Some("Linux".to_string()),
            verified: true,
            expires_at: None,
            granted_at: from_millis(at),
        }
    }

    #[tokio::test]
    async fn grants_are_written_extended_and_deleted_by_key() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut tx = store.write().await.unwrap();
        let account = accounts::insert(&mut tx, "acme", "Acme", 0)
            .await
            .unwrap()
            .id;
        let first = record(account, 1, 9, 10);
        apply(&mut tx, &GrantWrite::Put(Box::new(first.clone())))
            .await
            .unwrap();
        // Made again (a new key, later): the same row takes the new facts.
        let mut again = first.clone();
        again.client.public_key = PublicKey([3; 32]);
        again.granted_at = from_millis(20);
        apply(&mut tx, &GrantWrite::Put(Box::new(again.clone())))
            .await
            .unwrap();
        let other = record(account, 1, 8, 30);
        apply(&mut tx, &GrantWrite::Put(Box::new(other.clone())))
            .await
            .unwrap();
        let listed = list(&mut tx, account).await.unwrap();
        assert_eq!(
            listed.iter().map(|g| g.record.clone()).collect::<Vec<_>>(),
            vec![again.clone(), other.clone()]
        );
        // No token or device rows: nothing of it exists any more.
        assert!(!listed[0].token_live && !listed[0].gateway_live);
        assert_eq!(listed[0].client_verified, None);

        let expires_at = Some(from_millis(5_000));
        apply(
            &mut tx,
            &GrantWrite::Extend {
                key: again.key(),
                expires_at,
            },
        )
        .await
        .unwrap();
        apply(&mut tx, &GrantWrite::Delete(other.key()))
            .await
            .unwrap();
        // An update of a deleted row does not bring it back.
        apply(
            &mut tx,
            &GrantWrite::Extend {
                key: other.key(),
                expires_at,
            },
        )
        .await
        .unwrap();
        let listed = list(&mut tx, account).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].record.expires_at, expires_at);
        tx.commit().await.unwrap();
    }
}

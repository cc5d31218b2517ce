//! Authentication: bearer tokens, email one-time codes, OpenID Connect, and
//! the mapping of a signed-in identity to an actor.

pub mod email;
pub mod identity;
pub mod oidc;
pub mod token;

use jiff::Timestamp;

use crate::domain::TokenRecord;
use crate::store::{Store, StoreError, tokens};

/// The token row a presented bearer token stands for, if it is genuine and not
/// expired; `None` for anything else (the caller answers 401 without saying
/// which check failed).
pub async fn authenticate(
    store: &Store,
    presented: &str,
    now: Timestamp,
) -> Result<Option<TokenRecord>, StoreError> {
    let Some((secret, id)) = token::parse(presented.trim()) else {
        return Ok(None);
    };
    // One statement: no transaction around it (a connect's hot path).
    let mut conn = store.conn().await?;
    let Some((record, salt, hash)) = tokens::get_with_hash(&mut conn, id).await? else {
        return Ok(None);
    };
    drop(conn);
    if !token::verify(&salt, &hash, secret) {
        return Ok(None);
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    Ok(Some(record))
}

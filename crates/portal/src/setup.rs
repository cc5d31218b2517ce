//! One-off setup commands: `postern portal init` (an account, its first admin
//! and `Everyone`, and an admin API token) and `postern portal relay-token`.

use jiff::Timestamp;
use uuid::Uuid;

use crate::auth::token::{self, RandomError};
use crate::domain::{Account, Actor, Group, GroupKind, Role, TokenKind};
use crate::store::audit::{Author, NewAuditEntry};
use crate::store::tokens::NewToken;
use crate::store::{self, Store, StoreError, accounts, actors, audit, groups};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "invalid account slug {0:?}: use 3-63 lowercase letters, digits, '-' or '_', starting \
         with a letter"
    )]
    BadSlug(String),
    #[error("invalid admin email {0:?}")]
    BadEmail(String),
    #[error("an account with the slug {0:?} already exists")]
    AccountExists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Words the portal uses as the first path segment, which an account slug
/// would shadow.
const RESERVED_SLUGS: &[&str] = &[
    "api", "v1", "scim", "metrics", "static", "assets", "health", "healthz", "readyz",
];

pub fn validate_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        && !RESERVED_SLUGS.contains(&slug)
}

/// A plausibility check, not RFC 5322: one `@`, something on both sides, a
/// dot in the domain, no spaces or control characters.
pub fn validate_email(email: &str) -> bool {
    crate::api::fields::EMAIL.accepts(email)
}

/// What `portal init` made.
#[derive(Debug)]
pub struct Initialized {
    pub account: Account,
    pub admin_id: Uuid,
    /// The admin API token, shown once.
    pub token: String,
}

pub async fn init_account(
    store: &Store,
    slug: &str,
    admin_email: &str,
) -> Result<Initialized, SetupError> {
    if !validate_slug(slug) {
        return Err(SetupError::BadSlug(slug.to_string()));
    }
    let email = admin_email.trim().to_ascii_lowercase();
    if !validate_email(&email) {
        return Err(SetupError::BadEmail(admin_email.to_string()));
    }
    let now = Timestamp::now();
    let now_ms = now.as_millisecond();
    let mut tx = store.write().await?;
    if accounts::by_slug(&mut tx, slug).await?.is_some() {
        return Err(SetupError::AccountExists(slug.to_string()));
    }
    let account = match accounts::insert(&mut tx, slug, slug, now_ms).await {
        Err(StoreError::Conflict(_)) => return Err(SetupError::AccountExists(slug.to_string())),
        other => other?,
    };
    let admin = Actor {
        directory_id: None,
        id: Uuid::new_v4(),
        name: email.split('@').next().unwrap_or("admin").to_string(),
        email: Some(email),
        role: Role::Admin,
        disabled: false,
        created_at: now,
    };
    actors::insert(&mut tx, account.id, &admin).await?;
    groups::insert(
        &mut tx,
        account.id,
        &Group {
            directory_id: None,
            id: Uuid::new_v4(),
            name: groups::EVERYONE.to_string(),
            kind: GroupKind::Everyone,
            created_at: now,
        },
    )
    .await?;
    let minted = token::mint()?;
    store::tokens::insert(
        &mut tx,
        &minted,
        &NewToken {
            account_id: Some(account.id),
            kind: TokenKind::Api,
            actor_id: Some(admin.id),
            site_id: None,
            identity_provider_id: None,
            expires_at_ms: None,
            read_only: false,
        },
        now_ms,
    )
    .await?;
    audit::record(
        &mut tx,
        account.id,
        Author {
            directory_id: None,
            actor_id: None,
            token_id: None,
        },
        NewAuditEntry {
            action: "account.init",
            object_type: "account",
            object_id: account.id.to_string(),
            before: None,
            after: serde_json::to_value(&account).ok(),
        },
        now_ms,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Initialized {
        account,
        admin_id: admin.id,
        token: minted.token,
    })
}

/// Mints a token relays use to register with this portal.
pub async fn relay_token(store: &Store) -> Result<String, SetupError> {
    let minted = token::mint()?;
    let mut tx = store.write().await?;
    store::tokens::insert(
        &mut tx,
        &minted,
        &NewToken {
            account_id: None,
            kind: TokenKind::Relay,
            actor_id: None,
            site_id: None,
            identity_provider_id: None,
            expires_at_ms: None,
            read_only: false,
        },
        Timestamp::now().as_millisecond(),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(minted.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_emails() {
        for good in ["acme", "acme-corp", "a_1b"] {
            assert!(validate_slug(good), "{good}");
        }
        for bad in ["", "ab", "Acme", "1acme", "ac me", "api", &"a".repeat(64)] {
            assert!(!validate_slug(bad), "{bad}");
        }
        assert!(validate_email("admin@example.test"));
        for bad in [
            "admin",
            "@example.test",
            "a@b",
            "a b@c.test",
            "a@.test",
            "a@b.test@c.test",
        ] {
            assert!(!validate_email(bad), "{bad}");
        }
    }
}

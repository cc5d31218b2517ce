//! Which actor a provider's identity is (SPEC F2, F8): the identity already
//! linked by (provider, subject), else the pre-created user with the same
//! verified email (linked from then on), else, where the provider provisions
//! users (SPEC 7.3), a new user of that verified email. At each sign-in the
//! groups claim sets the memberships it manages and the admin claim sets the
//! role.

use uuid::Uuid;

use super::oidc::{Identity, claim_is_admin, claim_strings};
use crate::domain::{Actor, IdentityProvider, Role};
use crate::store::{Tx, actors, sign_in};

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error(
        "no user of this account matches this identity{}; ask an admin to add you",
        .0.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
    )]
    Unknown(Option<String>),
    #[error("this user is disabled")]
    Disabled,
    #[error("service accounts cannot sign in")]
    ServiceAccount,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The actor after the sign-in, and whether its groups or role changed (its
/// connected clients must be re-evaluated).
#[derive(Debug)]
pub struct Mapped {
    pub actor: Actor,
    pub changed: bool,
}

pub async fn map(
    tx: &mut Tx,
    account: Uuid,
    provider: &IdentityProvider,
    identity: &Identity,
    now_ms: i64,
) -> Result<Mapped, MappingError> {
    let email = identity
        .email
        .as_deref()
        .map(|e| e.trim().to_ascii_lowercase());
    let linked = sign_in::actor_of_identity(tx, account, provider.id, &identity.subject).await?;
    let actor = match linked {
        Some(id) => actors::get(tx, account, id).await?,
        None => match (&email, identity.email_verified) {
            (Some(email), true) => actors::by_email(tx, account, email).await?,
            _ => None,
        },
    };
    let actor = match (actor, &email) {
        (Some(actor), _) => Some(actor),
        (None, Some(address)) if provider.provision_users && identity.email_verified => {
            Some(provision(tx, account, identity, address, now_ms).await?)
        }
        (None, _) => None,
    };
    let Some(mut actor) = actor else {
        return Err(MappingError::Unknown(email));
    };
    match actor.role {
        Role::ServiceAccount => return Err(MappingError::ServiceAccount),
        _ if actor.disabled => return Err(MappingError::Disabled),
        _ => {}
    }
    sign_in::upsert_identity(
        tx,
        account,
        actor.id,
        provider.id,
        &identity.subject,
        email.as_deref(),
        now_ms,
    )
    .await?;
    let mut changed = false;
    if let Some(claim) = &provider.groups_claim {
        let names = claim_strings(&identity.claims, claim);
        let names: Vec<String> = names
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && n.len() <= 255 && !n.chars().any(char::is_control))
            .take(1000)
            .collect();
        changed |= sign_in::sync_claimed_groups(tx, account, actor.id, provider.id, &names, now_ms)
            .await?;
    }
    if let Some(claim) = &provider.admin_claim {
        let role = if claim_is_admin(
            &identity.claims,
            claim,
            provider.admin_claim_value.as_deref(),
        ) {
            Role::Admin
        } else {
            Role::User
        };
        let last_admin = actor.role == Role::Admin
            && role == Role::User
            && actors::count_enabled_admins(tx, account).await? <= 1;
        if last_admin {
            // A mistyped claim must not lock everyone out of the account.
            tracing::warn!(
                actor = %actor.id,
                claim = %claim,
                "the admin claim says user, but this is the account's last admin: kept admin"
            );
        } else if role != actor.role {
            actor.role = role;
            actors::update(tx, account, &actor, now_ms).await?;
            changed = true;
        }
    }
    Ok(Mapped { actor, changed })
}

/// A new user for a verified email nobody of the account has: named by the
/// `name` claim (else the email), a user until the admin claim says more.
async fn provision(
    tx: &mut Tx,
    account: Uuid,
    identity: &Identity,
    email: &str,
    now_ms: i64,
) -> Result<Actor, MappingError> {
    if !crate::setup::validate_email(email) {
        return Err(MappingError::Unknown(Some(email.to_string())));
    }
    let name = identity
        .name
        .as_deref()
        .map(str::trim)
        .filter(|name| crate::api::fields::NAME.accepts(name))
        .unwrap_or(email);
    let actor = Actor {
        directory_id: None,
        id: Uuid::new_v4(),
        name: name.to_string(),
        email: Some(email.to_string()),
        role: Role::User,
        disabled: false,
        created_at: jiff::Timestamp::from_millisecond(now_ms).unwrap_or_default(),
    };
    actors::insert(tx, account, &actor).await?;
    // Audited like an admin's create, by no one: the provider's sign-in.
    crate::store::audit::record(
        tx,
        account,
        crate::store::audit::Author {
            directory_id: None,
            actor_id: None,
            token_id: None,
        },
        crate::store::audit::NewAuditEntry {
            action: "actor.provision",
            object_type: "actor",
            object_id: actor.id.to_string(),
            before: None,
            after: serde_json::to_value(&actor).ok(),
        },
        now_ms,
    )
    .await?;
    tracing::info!(actor = %actor.id, "a provider's new identity became a user (provision_users)");
    Ok(actor)
}

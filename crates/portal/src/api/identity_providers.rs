//! `/identity_providers`: the account's OpenID Connect providers. The client
//! secret is sealed before it is stored and never returned.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Notices, Outcome};
use super::body::Json;
use super::fields::MAX_SESSION_SECS;
use super::fields::{Claim, ClientId, ClientSecret, Name};
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, scoped};
use crate::auth::oidc::{Reach, url_allowed};
use crate::domain::IdentityProvider;
use crate::secrets::SecretKey;
use crate::state::{AppState, Change};
use crate::store::{Conn, identity_providers};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    #[serde(rename = "type")]
    pub kind: ProviderType,
    pub name: Name,
    #[schema(schema_with = super::schemas::issuer)]
    pub issuer: String,
    pub client_id: ClientId,
    pub client_secret: ClientSecret,
    pub groups_claim: Option<Claim>,
    /// Makes the user an admin when it is JSON `true`, `"true"` (any case)
    /// or holds `admin_claim_value`; anything else means user.
    pub admin_claim: Option<Claim>,
    /// A string (or a member of a list of strings) of `admin_claim` that
    /// means admin, such as `"postern-admin"` in a roles claim.
    pub admin_claim_value: Option<Claim>,
    #[serde(default, deserialize_with = "super::fields::whole_number")]
    #[schema(schema_with = super::schemas::session_lifetime)]
    pub client_session_lifetime_secs: Option<i64>,
    /// An identity no user matches, with a verified email, becomes a user
    /// at its first sign-in (default: refused until an admin adds them).
    #[serde(default)]
    pub provision_users: bool,
}

/// The kinds of identity provider (OpenID Connect only, today).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    Oidc,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderPatch {
    pub name: Option<Name>,
    #[schema(schema_with = super::schemas::issuer_or_null)]
    pub issuer: Option<String>,
    pub client_id: Option<ClientId>,
    pub client_secret: Option<ClientSecret>,
    /// `""` clears it.
    pub groups_claim: Option<Claim>,
    /// `""` clears it.
    pub admin_claim: Option<Claim>,
    /// `""` clears it.
    pub admin_claim_value: Option<Claim>,
    /// `0` goes back to the default (7 days).
    #[serde(default, deserialize_with = "super::fields::whole_number")]
    #[schema(schema_with = super::schemas::session_lifetime)]
    pub client_session_lifetime_secs: Option<i64>,
    pub provision_users: Option<bool>,
}

/// A provider as the API shows it: everything but the secret.
#[derive(Clone, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub groups_claim: Option<String>,
    pub admin_claim: Option<String>,
    pub admin_claim_value: Option<String>,
    pub client_session_lifetime_secs: Option<i64>,
    pub provision_users: bool,
    /// The redirect URI to register at the provider (needs `--external-url`).
    pub redirect_uri: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

fn view(state: &AppState, slug: &str, provider: &IdentityProvider) -> ProviderView {
    ProviderView {
        id: provider.id,
        kind: "oidc",
        name: provider.name.clone(),
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        groups_claim: provider.groups_claim.clone(),
        admin_claim: provider.admin_claim.clone(),
        admin_claim_value: provider.admin_claim_value.clone(),
        client_session_lifetime_secs: provider.client_session_lifetime_secs,
        provision_users: provider.provision_users,
        redirect_uri: state
            .external_url
            .as_deref()
            .map(|base| callback_url(base, slug, provider.id)),
        created_at: provider.created_at,
    }
}

/// Where the provider sends the browser back to.
pub fn callback_url(base: &str, slug: &str, provider: Uuid) -> String {
    format!(
        "{}/{slug}/sign_in/oidc/{provider}/callback",
        base.trim_end_matches('/')
    )
}

/// An issuer is an https URL without query or fragment; plain http, and
/// loopback addresses, only on a development portal (`--external-url` on
/// loopback). The endpoints its discovery document names are held to the
/// same rules when a sign-in uses them.
fn valid_issuer(value: &str, reach: Reach) -> ApiResult<String> {
    let value = value.trim().trim_end_matches('/');
    let bad = |why: &str| Problem::invalid("issuer", why);
    let url = url::Url::parse(value).map_err(|_| bad("must be a URL"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("must not carry a query, fragment or user"));
    }
    if url.host().is_none() {
        return Err(bad("must name a host"));
    }
    url_allowed(&url, reach).map_err(|_| {
        bad(
            "must be an https URL not on loopback or link-local addresses \
             (http and loopback only on a portal whose --external-url is on loopback)",
        )
    })?;
    Ok(value.to_string())
}

/// Providers need `--external-url`: their redirect URI is built from it,
/// never from a request's Host header.
fn external_url(state: &AppState) -> ApiResult<Reach> {
    match state.external_url.as_deref() {
        Some(url) => Ok(Reach::of_portal(Some(url))),
        None => Err(Problem::new(
            StatusCode::CONFLICT,
            "OpenID Connect providers need the portal's --external-url (their redirect URI is \
             built from it); restart the portal with it",
        )),
    }
}

/// A claim name; empty clears it.
fn claim(value: Option<&Claim>) -> Option<String> {
    value.map(|c| c.0.clone()).filter(|c| !c.is_empty())
}

fn valid_lifetime(value: Option<i64>) -> ApiResult<Option<i64>> {
    match value {
        None | Some(0) => Ok(None),
        Some(secs) if (1..=MAX_SESSION_SECS).contains(&secs) => Ok(Some(secs)),
        Some(_) => Err(Problem::invalid(
            "client_session_lifetime_secs",
            format!("must be at most {MAX_SESSION_SECS} seconds (0 for the default)"),
        )),
    }
}

fn key(state: &AppState) -> ApiResult<&SecretKey> {
    state.secret_key.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the portal has no secret key to seal provider secrets with",
        )
    })
}

fn seal(state: &AppState, secret: &ClientSecret, provider: Uuid) -> ApiResult<String> {
    key(state)?
        .seal(&secret.0, &provider.to_string())
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn slug(tx: &mut Conn, admin: &Admin) -> ApiResult<String> {
    Ok(crate::store::accounts::get(tx, admin.account_id)
        .await?
        .map(|a| a.slug)
        .unwrap_or_default())
}

#[utoipa::path(get, path = "/identity_providers", tag = "identity providers",
    responses((status = 200, body = List<ProviderView>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let providers = identity_providers::list(&mut tx, admin.account_id).await?;
    let slug = slug(&mut tx, &admin).await?;
    tx.commit().await?;
    Ok(List::of(
        providers.iter().map(|p| view(&state, &slug, p)).collect(),
    ))
}

#[utoipa::path(post, path = "/identity_providers", tag = "identity providers",
    request_body = ProviderInput,
    responses((status = 201, body = ProviderView), (status = 409, description = "name taken"), (status = 422)))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<ProviderInput>,
) -> ApiResult<impl IntoResponse> {
    // The one kind there is; the match breaks the build when a second comes.
    let ProviderType::Oidc = input.kind;
    let id = Uuid::new_v4();
    let provider = IdentityProvider {
        id,
        name: input.name.0.clone(),
        issuer: valid_issuer(&input.issuer, external_url(&state)?)?,
        client_id: input.client_id.0.clone(),
        sealed_client_secret: seal(&state, &input.client_secret, id)?,
        groups_claim: claim(input.groups_claim.as_ref()),
        admin_claim: claim(input.admin_claim.as_ref()),
        admin_claim_value: claim(input.admin_claim_value.as_ref()),
        client_session_lifetime_secs: valid_lifetime(input.client_session_lifetime_secs)?,
        provision_users: input.provision_users,
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        identity_providers::insert(tx, admin.account_id, &provider).await?;
        let slug = slug(tx, &admin).await?;
        Ok(Outcome::created(
            "identity_provider.create",
            id,
            view(&state, &slug, &provider),
            Notices::Quiet("nobody has signed in with a new provider yet"),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/identity_providers/{id}", tag = "identity providers", params(("id" = String, Path, description = "The object's id (a UUID)")),
    responses((status = 200, body = ProviderView), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let provider: IdentityProvider = scoped(&mut tx, &admin, &id).await?;
    let slug = slug(&mut tx, &admin).await?;
    tx.commit().await?;
    Ok(axum::Json(view(&state, &slug, &provider)))
}

#[utoipa::path(patch, path = "/identity_providers/{id}", tag = "identity providers", params(("id" = String, Path, description = "The object's id (a UUID)")),
    request_body = ProviderPatch,
    responses((status = 200, body = ProviderView), (status = 404), (status = 409, description = "a new issuer without the secret"), (status = 422)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<ProviderPatch>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, before: IdentityProvider| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = name.0.clone();
        }
        if let Some(issuer) = &patch.issuer {
            after.issuer = valid_issuer(issuer, external_url(&state)?)?;
            // The secret goes to the issuer's token endpoint: one kept from
            // before must not follow a move to another server.
            if after.issuer != before.issuer && patch.client_secret.is_none() {
                return Err(Problem::conflict_at(
                    "client_secret",
                    "give the client secret again when the issuer changes (the stored one is \
                     never sent to another server)",
                ));
            }
        }
        if let Some(client_id) = &patch.client_id {
            after.client_id = client_id.0.clone();
        }
        if let Some(secret) = &patch.client_secret {
            after.sealed_client_secret = seal(&state, secret, after.id)?;
        }
        if patch.groups_claim.is_some() {
            after.groups_claim = claim(patch.groups_claim.as_ref());
        }
        if patch.admin_claim.is_some() {
            after.admin_claim = claim(patch.admin_claim.as_ref());
        }
        if patch.admin_claim_value.is_some() {
            after.admin_claim_value = claim(patch.admin_claim_value.as_ref());
        }
        if patch.client_session_lifetime_secs.is_some() {
            after.client_session_lifetime_secs =
                valid_lifetime(patch.client_session_lifetime_secs)?;
        }
        if let Some(provision) = patch.provision_users {
            after.provision_users = provision;
        }
        identity_providers::update(tx, admin.account_id, &after, now_ms()).await?;
        let slug = slug(tx, &admin).await?;
        Ok(Outcome::updated(
            "identity_provider.update",
            before.id,
            &view(&state, &slug, &before),
            view(&state, &slug, &after),
            Notices::Quiet("a provider's settings apply from the next sign-in with it"),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/identity_providers/{id}", tag = "identity providers", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the provider with its identities; every token from a sign-in with it is revoked and its clients disconnected at once.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(
        &state,
        &admin,
        &id,
        async |tx, provider: IdentityProvider| {
            let slug = slug(tx, &admin).await?;
            let removed = identity_providers::delete(tx, admin.account_id, provider.id)
                .await?
                .ok_or_else(Problem::not_found)?;
            let mut changes: Vec<Change> = removed
                .tokens
                .into_iter()
                .map(Change::TokenRevoked)
                .collect();
            if !removed.actors.is_empty() {
                changes.push(Change::Actors(removed.actors));
            }
            Ok(Outcome::deleted(
                "identity_provider.delete",
                provider.id,
                &view(&state, &slug, &provider),
                changes,
            ))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_or_loopback_http() {
        for reach in [Reach::Public, Reach::Development] {
            assert_eq!(
                valid_issuer("https://id.example.com/realms/x/", reach).unwrap(),
                "https://id.example.com/realms/x"
            );
            assert!(valid_issuer("https://10.1.2.3", reach).is_ok(), "private");
        }
        for dev in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "http://localhost:9000",
            "https://127.0.0.1",
        ] {
            assert!(valid_issuer(dev, Reach::Development).is_ok(), "{dev}");
            assert!(valid_issuer(dev, Reach::Public).is_err(), "{dev}");
        }
        for reach in [Reach::Public, Reach::Development] {
            for bad in [
                "http://id.example.com",
                "ftp://id.example.com",
                "https://id.example.com/?a=b",
                "https://user@id.example.com",
                "https://169.254.169.254",
                "https://[fe80::1]",
                "https://0.0.0.0",
                "https://[::ffff:169.254.169.254]",
                "not a url",
                "",
            ] {
                assert!(valid_issuer(bad, reach).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn lifetimes_and_claims_are_bounded() {
        assert_eq!(valid_lifetime(Some(0)).unwrap(), None);
        assert_eq!(valid_lifetime(Some(3600)).unwrap(), Some(3600));
        assert_eq!(valid_lifetime(Some(60)).unwrap(), Some(60));
        assert!(valid_lifetime(Some(-1)).is_err());
        assert!(valid_lifetime(Some(MAX_SESSION_SECS + 1)).is_err());
        let blank: Claim = serde_json::from_str(r#"" ""#).unwrap();
        assert_eq!(claim(Some(&blank)), None);
        assert!(serde_json::from_str::<Claim>(&format!("{:?}", "x".repeat(200))).is_err());
    }
}

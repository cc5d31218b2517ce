//! `/account`: the admin's own account, and its DNS search domain (F25),
//! which its clients get in `init` (at their next connection).

use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Outcome};
use super::body::Json;
use super::fields::DnsName;
use super::problem::{ApiResult, Problem};
use super::{Admin, Shared};
use crate::state::Change;
use crate::store::{Conn, accounts};

#[derive(Clone, Serialize, ToSchema)]
pub struct AccountView {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    /// Search domain clients put in their resolver configuration.
    pub search_domain: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    /// A DNS name (`corp.example`), or null to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DnsName>)]
    pub search_domain: Option<Option<DnsName>>,
}

/// A field that is present: `null` becomes `Some(None)`, absent stays `None`
/// (with `default`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<DnsName>>, D::Error> {
    Option::<DnsName>::deserialize(deserializer).map(Some)
}

async fn view(tx: &mut Conn, account: Uuid) -> ApiResult<AccountView> {
    let found = accounts::get(tx, account)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(AccountView {
        id: found.id,
        slug: found.slug,
        name: found.name,
        search_domain: accounts::search_domain(tx, account).await?,
    })
}

#[utoipa::path(get, path = "/account", tag = "account", responses((status = 200, body = AccountView)))]
pub async fn get(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let account = view(&mut tx, admin.account_id).await?;
    tx.commit().await?;
    Ok(axum::Json(account))
}

#[utoipa::path(patch, path = "/account", tag = "account", request_body = AccountPatch,
    description = "Sets the search domain; connected clients get it when they next connect.",
    responses((status = 200, body = AccountView), (status = 422)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Json(patch): Json<AccountPatch>,
) -> ApiResult<impl IntoResponse> {
    let domain = patch
        .search_domain
        .map(|domain| domain.map(|DnsName(name)| name));
    audited::write(&state, &admin, async |tx| {
        let before = view(tx, admin.account_id).await?;
        let mut after = before.clone();
        if let Some(domain) = domain {
            accounts::set_search_domain(tx, admin.account_id, domain.as_deref()).await?;
            after.search_domain = domain;
        }
        Ok(Outcome::updated(
            "account.update",
            admin.account_id,
            &before,
            after,
            Change::Everything,
        ))
    })
    .await
}

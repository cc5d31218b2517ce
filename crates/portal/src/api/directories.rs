//! `/directories`: where users and groups come from when a company directory
//! owns them (SPEC 7.3). A SCIM directory gets a token (shown once) and the
//! URL its provisioning client pushes to; an LDAP directory gets the
//! connection the portal pulls from. What a directory provisioned is
//! read-only to everyone else: `owned` answers 409 naming the directory.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Entry, Notices, Outcome};
use super::body::Json;
use super::fields::{Dn, LdapFilter, Name, Password};
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, scoped};
use crate::directory::ldap::{self, DEFAULT_INTERVAL_SECS, Settings};
use crate::domain::{Directory, DirectoryKind, MintedToken};
use crate::state::AppState;
use crate::store::directories::{self, EntryKind};
use crate::store::{Conn, accounts};

use super::fields::{
    MAX_SYNC_INTERVAL_SECS as MAX_INTERVAL_SECS, MIN_SYNC_INTERVAL_SECS as MIN_INTERVAL_SECS,
};

/// A new directory: `{"type": "scim", "name"}` or the LDAP connection.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DirectoryInput {
    Scim { name: Name },
    Ldap(LdapInput),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapInput {
    pub name: Name,
    pub url: String,
    pub bind_dn: Dn,
    pub bind_password: Password,
    pub base_dn: Dn,
    pub user_filter: Option<LdapFilter>,
    pub group_filter: Option<LdapFilter>,
    #[serde(default, deserialize_with = "super::fields::whole_number")]
    pub interval_secs: Option<i64>,
    #[serde(default)]
    pub starttls: bool,
    pub ca_certificate: Option<CaCertificate>,
}

impl utoipa::PartialSchema for DirectoryInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::RefOr::T(super::schemas::directory_input())
    }
}

impl utoipa::ToSchema for DirectoryInput {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("DirectoryInput")
    }
}

/// PEM certificates (trimmed).
#[derive(Clone, Debug, Deserialize)]
#[serde(transparent)]
pub struct CaCertificate(pub String);

/// A change to a directory; LDAP fields only for an LDAP directory.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryPatch {
    pub name: Option<Name>,
    #[schema(schema_with = super::schemas::ldap_url_or_null)]
    pub url: Option<String>,
    pub bind_dn: Option<Dn>,
    pub bind_password: Option<Password>,
    pub base_dn: Option<Dn>,
    /// `""` goes back to the default.
    #[schema(schema_with = super::schemas::ldap_filter_or_empty)]
    pub user_filter: Option<FilterOrDefault>,
    /// `""` goes back to the default.
    #[schema(schema_with = super::schemas::ldap_filter_or_empty)]
    pub group_filter: Option<FilterOrDefault>,
    #[serde(default, deserialize_with = "super::fields::whole_number")]
    #[schema(schema_with = super::schemas::sync_interval_or_null)]
    pub interval_secs: Option<i64>,
    pub starttls: Option<bool>,
    /// `""` trusts the system's roots alone.
    #[schema(schema_with = super::schemas::pem_or_empty)]
    pub ca_certificate: Option<CaCertificate>,
}

/// An LDAP filter, or `""` for the default one.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum FilterOrDefault {
    Filter(LdapFilter),
    Default(EmptyText),
}

/// The empty string.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub struct EmptyText;

impl TryFrom<String> for EmptyText {
    type Error = &'static str;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.trim().is_empty() {
            Ok(EmptyText)
        } else {
            Err("must be an LDAP filter in parentheses, or \"\" for the default")
        }
    }
}

/// The LDAP connection as the API shows it (not the password).
#[derive(Clone, Serialize, ToSchema)]
pub struct LdapView {
    pub url: String,
    pub bind_dn: String,
    pub base_dn: String,
    pub user_filter: String,
    pub group_filter: String,
    pub interval_secs: u64,
    pub starttls: bool,
    pub ca_certificate: Option<String>,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct DirectoryView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: DirectoryKind,
    pub name: String,
    /// SCIM: the base URL to give the provisioning client (needs the
    /// portal's `--external-url`).
    pub scim_base_url: Option<String>,
    /// SCIM: the bearer token, only in the answer that made it (a create,
    /// a rotation); never shown again.
    pub token: Option<String>,
    pub ldap: Option<LdapView>,
    /// How many users and groups it provisioned.
    pub users: usize,
    pub groups: usize,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync_at: Option<Timestamp>,
    /// LDAP: what the last successful sync created, updated and deleted.
    #[schema(value_type = Option<Object>)]
    pub last_sync: Option<serde_json::Value>,
    /// LDAP: why the last sync failed (none once one succeeds).
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

async fn view(
    state: &AppState,
    tx: &mut Conn,
    account: Uuid,
    directory: &Directory,
    token: Option<String>,
) -> ApiResult<DirectoryView> {
    let slug = accounts::get(tx, account)
        .await?
        .map(|a| a.slug)
        .unwrap_or_default();
    let users = directories::entry_ids(tx, directory.id, EntryKind::User)
        .await?
        .len();
    let groups = directories::entry_ids(tx, directory.id, EntryKind::Group)
        .await?
        .len();
    let ldap = Settings::of(directory).filter(|_| directory.kind == DirectoryKind::Ldap);
    Ok(DirectoryView {
        id: directory.id,
        kind: directory.kind,
        name: directory.name.clone(),
        scim_base_url: match directory.kind {
            DirectoryKind::Scim => state
                .external_url
                .as_deref()
                .map(|base| format!("{}/{slug}/scim/v2", base.trim_end_matches('/'))),
            DirectoryKind::Ldap => None,
        },
        token,
        ldap: ldap.map(|s| LdapView {
            url: s.url,
            bind_dn: s.bind_dn,
            base_dn: s.base_dn,
            user_filter: s
                .user_filter
                .unwrap_or_else(|| ldap::DEFAULT_USER_FILTER.to_string()),
            group_filter: s
                .group_filter
                .unwrap_or_else(|| ldap::DEFAULT_GROUP_FILTER.to_string()),
            interval_secs: s.interval_secs,
            starttls: s.starttls,
            ca_certificate: s.ca_certificate,
        }),
        users,
        groups,
        last_sync_at: directory.last_sync_at,
        last_sync: directory.last_sync.clone(),
        last_error: directory.last_error.clone(),
        created_at: directory.created_at,
    })
}

/// `ldap://host[:port]` or `ldaps://host[:port]`, nothing else.
fn valid_url(field: &str, value: &str) -> ApiResult<String> {
    let bad = || {
        Problem::invalid(
            field,
            "must be ldap://HOST[:PORT] or ldaps://HOST[:PORT] (no path, query or user)",
        )
    };
    let value = value.trim();
    if value.chars().count() > 2048 {
        return Err(bad());
    }
    let url = url::Url::parse(value).map_err(|_| bad())?;
    if !matches!(url.scheme(), "ldap" | "ldaps")
        || url.host_str().is_none_or(str::is_empty)
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port() == Some(0)
    {
        return Err(bad());
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn valid_interval(value: Option<i64>) -> ApiResult<Option<u64>> {
    match value {
        None => Ok(None),
        Some(secs) => u64::try_from(secs)
            .ok()
            .filter(|s| (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(s))
            .map(Some)
            .ok_or_else(|| {
                Problem::invalid(
                    "interval_secs",
                    format!("must be {MIN_INTERVAL_SECS}-{MAX_INTERVAL_SECS} seconds"),
                )
            }),
    }
}

fn valid_ca(value: Option<&CaCertificate>) -> ApiResult<Option<String>> {
    let too_long = value.is_some_and(|c| c.0.chars().count() > super::fields::MAX_PEM_CHARS);
    let Some(pem) = value.map(|c| c.0.trim()).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(certs) if !certs.is_empty() && !too_long => Ok(Some(pem.to_string())),
        _ => Err(Problem::invalid(
            "ca_certificate",
            "must hold PEM certificates (-----BEGIN CERTIFICATE-----), at most 16,384 characters",
        )),
    }
}

fn seal(state: &AppState, password: &str, directory: Uuid) -> ApiResult<String> {
    state
        .secret_key
        .as_ref()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the portal has no secret key to seal the bind password with",
            )
        })?
        .seal(password, &directory.to_string())
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn mint() -> ApiResult<MintedToken> {
    crate::auth::token::mint()
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Refuses a change to something a directory owns: 409 naming it.
pub(crate) async fn refuse_if_owned(
    tx: &mut Conn,
    account: Uuid,
    owner: Option<Uuid>,
    what: &str,
) -> ApiResult<()> {
    let Some(directory) = owner else {
        return Ok(());
    };
    let name = directories::get(tx, account, directory)
        .await?
        .map(|d| d.name)
        .unwrap_or_default();
    Err(Problem::conflict(format!(
        "{what} is provisioned by the directory {name:?} ({directory}): change it there"
    )))
}

#[utoipa::path(get, path = "/directories", tag = "directories",
    responses((status = 200, body = List<DirectoryView>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let mut out = Vec::new();
    for directory in directories::list(&mut tx, admin.account_id).await? {
        out.push(view(&state, &mut tx, admin.account_id, &directory, None).await?);
    }
    tx.commit().await?;
    Ok(List::of(out))
}

#[utoipa::path(post, path = "/directories", tag = "directories", request_body = DirectoryInput,
    description = "A SCIM directory's answer carries its token, shown once.",
    responses((status = 201, body = DirectoryView), (status = 409, description = "name taken")))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<DirectoryInput>,
) -> ApiResult<impl IntoResponse> {
    let id = Uuid::new_v4();
    let now = crate::domain::from_millis(now_ms());
    let (directory, minted) = match input {
        DirectoryInput::Scim { name } => (
            Directory {
                id,
                name: name.0,
                kind: DirectoryKind::Scim,
                settings: serde_json::json!({}),
                last_sync_at: None,
                last_sync: None,
                last_error: None,
                created_at: now,
            },
            Some(mint()?),
        ),
        DirectoryInput::Ldap(ldap) => {
            let settings = Settings {
                url: valid_url("url", &ldap.url)?,
                bind_dn: ldap.bind_dn.0,
                sealed_bind_password: seal(&state, &ldap.bind_password.0, id)?,
                base_dn: ldap.base_dn.0,
                user_filter: ldap.user_filter.map(|f| f.0),
                group_filter: ldap.group_filter.map(|f| f.0),
                interval_secs: valid_interval(ldap.interval_secs)?.unwrap_or(DEFAULT_INTERVAL_SECS),
                starttls: ldap.starttls,
                ca_certificate: valid_ca(ldap.ca_certificate.as_ref())?,
            };
            let settings = serde_json::to_value(settings)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            (
                Directory {
                    id,
                    name: ldap.name.0,
                    kind: DirectoryKind::Ldap,
                    settings,
                    last_sync_at: None,
                    last_sync: None,
                    last_error: None,
                    created_at: now,
                },
                None,
            )
        }
    };
    audited::write(&state, &admin, async |tx| {
        directories::insert(tx, admin.account_id, &directory).await?;
        if let Some(minted) = &minted {
            directories::set_token(tx, admin.account_id, id, minted).await?;
        }
        let shown = view(
            &state,
            tx,
            admin.account_id,
            &directory,
            minted.as_ref().map(|m| m.token.clone()),
        )
        .await?;
        let mut logged = shown.clone();
        logged.token = None;
        let entry = Entry::created("directory.create", id, &logged);
        Ok(Outcome::new(
            (StatusCode::CREATED, axum::Json(shown)),
            entry,
            Notices::Quiet("a directory provisions nothing until it pushes or syncs"),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/directories/{id}", tag = "directories",
    params(("id" = String, Path, description = "The object's id (a UUID)")),
    responses((status = 200, body = DirectoryView), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let directory: Directory = scoped(&mut tx, &admin, &id).await?;
    let shown = view(&state, &mut tx, admin.account_id, &directory, None).await?;
    tx.commit().await?;
    Ok(axum::Json(shown))
}

fn ldap_only(directory: &Directory) -> ApiResult<Settings> {
    match (directory.kind, Settings::of(directory)) {
        (DirectoryKind::Ldap, Some(settings)) => Ok(settings),
        _ => Err(Problem::conflict(
            "this is a SCIM directory: it has no LDAP settings and pushes its changes itself",
        )),
    }
}

#[utoipa::path(patch, path = "/directories/{id}", tag = "directories",
    params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = DirectoryPatch,
    responses((status = 200, body = DirectoryView), (status = 404), (status = 409)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<DirectoryPatch>,
) -> ApiResult<impl IntoResponse> {
    let url = patch
        .url
        .as_deref()
        .map(|u| valid_url("url", u))
        .transpose()?;
    let interval = valid_interval(patch.interval_secs)?;
    let ca = patch
        .ca_certificate
        .as_ref()
        .map(|c| valid_ca(Some(c)))
        .transpose()?;
    audited::write_scoped(&state, &admin, &id, async |tx, before: Directory| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = name.0.clone();
        }
        let touches_ldap = url.is_some()
            || patch.bind_dn.is_some()
            || patch.bind_password.is_some()
            || patch.base_dn.is_some()
            || patch.user_filter.is_some()
            || patch.group_filter.is_some()
            || interval.is_some()
            || patch.starttls.is_some()
            || ca.is_some();
        if touches_ldap {
            let mut settings = ldap_only(&before)?;
            if let Some(url) = &url {
                settings.url = url.clone();
            }
            if let Some(dn) = &patch.bind_dn {
                settings.bind_dn = dn.0.clone();
            }
            if let Some(password) = &patch.bind_password {
                settings.sealed_bind_password = seal(&state, &password.0, before.id)?;
            }
            if let Some(dn) = &patch.base_dn {
                settings.base_dn = dn.0.clone();
            }
            let filter = |f: &FilterOrDefault| match f {
                FilterOrDefault::Filter(f) => Some(f.0.clone()),
                FilterOrDefault::Default(_) => None,
            };
            if let Some(f) = &patch.user_filter {
                settings.user_filter = filter(f);
            }
            if let Some(f) = &patch.group_filter {
                settings.group_filter = filter(f);
            }
            if let Some(secs) = interval {
                settings.interval_secs = secs;
            }
            if let Some(starttls) = patch.starttls {
                settings.starttls = starttls;
            }
            if let Some(ca) = &ca {
                settings.ca_certificate = ca.clone();
            }
            // The bind password is sent to the server: one kept from
            // before must not follow a change of where, as whom or how
            // safely it is sent.
            let before_settings = ldap_only(&before)?;
            let redirected = settings.url != before_settings.url
                || settings.bind_dn != before_settings.bind_dn
                || (before_settings.starttls && !settings.starttls)
                || settings.ca_certificate != before_settings.ca_certificate;
            if redirected && patch.bind_password.is_none() {
                return Err(Problem::conflict_at(
                    "bind_password",
                    "give the bind password again when the server, the bind DN, StartTLS or \
                     the CA certificate changes (the stored one is never sent anywhere new)",
                ));
            }
            after.settings = serde_json::to_value(settings)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        }
        directories::update(tx, admin.account_id, &after, now_ms()).await?;
        let before_view = view(&state, tx, admin.account_id, &before, None).await?;
        let after_view = view(&state, tx, admin.account_id, &after, None).await?;
        Ok(Outcome::updated(
            "directory.update",
            before.id,
            &before_view,
            after_view,
            Notices::Quiet("the next sync applies the new settings"),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/directories/{id}", tag = "directories",
    params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the directory; the users and groups it provisioned stay, released to the admins (and its SCIM token stops working).",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, directory: Directory| {
        let shown = view(&state, tx, admin.account_id, &directory, None).await?;
        directories::delete(tx, admin.account_id, directory.id).await?;
        Ok(Outcome::deleted(
            "directory.delete",
            directory.id,
            &shown,
            Notices::Quiet("its users and groups stay as they are, now managed by the admins"),
        ))
    })
    .await
}

/// A new SCIM token.
#[derive(Serialize, ToSchema)]
pub struct DirectoryToken {
    /// The bearer token, shown once; the previous one stops working.
    pub token: String,
}

#[utoipa::path(post, path = "/directories/{id}/token", tag = "directories",
    params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Gives a SCIM directory a new token; the old one stops working at once.",
    responses((status = 201, body = DirectoryToken), (status = 404), (status = 409)))]
pub async fn rotate_token(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let minted = mint()?;
    audited::write_scoped(&state, &admin, &id, async |tx, directory: Directory| {
        if directory.kind != DirectoryKind::Scim {
            return Err(Problem::conflict(
                "this is an LDAP directory: the portal pulls from it, it has no token",
            ));
        }
        directories::set_token(tx, admin.account_id, directory.id, &minted).await?;
        Ok(Outcome::new(
            (
                StatusCode::CREATED,
                axum::Json(DirectoryToken {
                    token: minted.token.clone(),
                }),
            ),
            Entry::created(
                "directory.token",
                directory.id,
                &serde_json::json!({"token_id": minted.id}),
            ),
            Notices::Quiet("a token is not access: the next SCIM request uses the new one"),
        ))
    })
    .await
}

#[utoipa::path(post, path = "/directories/{id}/sync", tag = "directories",
    params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Syncs an LDAP directory now and answers with what it did. A directory that cannot be reached or read changes nothing: 502 with the reason, which the directory also shows.",
    responses((status = 200, body = DirectoryView), (status = 404), (status = 409),
        (status = 502, description = "the directory could not be reached or read")))]
pub async fn sync(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let directory: Directory = scoped(&mut tx, &admin, &id).await?;
    tx.commit().await?;
    ldap_only(&directory)?;
    if let Err(error) = ldap::sync(&state, admin.account_id, &directory).await {
        use crate::directory::ProvisionError;
        return Err(match error {
            ldap::SyncError::Directory(why) => Problem::new(StatusCode::BAD_GATEWAY, why),
            ldap::SyncError::Provision(ProvisionError::Store(e)) => e.into(),
            ldap::SyncError::Provision(ProvisionError::Gone) => Problem::not_found(),
            ldap::SyncError::Provision(
                ProvisionError::Conflict(why) | ProvisionError::Invalid(why),
            ) => Problem::conflict(why),
        });
    }
    let mut tx = state.store.read().await?;
    let directory: Directory = scoped(&mut tx, &admin, &id).await?;
    let shown = view(&state, &mut tx, admin.account_id, &directory, None).await?;
    tx.commit().await?;
    Ok(axum::Json(shown))
}

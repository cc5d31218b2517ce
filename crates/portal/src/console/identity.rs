//! Sign-in and directories: the account's OpenID Connect providers (with
//! the callback URL to register at each, ready to copy; the client secret
//! is never shown back) and its directories (SCIM with a token shown once,
//! LDAP with its connection, "Sync now", what the last sync did). Every
//! change goes through the API's handlers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{
    Console, Form, Posted, Refusal, Section, answer, data, deleted, error_box, input, object,
    refused_status, submit, text, when,
};
use crate::api::fields::{Claim, ClientId, ClientSecret, Dn, LdapFilter, Name, Password};
use crate::api::{self, body::Json};
use crate::directory::ldap::{DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER};
use crate::state::AppState;
use crate::store::directories::{self, Owned};
use crate::store::identity_providers;
use crate::web::{WebResult, see_other};

type Id = Path<(String, String)>;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}/identity", get(list))
        .route("/{account}/identity/providers", post(create_provider))
        .route(
            "/{account}/identity/providers/{id}",
            get(show_provider).post(update_provider),
        )
        .route(
            "/{account}/identity/providers/{id}/delete",
            get(confirm_delete_provider).post(delete_provider),
        )
        .route("/{account}/identity/directories", post(create_directory))
        .route(
            "/{account}/identity/directories/{id}",
            get(show_directory).post(update_directory),
        )
        .route(
            "/{account}/identity/directories/{id}/token",
            post(rotate_token),
        )
        .route("/{account}/identity/directories/{id}/sync", post(sync))
        .route(
            "/{account}/identity/directories/{id}/delete",
            get(confirm_delete_directory).post(delete_directory),
        )
}

/// Checks one form field by its API type's rule, naming the field.
fn checked<T: serde::de::DeserializeOwned>(field: &str, value: &str) -> Result<(), String> {
    serde_json::from_value::<T>(json!(value))
        .map(|_| ())
        .map_err(|e| format!("{field}: {e}"))
}

/// A whole number of seconds typed in a form; `None` when empty.
fn seconds(field: &str, value: &str) -> Result<Option<i64>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .map(Some)
        .map_err(|_| format!("{field}: must be a whole number of seconds"))
}

/// Names as a sentence: `a, b, c and 4 more`.
fn some_names(names: &[String], total: usize) -> Markup {
    html! {
        @for (n, name) in names.iter().enumerate() {
            @if n > 0 { ", " }
            b { (name) }
        }
        @if total > names.len() { " and " (total - names.len()) " more" }
    }
}

// ---------------------------------------------------------------- reads

/// How many names a confirmation lists before "and N more".
const NAMES_SHOWN: i64 = 20;

/// What deleting a provider takes (`store::identity_providers::impact`).
async fn provider_impact(c: &Console, provider: &str) -> WebResult<identity_providers::Impact> {
    let mut tx = c.state.store.read().await?;
    let impact = identity_providers::impact(
        &mut tx,
        c.account.id,
        provider,
        c.admin.token_id,
        NAMES_SHOWN,
    )
    .await?;
    tx.commit().await?;
    Ok(impact)
}

/// The first names (by name) of the users or groups a directory owns.
async fn directory_names(c: &Console, directory: &str, owned: Owned) -> WebResult<Vec<String>> {
    let mut tx = c.state.store.read().await?;
    let names =
        directories::owned_names(&mut tx, c.account.id, directory, owned, NAMES_SHOWN).await?;
    tx.commit().await?;
    Ok(names)
}

async fn provider(c: &Console, id: &str) -> WebResult<Value> {
    object(
        api::identity_providers::get(State(c.state.clone()), c.admin, Path(id.to_string())).await,
        "identity provider",
    )
    .await
}

async fn directory(c: &Console, id: &str) -> WebResult<Value> {
    object(
        api::directories::get(State(c.state.clone()), c.admin, Path(id.to_string())).await,
        "directory",
    )
    .await
}

// ---------------------------------------------------------------- drafts

/// A provider form as typed (never its secret).
#[derive(Default)]
struct ProviderDraft {
    name: String,
    issuer: String,
    client_id: String,
    groups_claim: String,
    admin_claim: String,
    admin_claim_value: String,
    lifetime: String,
    provision_users: bool,
}

impl ProviderDraft {
    fn of_form(form: &Form) -> ProviderDraft {
        ProviderDraft {
            name: form.get("name").into(),
            issuer: form.get("issuer").into(),
            client_id: form.get("client_id").into(),
            groups_claim: form.get("groups_claim").into(),
            admin_claim: form.get("admin_claim").into(),
            admin_claim_value: form.get("admin_claim_value").into(),
            lifetime: form.get("client_session_lifetime_secs").into(),
            provision_users: !form.get("provision_users").is_empty(),
        }
    }

    fn of_provider(p: &Value) -> ProviderDraft {
        let opt = |field: &str| p[field].as_str().unwrap_or_default().to_string();
        ProviderDraft {
            name: opt("name"),
            issuer: opt("issuer"),
            client_id: opt("client_id"),
            groups_claim: opt("groups_claim"),
            admin_claim: opt("admin_claim"),
            admin_claim_value: opt("admin_claim_value"),
            lifetime: p["client_session_lifetime_secs"]
                .as_i64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            provision_users: p["provision_users"] == json!(true),
        }
    }

    /// The fields every form sends, checked field by field.
    fn common(&self) -> Result<serde_json::Map<String, Value>, String> {
        checked::<Name>("name", &self.name)?;
        checked::<ClientId>("client_id", &self.client_id)?;
        for (field, value) in [
            ("groups_claim", &self.groups_claim),
            ("admin_claim", &self.admin_claim),
            ("admin_claim_value", &self.admin_claim_value),
        ] {
            checked::<Claim>(field, value)?;
        }
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), json!(self.name));
        fields.insert("issuer".into(), json!(self.issuer));
        fields.insert("client_id".into(), json!(self.client_id));
        fields.insert("provision_users".into(), json!(self.provision_users));
        Ok(fields)
    }

    /// The API's create input.
    fn create(&self, secret: &str) -> Result<api::identity_providers::ProviderInput, String> {
        let mut fields = self.common()?;
        checked::<ClientSecret>("client_secret", secret)?;
        fields.insert("type".into(), json!("oidc"));
        fields.insert("client_secret".into(), json!(secret));
        for (field, value) in [
            ("groups_claim", &self.groups_claim),
            ("admin_claim", &self.admin_claim),
            ("admin_claim_value", &self.admin_claim_value),
        ] {
            if !value.trim().is_empty() {
                fields.insert(field.into(), json!(value));
            }
        }
        if let Some(secs) = seconds("client_session_lifetime_secs", &self.lifetime)? {
            fields.insert("client_session_lifetime_secs".into(), json!(secs));
        }
        input(Value::Object(fields))
    }

    /// The API's patch: every field as the form shows it (an empty claim
    /// clears it, an empty lifetime is the default), the secret only when
    /// one was typed (an empty field keeps the current one).
    fn patch(&self, secret: &str) -> Result<api::identity_providers::ProviderPatch, String> {
        let mut fields = self.common()?;
        if !secret.is_empty() {
            checked::<ClientSecret>("client_secret", secret)?;
            fields.insert("client_secret".into(), json!(secret));
        }
        fields.insert("groups_claim".into(), json!(self.groups_claim));
        fields.insert("admin_claim".into(), json!(self.admin_claim));
        fields.insert("admin_claim_value".into(), json!(self.admin_claim_value));
        let secs = seconds("client_session_lifetime_secs", &self.lifetime)?.unwrap_or(0);
        fields.insert("client_session_lifetime_secs".into(), json!(secs));
        input(Value::Object(fields))
    }
}

/// An LDAP directory's form as typed (never its bind password).
#[derive(Default)]
struct LdapDraft {
    name: String,
    url: String,
    bind_dn: String,
    base_dn: String,
    user_filter: String,
    group_filter: String,
    interval: String,
    starttls: bool,
    ca_certificate: String,
}

impl LdapDraft {
    fn of_form(form: &Form) -> LdapDraft {
        LdapDraft {
            name: form.get("name").into(),
            url: form.get("url").into(),
            bind_dn: form.get("bind_dn").into(),
            base_dn: form.get("base_dn").into(),
            user_filter: form.get("user_filter").into(),
            group_filter: form.get("group_filter").into(),
            interval: form.get("interval_secs").into(),
            starttls: !form.get("starttls").is_empty(),
            ca_certificate: form.get("ca_certificate").into(),
        }
    }

    fn of_directory(d: &Value) -> LdapDraft {
        let ldap = &d["ldap"];
        // The defaults show as an empty field (so they stay the defaults).
        let filter = |field: &str, default: &str| {
            let value = text(ldap, field);
            if value == default { "" } else { value }.to_string()
        };
        LdapDraft {
            name: text(d, "name").into(),
            url: text(ldap, "url").into(),
            bind_dn: text(ldap, "bind_dn").into(),
            base_dn: text(ldap, "base_dn").into(),
            user_filter: filter("user_filter", DEFAULT_USER_FILTER),
            group_filter: filter("group_filter", DEFAULT_GROUP_FILTER),
            interval: ldap["interval_secs"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            starttls: ldap["starttls"] == json!(true),
            ca_certificate: text(ldap, "ca_certificate").into(),
        }
    }

    fn common(&self) -> Result<serde_json::Map<String, Value>, String> {
        checked::<Name>("name", &self.name)?;
        checked::<Dn>("bind_dn", &self.bind_dn)?;
        checked::<Dn>("base_dn", &self.base_dn)?;
        for (field, value) in [
            ("user_filter", &self.user_filter),
            ("group_filter", &self.group_filter),
        ] {
            if !value.trim().is_empty() {
                checked::<LdapFilter>(field, value)?;
            }
        }
        let mut fields = serde_json::Map::new();
        for (field, value) in [
            ("name", &self.name),
            ("url", &self.url),
            ("bind_dn", &self.bind_dn),
            ("base_dn", &self.base_dn),
        ] {
            fields.insert(field.into(), json!(value));
        }
        fields.insert("starttls".into(), json!(self.starttls));
        if let Some(secs) = seconds("interval_secs", &self.interval)? {
            fields.insert("interval_secs".into(), json!(secs));
        }
        Ok(fields)
    }

    fn create(&self, password: &str) -> Result<api::directories::DirectoryInput, String> {
        let mut fields = self.common()?;
        checked::<Password>("bind_password", password)?;
        fields.insert("type".into(), json!("ldap"));
        fields.insert("bind_password".into(), json!(password));
        for (field, value) in [
            ("user_filter", &self.user_filter),
            ("group_filter", &self.group_filter),
            ("ca_certificate", &self.ca_certificate),
        ] {
            if !value.trim().is_empty() {
                fields.insert(field.into(), json!(value));
            }
        }
        input(Value::Object(fields))
    }

    /// Every field as shown (empty filters are the defaults, an empty CA
    /// trusts the system's roots alone), the password only when typed.
    fn patch(&self, password: &str) -> Result<api::directories::DirectoryPatch, String> {
        let mut fields = self.common()?;
        if !password.is_empty() {
            checked::<Password>("bind_password", password)?;
            fields.insert("bind_password".into(), json!(password));
        }
        fields.insert("user_filter".into(), json!(self.user_filter));
        fields.insert("group_filter".into(), json!(self.group_filter));
        fields.insert("ca_certificate".into(), json!(self.ca_certificate));
        input(Value::Object(fields))
    }
}

// ---------------------------------------------------------------- forms

fn provider_fields(draft: &ProviderDraft, editing: bool) -> Markup {
    html! {
        label for="p-name" { "Name (shown on the sign-in page)" }
        input #p-name type="text" name="name" value=(draft.name) required maxlength="255";
        label for="p-issuer" { "Issuer URL" }
        input #p-issuer.wide type="url" name="issuer" value=(draft.issuer) required placeholder="https://id.example.com/realms/corp";
        p.hint { "The provider's issuer: its discovery document is at this URL plus " code { "/.well-known/openid-configuration" } ". https only." }
        label for="p-client-id" { "Client ID" }
        input #p-client-id type="text" name="client_id" value=(draft.client_id) required maxlength="512" autocomplete="off";
        label for="p-client-secret" { "Client secret" }
        @if editing {
            input #p-client-secret type="password" name="client_secret" value="" maxlength="4096" autocomplete="new-password" aria-describedby="p-secret-hint";
            p.hint #p-secret-hint { "Stored sealed and never shown. Leave empty to keep the current secret; type a new one to replace it." }
        } @else {
            input #p-client-secret type="password" name="client_secret" value="" required maxlength="4096" autocomplete="new-password" aria-describedby="p-secret-hint";
            p.hint #p-secret-hint { "Stored sealed and never shown again." }
        }
        label for="p-groups-claim" { "Groups claim (optional)" }
        input #p-groups-claim type="text" name="groups_claim" value=(draft.groups_claim) maxlength="128" placeholder="groups";
        p.hint { "A claim listing the user's groups: they join this provider's groups of those names at every sign-in (never a group an admin made). A path such as " code { "realm_access.roles" } " reaches nested claims. Empty: none." }
        label for="p-admin-claim" { "Admin claim (optional)" }
        input #p-admin-claim type="text" name="admin_claim" value=(draft.admin_claim) maxlength="128" placeholder="roles";
        label for="p-admin-claim-value" { "Admin claim value (optional)" }
        input #p-admin-claim-value type="text" name="admin_claim_value" value=(draft.admin_claim_value) maxlength="128" placeholder="postern-admin";
        p.hint { "The admin claim makes the user an admin when it is JSON true, the string \"true\", or holds the admin claim value; anything else makes a user. Set at every sign-in. Empty: the role is never set from the provider." }
        label for="p-lifetime" { "Client session lifetime in seconds (optional)" }
        input #p-lifetime type="number" name="client_session_lifetime_secs" value=(draft.lifetime) min="0" max="31536000" step="1" placeholder="604800";
        p.hint { "How long a client stays signed in after signing in with this provider: at most a year (31536000). Empty: the default, 7 days." }
        div.choice {
            input #p-provision type="checkbox" name="provision_users" value="true" checked[draft.provision_users];
            " "
            label for="p-provision" { "Add unknown people as users at their first sign-in (with a verified email)" }
        }
        p.hint { "Unchecked: only people an admin added (or a directory provisioned) may sign in with it." }
    }
}

fn scim_form(c: &Console, name: &str) -> Markup {
    html! {
        form method="post" action=(c.href("/identity/directories")) {
            (c.csrf_field())
            input type="hidden" name="type" value="scim";
            label for="scim-name" { "Name" }
            input #scim-name type="text" name="name" value=(name) required maxlength="255" placeholder="Okta";
            div { button type="submit" { "Add the SCIM directory" } }
        }
    }
}

fn ldap_fields(draft: &LdapDraft, editing: bool) -> Markup {
    html! {
        label for="l-name" { "Name" }
        input #l-name type="text" name="name" value=(draft.name) required maxlength="255" placeholder="Corp AD";
        label for="l-url" { "Server URL" }
        input #l-url.wide type="text" name="url" value=(draft.url) required placeholder="ldaps://dc1.corp.example";
        p.hint { code { "ldaps://HOST[:PORT]" } ", or " code { "ldap://HOST[:PORT]" } " with StartTLS below (a plain " code { "ldap://" } " bind sends the password in clear)." }
        div.choice {
            input #l-starttls type="checkbox" name="starttls" value="true" checked[draft.starttls];
            " "
            label for="l-starttls" { "Upgrade ldap:// with StartTLS" }
        }
        label for="l-bind-dn" { "Bind DN" }
        input #l-bind-dn.wide type="text" name="bind_dn" value=(draft.bind_dn) required maxlength="1024" placeholder="CN=postern,OU=Services,DC=corp,DC=example";
        label for="l-bind-password" { "Bind password" }
        @if editing {
            input #l-bind-password type="password" name="bind_password" value="" maxlength="4096" autocomplete="new-password" aria-describedby="l-password-hint";
            p.hint #l-password-hint { "Stored sealed and never shown. Leave empty to keep the current password." }
        } @else {
            input #l-bind-password type="password" name="bind_password" value="" required maxlength="4096" autocomplete="new-password" aria-describedby="l-password-hint";
            p.hint #l-password-hint { "Stored sealed and never shown again." }
        }
        label for="l-base-dn" { "Base DN" }
        input #l-base-dn.wide type="text" name="base_dn" value=(draft.base_dn) required maxlength="1024" placeholder="DC=corp,DC=example";
        label for="l-user-filter" { "User filter (empty: the default)" }
        input #l-user-filter.wide type="text" name="user_filter" value=(draft.user_filter) maxlength="1024" placeholder=(DEFAULT_USER_FILTER);
        label for="l-group-filter" { "Group filter (empty: the default)" }
        input #l-group-filter.wide type="text" name="group_filter" value=(draft.group_filter) maxlength="1024" placeholder=(DEFAULT_GROUP_FILTER);
        label for="l-interval" { "Sync every (seconds)" }
        input #l-interval type="number" name="interval_secs" value=(draft.interval) min="60" max="86400" step="1" placeholder="300";
        p.hint { "60 seconds to a day; empty: " @if editing { "unchanged" } @else { "300" } "." }
        label for="l-ca" { "CA certificate (PEM, optional)" }
        textarea #l-ca name="ca_certificate" rows="6" maxlength="16384" placeholder="-----BEGIN CERTIFICATE-----" { (draft.ca_certificate) }
        p.hint { "A company CA the server's certificate chains to, besides the system's roots. Empty: the system's roots alone." }
    }
}

// ---------------------------------------------------------------- the list

/// Which form of the list page was refused, with what was typed.
enum Failed<'a> {
    Provider(&'a ProviderDraft),
    Scim(&'a str),
    Ldap(&'a LdapDraft),
}

fn last_sync_summary(d: &Value) -> Markup {
    let sync = &d["last_sync"];
    let skipped = sync["skipped"].as_array().map_or(0, Vec::len);
    html! {
        @if let Some(error) = d["last_error"].as_str() {
            span.offline { "failing" } ": " (error)
        } @else if sync.is_object() {
            span.online { "ok" } ": "
            (sync["users"]["total"].as_u64().unwrap_or(0)) " user(s), "
            (sync["groups"]["total"].as_u64().unwrap_or(0)) " group(s)"
            @if skipped > 0 { "; " (skipped) " entry(ies) skipped" }
        } @else if text(d, "type") == "scim" {
            span.muted { "pushed by the directory" }
        } @else {
            span.muted { "not synced yet" }
        }
    }
}

async fn list_page(c: &Console, failed: Option<(Failed<'_>, &Refusal)>) -> WebResult<Response> {
    let state = || State(c.state.clone());
    let providers = data(api::identity_providers::list(state(), c.admin).await).await?;
    let directories = data(api::directories::list(state(), c.admin).await).await?;
    let refusal = failed.as_ref().map(|(_, r)| *r);
    let error_for = |which: u8| {
        failed.as_ref().and_then(|(f, r)| {
            let n = match f {
                Failed::Provider(_) => 0,
                Failed::Scim(_) => 1,
                Failed::Ldap(_) => 2,
            };
            (n == which).then_some(r.message.as_str())
        })
    };
    let empty_provider = ProviderDraft::default();
    let empty_ldap = LdapDraft::default();
    let (provider_draft, scim_name, ldap_draft) = match &failed {
        Some((Failed::Provider(d), _)) => (*d, "", &empty_ldap),
        Some((Failed::Scim(name), _)) => (&empty_provider, *name, &empty_ldap),
        Some((Failed::Ldap(d), _)) => (&empty_provider, "", *d),
        None => (&empty_provider, "", &empty_ldap),
    };
    let ldap_draft_shown;
    let ldap_draft = if failed.is_none() {
        ldap_draft_shown = LdapDraft {
            interval: "300".into(),
            ..LdapDraft::default()
        };
        &ldap_draft_shown
    } else {
        ldap_draft
    };
    let body = html! {
        p { "People sign in with an email code, or with an OpenID Connect provider added here. A directory keeps users and groups in line with the company's records." }
        h2 { "Identity providers (OpenID Connect)" }
        @if c.state.external_url.is_none() {
            p.error role="alert" { "This portal runs without --external-url: identity providers need it (their callback URL is built from it). Restart the portal with it to add one." }
        }
        @if providers.is_empty() {
            p.muted { "No identity provider yet: people sign in with an email code." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Issuer" } th { "Client ID" } th { "Callback URL to register at the provider" } th { "Actions" } } }
                tbody {
                    @for p in &providers {
                        @let id = text(p, "id");
                        tr {
                            td { a href=(c.href(&format!("/identity/providers/{id}"))) { (text(p, "name")) } }
                            td { code { (text(p, "issuer")) } }
                            td { code { (text(p, "client_id")) } }
                            td { code.copy { (p["redirect_uri"].as_str().unwrap_or("(needs --external-url)")) } }
                            td {
                                a href=(c.href(&format!("/identity/providers/{id}"))) aria-label=(format!("Edit {}", text(p, "name"))) { "Edit" }
                                " · "
                                a href=(c.href(&format!("/identity/providers/{id}/delete"))) aria-label=(format!("Delete {}", text(p, "name"))) { "Delete…" }
                            }
                        }
                    }
                }
            }
        }
        details.add open[providers.is_empty() || error_for(0).is_some()] {
            summary { "Add an OpenID Connect provider" }
            p.hint { "Register Postern as a web application (confidential client, authorization code flow) at the provider for its client ID and secret. The callback URL to register there names the provider's id, so it is shown once the provider is added here." }
            (error_box(error_for(0)))
            form method="post" action=(c.href("/identity/providers")) {
                (c.csrf_field())
                (provider_fields(provider_draft, false))
                div { button type="submit" { "Add the provider" } }
            }
        }

        h2 { "Directories" }
        @if directories.is_empty() {
            p.muted { "No directory yet: admins manage users and groups here." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Type" } th { "Users" } th { "Groups" } th { "Last sync" } th { "State" } th { "Actions" } } }
                tbody {
                    @for d in &directories {
                        @let id = text(d, "id");
                        tr {
                            td { a href=(c.href(&format!("/identity/directories/{id}"))) { (text(d, "name")) } }
                            td { (text(d, "type").to_uppercase()) }
                            td { (d["users"].as_u64().unwrap_or(0)) }
                            td { (d["groups"].as_u64().unwrap_or(0)) }
                            td { @if text(d, "type") == "scim" { span.muted { "—" } } @else { (when(&d["last_sync_at"])) } }
                            td { (last_sync_summary(d)) }
                            td { a href=(c.href(&format!("/identity/directories/{id}/delete"))) aria-label=(format!("Delete {}", text(d, "name"))) { "Delete…" } }
                        }
                    }
                }
            }
        }
        details.add open[error_for(1).is_some()] {
            summary { "Add a SCIM directory (Okta, Microsoft Entra ID, JumpCloud, OneLogin, …)" }
            p.hint { "The directory pushes users and groups to the portal. The next page shows the URL and the token to give it, once." }
            (error_box(error_for(1)))
            (scim_form(c, scim_name))
        }
        details.add open[error_for(2).is_some()] {
            summary { "Add an LDAP or Active Directory server" }
            p.hint { "The portal reads users and groups from it at the interval set, and when you press \"Sync now\"." }
            (error_box(error_for(2)))
            form method="post" action=(c.href("/identity/directories")) {
                (c.csrf_field())
                input type="hidden" name="type" value="ldap";
                (ldap_fields(ldap_draft, false))
                div { button type="submit" { "Add the LDAP directory" } }
            }
        }
    };
    Ok(c.page(
        refused_status(refusal),
        "Sign-in and directories",
        Section::Identity,
        body,
    ))
}

/// `GET /{account}/identity`.
pub async fn list(c: Console) -> WebResult<Response> {
    list_page(&c, None).await
}

// ---------------------------------------------------------------- providers

/// `POST /{account}/identity/providers`: the API's create, then the new
/// provider's page with its callback URL.
pub async fn create_provider(Posted { c, form }: Posted) -> WebResult<Response> {
    let draft = ProviderDraft::of_form(&form);
    let created = submit(draft.create(form.get("client_secret")), async |provider| {
        api::identity_providers::create(State(c.state.clone()), c.admin, Json(provider)).await
    })
    .await;
    match created {
        Ok(p) => Ok(see_other(
            &c.href(&format!("/identity/providers/{}?added", text(&p, "id"))),
        )),
        Err(refusal) => list_page(&c, Some((Failed::Provider(&draft), &refusal))).await,
    }
}

async fn provider_page(
    c: &Console,
    id: &str,
    added: bool,
    refused: Option<(&ProviderDraft, &Refusal)>,
) -> WebResult<Response> {
    let p = provider(c, id).await?;
    let id = text(&p, "id");
    let shown = ProviderDraft::of_provider(&p);
    let draft = refused.map_or(&shown, |(d, _)| d);
    let refusal = refused.map(|(_, r)| r);
    let body = html! {
        @if added {
            p.notice role="status" { "The provider was added. Register the callback URL below at the provider, then people can sign in with it." }
        }
        section.callback aria-labelledby="callback-title" {
            h2 #callback-title { "Callback URL" }
            @if let Some(uri) = p["redirect_uri"].as_str() {
                p { "Register this exact URL at the provider as the redirect URI (also called callback or reply URL) of the client " code { (text(&p, "client_id")) } ":" }
                label for="callback-url" { "Callback URL (select it and copy)" }
                input #callback-url.copy type="text" readonly value=(uri);
            } @else {
                p.error { "This portal runs without --external-url, so the provider has no callback URL: restart the portal with it." }
            }
        }
        h2 { "Settings" }
        p.muted { "Added " (when(&p["created_at"])) ". Changes apply from the next sign-in with it." }
        (error_box(refusal.map(|r| r.message.as_str())))
        form method="post" action=(c.href(&format!("/identity/providers/{id}"))) {
            (c.csrf_field())
            (provider_fields(draft, true))
            div { button type="submit" { "Save the provider" } }
        }
        h2 { "Delete" }
        p { a href=(c.href(&format!("/identity/providers/{id}/delete"))) { "Delete this provider…" } }
    };
    Ok(c.page(
        refused_status(refusal),
        text(&p, "name"),
        Section::Identity,
        body,
    ))
}

/// `GET /{account}/identity/providers/{id}`.
pub async fn show_provider(
    c: Console,
    Path((_, id)): Id,
    RawQuery(query): RawQuery,
) -> WebResult<Response> {
    let added = query.is_some_and(|q| q.split('&').any(|p| p == "added"));
    provider_page(&c, &id, added, None).await
}

/// `POST /{account}/identity/providers/{id}`: the API's patch.
pub async fn update_provider(Path((_, id)): Id, Posted { c, form }: Posted) -> WebResult<Response> {
    let draft = ProviderDraft::of_form(&form);
    let saved = submit(draft.patch(form.get("client_secret")), async |patch| {
        api::identity_providers::update(
            State(c.state.clone()),
            c.admin,
            Path(id.clone()),
            Json(patch),
        )
        .await
    })
    .await;
    match saved {
        Ok(p) => Ok(see_other(
            &c.href(&format!("/identity/providers/{}", text(&p, "id"))),
        )),
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Err(refusal.into()),
        Err(refusal) => provider_page(&c, &id, false, Some((&draft, &refusal))).await,
    }
}

/// `GET /{account}/identity/providers/{id}/delete`: what goes with it.
pub async fn confirm_delete_provider(c: Console, Path((_, id)): Id) -> WebResult<Response> {
    let p = provider(&c, &id).await?;
    let id = text(&p, "id");
    let impact = provider_impact(&c, id).await?;
    let body = html! {
        p { "Deleting " b { (text(&p, "name")) } ":" }
        ul {
            li {
                "People can no longer sign in with it. The " (impact.users) " user(s) who signed in through it keep their Postern accounts"
                @if !impact.user_names.is_empty() { " (" (some_names(&impact.user_names, usize::try_from(impact.users).unwrap_or(0))) ")" }
                ", their roles and the groups admins put them in, but lose their link to it: they sign in again another way (an email code, or another provider that knows their email)."
            }
            li { (impact.tokens) " token(s) from sign-ins with it (client and browser sessions) are revoked at once, and their clients disconnected." }
            li { "The group memberships its groups claim gave are removed. Its " (impact.groups) " group(s) stay, now managed by admins." }
        }
        @if impact.this_session {
            p.error role="alert" { "You signed in to this console through it: this signs you out too." }
        }
        form method="post" action=(c.href(&format!("/identity/providers/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the provider" }
        }
        p { a href=(c.href(&format!("/identity/providers/{id}"))) { "Keep it" } }
    };
    Ok(c.page(
        StatusCode::OK,
        "Delete an identity provider",
        Section::Identity,
        body,
    ))
}

/// `POST /{account}/identity/providers/{id}/delete`.
pub async fn delete_provider(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    deleted(api::identity_providers::remove(State(c.state.clone()), c.admin, Path(id)).await)
        .await?;
    Ok(see_other(&c.href("/identity")))
}

// ---------------------------------------------------------------- directories

/// How to give a SCIM token to the provisioning client.
fn scim_instructions(base_url: &str) -> Markup {
    html! {
        h2 { "Okta" }
        ol {
            li { "Applications → your Postern app (or a new \"SCIM 2.0 Test App (Header Auth)\" from the catalog) → General: enable SCIM provisioning; then Provisioning → Integration → Edit." }
            li { "SCIM connector base URL: " code { (base_url) } "; unique identifier field for users: " code { "userName" } "." }
            li { "Supported provisioning actions: Push New Users, Push Profile Updates, Push Groups." }
            li { "Authentication mode: HTTP Header; Authorization: Bearer, the token above. Test the connector configuration, save." }
            li { "Provisioning → To App: enable Create Users, Update User Attributes and Deactivate Users. Assign people, and add groups under Push Groups." }
        }
        h2 { "Microsoft Entra ID" }
        ol {
            li { "Enterprise applications → New application → Create your own application (non-gallery) → Provisioning → Provisioning mode: Automatic." }
            li { "Admin credentials: Tenant URL " code { (base_url) } ", Secret token: the token above. Test connection, save." }
            li { "Users and groups: assign who should reach Postern; then Start provisioning (Entra pushes about every 40 minutes; \"Provision on demand\" tries one user at once)." }
        }
        p { "Other directories (JumpCloud, OneLogin, …): a SCIM 2.0 app with this base URL and \"Bearer token\" / \"HTTP header\" authentication." }
    }
}

/// The answer to a POST that made a SCIM token: the only time it is shown.
fn token_page(c: &Console, d: &Value, token: &str, rotated: bool) -> Response {
    let id = text(d, "id");
    let base_url = d["scim_base_url"].as_str();
    let body = html! {
        p.notice role="status" {
            "This token is shown once: copy it now. Anyone holding it can create, change and delete the users and groups of "
            b { (text(d, "name")) } "; keep it like a password."
            @if rotated { " The previous token stopped working." }
        }
        label for="scim-token" { "Bearer token" }
        pre #scim-token { (token) }
        label for="scim-base-url" { "SCIM base URL" }
        @if let Some(url) = base_url {
            pre #scim-base-url { (url) }
        } @else {
            p.error { "This portal runs without --external-url, so it cannot say its SCIM URL: it is {external URL}/" (c.account.slug) "/scim/v2." }
        }
        (scim_instructions(base_url.unwrap_or("{external URL}/ACCOUNT/scim/v2")))
        p { a href=(c.href(&format!("/identity/directories/{id}"))) { "To the directory's page" } }
    };
    c.page(
        StatusCode::CREATED,
        if rotated {
            "New SCIM token"
        } else {
            "SCIM directory added"
        },
        Section::Identity,
        body,
    )
}

/// `POST /{account}/identity/directories`: a SCIM directory (its token
/// on the answer page) or an LDAP one (its page).
pub async fn create_directory(Posted { c, form }: Posted) -> WebResult<Response> {
    let create = async |input: api::directories::DirectoryInput| {
        answer(api::directories::create(State(c.state.clone()), c.admin, Json(input)).await).await
    };
    if form.get("type") == "scim" {
        let name = form.get("name");
        let made = match checked::<Name>("name", name)
            .and_then(|()| input(json!({"type": "scim", "name": name})))
        {
            Ok(directory) => create(directory).await,
            Err(error) => Err(Refusal::from(error)),
        };
        return match made {
            Ok(d) => Ok(token_page(&c, &d, text(&d, "token"), false)),
            Err(refusal) => list_page(&c, Some((Failed::Scim(name), &refusal))).await,
        };
    }
    let draft = LdapDraft::of_form(&form);
    let made = match draft.create(form.get("bind_password")) {
        Ok(directory) => create(directory).await,
        Err(error) => Err(Refusal::from(error)),
    };
    match made {
        Ok(d) => Ok(see_other(
            &c.href(&format!("/identity/directories/{}", text(&d, "id"))),
        )),
        Err(refusal) => list_page(&c, Some((Failed::Ldap(&draft), &refusal))).await,
    }
}

/// What happened on the directory's page: a sync's result, or a refusal
/// with what was typed.
enum Outcome<'a> {
    Shown,
    Synced,
    SyncFailed(&'a Refusal),
    Refused(&'a Refusal, &'a LdapDraft),
}

fn sync_details(d: &Value) -> Markup {
    let sync = &d["last_sync"];
    let skipped: Vec<&str> = sync["skipped"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        @if sync.is_object() {
            table {
                thead { tr { th { "Last good sync" } th { "In the directory" } th { "Created" } th { "Updated" } th { "Deleted" } } }
                tbody {
                    @for (label, what) in [("Users", "users"), ("Groups", "groups")] {
                        tr {
                            td { (label) }
                            @for n in ["total", "created", "updated", "deleted"] {
                                td { (sync[what][n].as_u64().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
            @if !skipped.is_empty() {
                h3 { "Skipped entries (" (skipped.len()) ")" }
                p.hint { "Left as they were (a name or email another user or group holds); everything else was applied." }
                ul.skipped { @for entry in &skipped { li { code { (entry) } } } }
            }
        }
    }
}

async fn directory_page(c: &Console, id: &str, outcome: Outcome<'_>) -> WebResult<Response> {
    let d = directory(c, id).await?;
    let id = text(&d, "id");
    let ldap = text(&d, "type") == "ldap";
    let users = directory_names(c, id, Owned::Users).await?;
    let groups = directory_names(c, id, Owned::Groups).await?;
    let shown = LdapDraft::of_directory(&d);
    let (draft, refusal) = match &outcome {
        Outcome::Refused(r, draft) => (*draft, Some(*r)),
        _ => (&shown, None),
    };
    let status = match &outcome {
        Outcome::SyncFailed(r) if r.status == StatusCode::BAD_GATEWAY => StatusCode::BAD_GATEWAY,
        Outcome::SyncFailed(r) => refused_status(Some(r)),
        _ => refused_status(refusal),
    };
    let body = html! {
        @match &outcome {
            Outcome::Synced => { p.notice role="status" { "Synced: what it did is below." } }
            Outcome::SyncFailed(r) => {
                p.error role="alert" { "The sync failed and changed nothing: " (r.message) }
            }
            _ => {}
        }
        p {
            (if ldap { "LDAP directory: the portal reads it." } else { "SCIM directory: it pushes its changes to the portal." })
            " Added " (when(&d["created_at"])) ". It provisioned "
            (d["users"].as_u64().unwrap_or(0)) " user(s) and " (d["groups"].as_u64().unwrap_or(0)) " group(s)."
        }
        @if !users.is_empty() {
            p { "Users: " (some_names(&users, usize::try_from(d["users"].as_u64().unwrap_or(0)).unwrap_or(0))) " (see " a href=(c.href("/actors")) { "Users" } ")." }
        }
        @if !groups.is_empty() {
            p { "Groups: " (some_names(&groups, usize::try_from(d["groups"].as_u64().unwrap_or(0)).unwrap_or(0))) " (see " a href=(c.href("/groups")) { "Groups" } ")." }
        }
        @if ldap {
            h2 { "Sync" }
            p { "Last sync attempt: " (when(&d["last_sync_at"])) ". The portal syncs every " (d["ldap"]["interval_secs"].as_u64().unwrap_or(0)) " seconds." }
            @if let (Some(error), false) = (d["last_error"].as_str(), matches!(outcome, Outcome::SyncFailed(_))) {
                p.error { "The last sync failed and changed nothing: " (error) }
            }
            (sync_details(&d))
            form method="post" action=(c.href(&format!("/identity/directories/{id}/sync"))) {
                (c.csrf_field())
                button type="submit" { "Sync now" }
            }
        } @else {
            h2 { "SCIM connection" }
            @if let Some(url) = d["scim_base_url"].as_str() {
                label for="scim-base-url" { "SCIM base URL" }
                input #scim-base-url.copy type="text" readonly value=(url);
            } @else {
                p.error { "This portal runs without --external-url, so it cannot say its SCIM URL." }
            }
            p { "The token was shown once, when it was made. A lost or leaked token is replaced here: the current one stops working at once, so put the new one in the directory's SCIM app right away." }
            form method="post" action=(c.href(&format!("/identity/directories/{id}/token"))) {
                (c.csrf_field())
                button type="submit" { "Make a new token (the current one stops working)" }
            }
        }
        h2 { "Settings" }
        (error_box(refusal.map(|r| r.message.as_str())))
        form method="post" action=(c.href(&format!("/identity/directories/{id}"))) {
            (c.csrf_field())
            @if ldap {
                (ldap_fields(draft, true))
            } @else {
                label for="d-name" { "Name" }
                input #d-name type="text" name="name" value=(draft.name) required maxlength="255";
            }
            div { button type="submit" { "Save the directory" } }
        }
        h2 { "Delete" }
        p { a href=(c.href(&format!("/identity/directories/{id}/delete"))) { "Delete this directory…" } }
    };
    Ok(c.page(status, text(&d, "name"), Section::Identity, body))
}

/// `GET /{account}/identity/directories/{id}`.
pub async fn show_directory(c: Console, Path((_, id)): Id) -> WebResult<Response> {
    directory_page(&c, &id, Outcome::Shown).await
}

/// `POST /{account}/identity/directories/{id}`: the API's patch (the name
/// alone for a SCIM directory).
pub async fn update_directory(
    Path((_, id)): Id,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let d = directory(&c, &id).await?;
    let draft = if text(&d, "type") == "ldap" {
        LdapDraft::of_form(&form)
    } else {
        LdapDraft {
            name: form.get("name").into(),
            ..LdapDraft::default()
        }
    };
    let patch = if text(&d, "type") == "ldap" {
        draft.patch(form.get("bind_password"))
    } else {
        checked::<Name>("name", &draft.name).and_then(|()| input(json!({"name": draft.name})))
    };
    let saved = submit(patch, async |patch| {
        api::directories::update(
            State(c.state.clone()),
            c.admin,
            Path(id.clone()),
            Json(patch),
        )
        .await
    })
    .await;
    match saved {
        Ok(d) => Ok(see_other(
            &c.href(&format!("/identity/directories/{}", text(&d, "id"))),
        )),
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Err(refusal.into()),
        Err(refusal) => directory_page(&c, &id, Outcome::Refused(&refusal, &draft)).await,
    }
}

/// `POST /{account}/identity/directories/{id}/token`: a new SCIM token,
/// shown once; the old one stops working.
pub async fn rotate_token(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    let d = directory(&c, &id).await?;
    let minted = answer(
        api::directories::rotate_token(
            State(c.state.clone()),
            c.admin,
            Path(text(&d, "id").to_string()),
        )
        .await,
    )
    .await?;
    Ok(token_page(&c, &d, text(&minted, "token"), true))
}

/// `POST /{account}/identity/directories/{id}/sync`: syncs now and shows
/// what it did, or why it could not (the API's 502).
pub async fn sync(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    let synced =
        answer(api::directories::sync(State(c.state.clone()), c.admin, Path(id.clone())).await)
            .await;
    match synced {
        Ok(_) => directory_page(&c, &id, Outcome::Synced).await,
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Err(refusal.into()),
        Err(refusal) => directory_page(&c, &id, Outcome::SyncFailed(&refusal)).await,
    }
}

/// `GET /{account}/identity/directories/{id}/delete`: what goes (nothing
/// it provisioned: its users and groups are released to the admins).
pub async fn confirm_delete_directory(c: Console, Path((_, id)): Id) -> WebResult<Response> {
    let d = directory(&c, &id).await?;
    let id = text(&d, "id");
    let users = d["users"].as_u64().unwrap_or(0);
    let groups = d["groups"].as_u64().unwrap_or(0);
    let names = directory_names(&c, id, Owned::Users).await?;
    let body = html! {
        p { "Deleting " b { (text(&d, "name")) } " removes the connection only:" }
        ul {
            li {
                "Its " (users) " user(s) and " (groups) " group(s) stay as they are, released to the admins: from then on admins change and delete them here, and the directory no longer can."
                @if !names.is_empty() { " Users: " (some_names(&names, usize::try_from(users).unwrap_or(0))) "." }
            }
            @if text(&d, "type") == "scim" {
                li { "Its SCIM token stops working: the provisioning app's requests are refused from then on." }
            } @else {
                li { "The portal stops syncing it; the sealed bind password is deleted." }
            }
            li { "Nobody loses access or is signed out by this: people who later leave the company must then be disabled here by hand." }
        }
        form method="post" action=(c.href(&format!("/identity/directories/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the directory" }
        }
        p { a href=(c.href(&format!("/identity/directories/{id}"))) { "Keep it" } }
    };
    Ok(c.page(
        StatusCode::OK,
        "Delete a directory",
        Section::Identity,
        body,
    ))
}

/// `POST /{account}/identity/directories/{id}/delete`.
pub async fn delete_directory(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    deleted(api::directories::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/identity")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_secret_is_left_out_of_the_patch() {
        let draft = ProviderDraft {
            name: "Keycloak".into(),
            issuer: "https://id.example.com".into(),
            client_id: "postern".into(),
            ..ProviderDraft::default()
        };
        assert!(draft.patch("").unwrap().client_secret.is_none());
        assert!(draft.patch("new").unwrap().client_secret.is_some());
        assert!(
            draft
                .create("")
                .err()
                .is_some_and(|e| e.starts_with("client_secret:"))
        );
        assert!(seconds("x", "abc").is_err());
        assert_eq!(seconds("x", " ").unwrap(), None);
    }
}

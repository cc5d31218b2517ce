//! The portal's objects as the API shows them and the store keeps them: the
//! nouns. `impact` holds what a change affects, which every front end must
//! tell continuous evaluation alike; who may see what lives with the code
//! that applies it (`channels`).

pub mod address;
pub mod impact;

use jiff::Timestamp;
use postern_model::{Condition, Filter, ResourceType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Milliseconds since the Unix epoch, as the store keeps times.
pub fn to_millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
    ServiceAccount,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::ServiceAccount => "service_account",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            "service_account" => Some(Role::ServiceAccount),
            _ => None,
        }
    }

    /// Users and admins belong to `Everyone`; service accounts do not.
    pub fn in_everyone(self) -> bool {
        self != Role::ServiceAccount
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Actor {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub role: Role,
    pub disabled: bool,
    /// The directory that provisioned this actor and alone changes its name,
    /// email, enabled state and memberships; none when admins manage it.
    pub directory_id: Option<Uuid>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Members set by admins (or later by a directory).
    Static,
    /// Every user and admin of the account, implicitly.
    Everyone,
    /// Created by an identity provider's groups claim; its members follow
    /// the claim at each sign-in.
    Provider,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
    pub kind: GroupKind,
    /// The directory that provisioned this group and alone changes its name
    /// and members; none when admins manage it.
    pub directory_id: Option<Uuid>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Site {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Resource {
    pub id: Uuid,
    pub site_id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "cidr")]
    pub kind: ResourceType,
    pub address: Option<String>,
    pub address_description: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub filters: Vec<Filter>,
    /// The internet resource's exclusions: prefixes its clients keep on
    /// their own path (empty for other resources).
    #[schema(value_type = Vec<String>, example = json!(["198.51.100.0/24"]))]
    pub exclusions: Vec<ipnet::IpNet>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PolicyRecord {
    pub id: Uuid,
    pub group_id: Uuid,
    pub resource_id: Uuid,
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<Condition>,
    pub description: String,
    pub disabled: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// REST API access for an admin.
    Api,
    /// A client device's channel, for a user or service account.
    Client,
    /// Gateways of one site.
    Gateway,
    /// A relay registering with the portal (no account).
    Relay,
    /// A web session (the cookie): an admin's console or a user's own page.
    Browser,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Client => "client",
            TokenKind::Gateway => "gateway",
            TokenKind::Relay => "relay",
            TokenKind::Browser => "browser",
        }
    }

    pub fn parse(text: &str) -> Option<TokenKind> {
        match text {
            "api" => Some(TokenKind::Api),
            "client" => Some(TokenKind::Client),
            "gateway" => Some(TokenKind::Gateway),
            "relay" => Some(TokenKind::Relay),
            "browser" => Some(TokenKind::Browser),
            _ => None,
        }
    }
}

/// A token row without its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub account_id: Option<Uuid>,
    pub kind: TokenKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub identity_provider_id: Option<Uuid>,
    pub expires_at: Option<Timestamp>,
    /// An API token with only the `read` scope: no changes.
    pub read_only: bool,
}

/// A freshly minted token (`auth::token::mint`): what the user gets once,
/// and the salt and hash the store keeps. A noun here so that the store can
/// keep it without importing `auth`, which sits above the store.
#[derive(Debug)]
pub struct MintedToken {
    pub id: Uuid,
    /// The whole token, shown once; for a client sign-in only the fragment
    /// (`auth::token::mint_client`).
    pub token: String,
    pub salt: String,
    pub hash: String,
}

/// An OpenID Connect provider users of an account sign in with.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityProvider {
    pub id: Uuid,
    pub name: String,
    /// The issuer URL; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// AES-256-GCM sealed (`crate::secrets`); never shown.
    pub sealed_client_secret: String,
    /// The claim holding group names (an array of strings).
    pub groups_claim: Option<String>,
    /// The claim that makes the user an admin when it is JSON `true` or the
    /// string `"true"` (any case), or holds `admin_claim_value`; set, it
    /// decides the role at each sign-in.
    pub admin_claim: Option<String>,
    /// A value of `admin_claim` that means admin too (a string equal to it,
    /// or a list of strings holding it, such as a roles claim).
    pub admin_claim_value: Option<String>,
    /// Whether an identity no user matches, with a verified email, becomes
    /// a user at its first sign-in.
    pub provision_users: bool,
    /// How long a client token from a sign-in with this provider lives.
    pub client_session_lifetime_secs: Option<i64>,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Client,
    Gateway,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Client => "client",
            DeviceKind::Gateway => "gateway",
        }
    }
}

/// A client or gateway with its stable tunnel addresses.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub kind: DeviceKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    /// The id the device chose for itself (stable per installation).
    pub device_id: String,
    pub name: String,
    pub os: Option<String>,
    pub version: Option<String>,
    #[schema(value_type = String, example = "100.64.0.1")]
    pub ipv4: std::net::Ipv4Addr,
    #[schema(value_type = String, example = "fd7e:5057:6e00::1")]
    pub ipv6: std::net::Ipv6Addr,
    pub verified: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<Timestamp>,
    pub last_seen_ip: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AuditEntry {
    pub cursor: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    /// The directory that made the change (a SCIM request or an LDAP sync).
    pub directory_id: Option<Uuid>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// How a directory reaches the portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DirectoryKind {
    /// The directory pushes users and groups to the portal's SCIM 2.0
    /// endpoint with its bearer token (Okta, Microsoft Entra, ...).
    Scim,
    /// The portal pulls users and groups from an LDAP server (OpenLDAP,
    /// Active Directory).
    Ldap,
}

impl DirectoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryKind::Scim => "scim",
            DirectoryKind::Ldap => "ldap",
        }
    }
}

/// A directory and what the last sync did (LDAP).
#[derive(Clone, Debug, PartialEq)]
pub struct Directory {
    pub id: Uuid,
    pub name: String,
    pub kind: DirectoryKind,
    /// LDAP: the connection (`directory::ldap::Settings`, its bind password
    /// sealed); SCIM: an empty object.
    pub settings: serde_json::Value,
    pub last_sync_at: Option<Timestamp>,
    /// Counts of what the last sync created, changed and removed.
    pub last_sync: Option<serde_json::Value>,
    /// Why the last sync failed (none after a success).
    pub last_error: Option<String>,
    pub created_at: Timestamp,
}

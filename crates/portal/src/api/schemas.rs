//! JSON Schemas the derive cannot write: shapes that depend on a field's
//! value (a resource's address on its type, a condition's values on its
//! property, an ICMP filter without ports), and formats of our own.
//!
//! Formats of our own (named in the document; a client generator that does
//! not know one treats it as a plain string, and schemathesis is taught them
//! in `crates/portal/tests/schemathesis/hooks.py`):
//! - `resource-cidr`: an IPv4 or IPv6 prefix a resource may cover (not
//!   loopback, unspecified, multicast, link-local or the tunnel's ranges);
//! - `resource-ip`: one such address;
//! - `dns-pattern`: a DNS name, `*.` (any labels) or `?.` (one label) before it;
//! - `ip-or-cidr`: any address or prefix; `exclusion`: one with a prefix length;
//! - `port-range`: `22` or `8000-8080`, ports 1-65535, low first;
//! - `port-list` (declarations): 1-8 port ranges separated by commas;
//! - `time-window`: `MTWRF/08:00-18:00/Europe/Berlin` (days of `MTWRFSU`, an
//!   IANA zone);
//! - `ldap-url`: `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`, nothing more;
//! - `pem-certificates`: one or more PEM certificates;
//! - `issuer-url`: an `https` URL without query, fragment or user, not on
//!   loopback or link-local addresses (plain http and loopback only on a
//!   portal whose `--external-url` is on loopback).

use std::borrow::Cow;

use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use postern_model::resource::MAX_EXCLUSIONS;

use super::fields::{ADDRESS_DESCRIPTION, DN, LDAP_FILTER, NAME, PASSWORD, SPACE, json_schema};
use super::fields::{MAX_CONDITIONS, MAX_FILTERS, MAX_PEM_CHARS, MAX_SESSION_SECS};
use super::resources::{ResourceInput, ResourcePatch};

fn nullable(schema: Value) -> Value {
    json!({"oneOf": [schema, {"type": "null"}]})
}

fn filter_items(ports: &str) -> Value {
    json!({"oneOf": [
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["protocol"],
            "properties": {
                "protocol": {"type": "string", "enum": ["tcp", "udp"]},
                "ports": {"type": ["string", "null"], "format": ports,
                          "description": "`22` or `8000-8080` (in a declaration also a list: `80,443`); none means every port.",
                          "example": "8000-8080"},
            },
        },
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["protocol"],
            "properties": {
                "protocol": {"type": "string", "enum": ["icmp"]},
                "ports": {"type": "null"},
            },
            "description": "ICMP and ICMPv6; no ports.",
        },
    ]})
}

fn filters_value(ports: &str) -> Value {
    json!({
        "type": "array",
        "maxItems": MAX_FILTERS,
        "items": filter_items(ports),
        "description": "What traffic the resource lets through; none means all.",
        "example": [{"protocol": "tcp", "ports": "443"}, {"protocol": "icmp"}],
    })
}

fn condition(property: &str, values: Value, about: &str) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["property", "values"],
        "description": about,
        "properties": {
            "property": {"type": "string", "enum": [property]},
            "operator": {"type": "string", "enum": ["in", "not_in"],
                         "description": "`in` (the default) or `not_in`."},
            "values": {"type": "array", "minItems": 1, "items": values},
        },
    })
}

fn conditions_value() -> Value {
    let trimmed = |core: &str| format!("^[{SPACE}]*{core}[{SPACE}]*$");
    json!({
        "type": "array",
        "maxItems": MAX_CONDITIONS,
        "description": "All must hold for the policy to grant access.",
        "example": [{"property": "time", "operator": "in", "values": ["MTWRF/08:00-18:00/UTC"]}],
        "items": {"oneOf": [
            condition("remote_ip", json!({"type": "string", "format": "ip-or-cidr"}),
                "The address the client reaches the portal from."),
            condition("country", json!({"type": "string", "pattern": trimmed("[A-Za-z]{2}")}),
                "The ISO 3166 country of that address."),
            condition("time", json!({"type": "string", "format": "time-window"}),
                "Weekday and time-of-day windows in an IANA time zone."),
            condition("identity_provider", json!({"type": "string", "format": "uuid"}),
                "The identity provider the client signed in with (its id)."),
            condition("client_verified", json!({"type": "string",
                "pattern": trimmed("([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])")}),
                "`true` or `false`: whether an admin verified the client."),
            condition("client_os", json!({"type": "string", "pattern": format!("[^{SPACE}]")}),
                "The operating system the client reports (`linux`, ...)."),
        ]},
    })
}

pub fn conditions() -> Schema {
    json_schema(conditions_value())
}

pub fn conditions_or_null() -> Schema {
    json_schema(nullable(conditions_value()))
}

fn issuer_value() -> Value {
    json!({"type": "string", "format": "issuer-url",
           "example": "https://idp.example.com/realms/acme",
           "description": "The provider's issuer URL (its discovery document is below it)."})
}

pub fn issuer() -> Schema {
    json_schema(issuer_value())
}

pub fn issuer_or_null() -> Schema {
    json_schema(nullable(issuer_value()))
}

pub fn session_lifetime() -> Schema {
    json_schema(json!({
        "type": ["integer", "null"],
        "minimum": 0,
        "maximum": MAX_SESSION_SECS,
        "description": "Seconds a client stays signed in (at most a year). 0: the default, 7 days; none: the default on create, unchanged on a patch.",
    }))
}

fn rule_value(rule: &super::fields::Rule, about: &str) -> Value {
    serde_json::to_value(rule.schema(about)).expect("schemas serialize")
}

/// One object schema per resource type, each complete (a tagged union on
/// `type`): the address (and exclusions) a type takes depend on it. A patch
/// has one more: no `type`, where the address must fit the stored one (409
/// if it does not) and every field may be null (unchanged).
/// How resources are written: as the API takes them, as a patch, or in a
/// declaration (`/config`: the site by name, port lists in filters).
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Input,
    Patch,
    Declared,
}

fn resource_variants(shape: Shape) -> Vec<Value> {
    let patch = shape == Shape::Patch;
    let declared = shape == Shape::Declared;
    let ports = if declared { "port-list" } else { "port-range" };
    let site = if declared { "site" } else { "site_id" };
    let maybe = |schema: Value| if patch { nullable(schema) } else { schema };
    let list = if patch {
        json!(["array", "null"])
    } else {
        json!("array")
    };
    let blank = json!({"anyOf": [
        {"type": "null"},
        {"type": "string", "pattern": format!("^[{SPACE}]*$")},
    ]});
    // An enum rather than `maxItems: 0`: schemathesis's coverage phase
    // ignores a zero maximum inside a union.
    let no_exclusions = if patch {
        json!({"enum": [[], null], "description": "Only the internet resource has exclusions."})
    } else {
        json!({"enum": [[]], "description": "Only the internet resource has exclusions."})
    };
    let common = |kind: Value, address: Value, exclusions: Value| {
        let mut properties = json!({
            "name": maybe(rule_value(&NAME, "A display name, unique in the account.")),
            "type": kind,
            "address": address,
            "filters": maybe(filters_value(ports)),
            "address_description": nullable(rule_value(&ADDRESS_DESCRIPTION,
                "What the address means to people; an empty string removes it.")),
            "exclusions": exclusions,
        });
        properties[site] = maybe(if declared {
            rule_value(&NAME, "The site's name.")
        } else {
            json!({"type": "string", "format": "uuid"})
        });
        properties
    };
    let variant = |kind: &str, address: Value, exclusions: Value, needs_address: bool| {
        let mut required = vec!["type"];
        if needs_address {
            required.push("address");
        }
        if !patch {
            required.extend(["name", site]);
        }
        json!({
            "type": "object",
            "title": kind,
            "additionalProperties": false,
            "required": required,
            "properties": common(json!({"type": "string", "enum": [kind]}), address, exclusions),
        })
    };
    let mut variants = vec![
        variant(
            "cidr",
            json!({"type": "string", "format": "resource-cidr", "example": "10.0.1.0/24"}),
            no_exclusions.clone(),
            true,
        ),
        variant(
            "ip",
            json!({"type": "string", "format": "resource-ip", "example": "10.0.1.5"}),
            no_exclusions.clone(),
            true,
        ),
        variant(
            "dns",
            json!({"type": "string", "format": "dns-pattern", "example": "*.corp.example"}),
            no_exclusions,
            true,
        ),
        variant(
            "internet",
            blank,
            json!({
                "type": list,
                "maxItems": MAX_EXCLUSIONS,
                "items": {"type": "string", "format": "exclusion"},
                "example": ["198.51.100.0/24"],
            }),
            false,
        ),
    ];
    if patch {
        variants.push(json!({
            "type": "object",
            "title": "same type",
            "additionalProperties": false,
            "properties": common(
                json!({"type": "null"}),
                json!({"anyOf": [
                    {"type": "null"},
                    {"type": "string", "format": "resource-cidr"},
                    {"type": "string", "format": "resource-ip"},
                    {"type": "string", "format": "dns-pattern"},
                    {"type": "string", "pattern": format!("^[{SPACE}]*$")},
                ], "description": "Must fit the stored type (409 if not); blank only for the internet resource."}),
                json!({"type": ["array", "null"], "items": {"type": "string", "format": "exclusion"},
                       "maxItems": MAX_EXCLUSIONS,
                       "description": "Only for the internet resource."}),
            ),
        }));
    }
    variants
}

impl utoipa::PartialSchema for ResourceInput {
    fn schema() -> RefOr<Schema> {
        RefOr::T(json_schema(
            json!({"oneOf": resource_variants(Shape::Input)}),
        ))
    }
}

impl utoipa::ToSchema for ResourceInput {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ResourceInput")
    }
}

impl utoipa::PartialSchema for ResourcePatch {
    fn schema() -> RefOr<Schema> {
        RefOr::T(json_schema(
            json!({"oneOf": resource_variants(Shape::Patch)}),
        ))
    }
}

impl utoipa::ToSchema for ResourcePatch {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ResourcePatch")
    }
}

/// A declaration's resources (`/config`).
pub fn declared_resources() -> Schema {
    json_schema(json!({
        "type": "array",
        "items": {"oneOf": resource_variants(Shape::Declared)},
    }))
}

fn ldap_url_value() -> Value {
    json!({
        "type": "string",
        "format": "ldap-url",
        "maxLength": 2048,
        "description": "`ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]` (no path, query or user).",
        "example": "ldaps://ldap.example.com",
    })
}

pub fn ldap_url_or_null() -> Schema {
    json_schema(nullable(ldap_url_value()))
}

fn interval_value() -> Value {
    json!({
        "type": ["integer", "null"],
        "minimum": super::fields::MIN_SYNC_INTERVAL_SECS,
        "maximum": super::fields::MAX_SYNC_INTERVAL_SECS,
        "description": "Seconds between two syncs (default 300); none: the default on create, unchanged on a patch.",
    })
}

pub fn sync_interval_or_null() -> Schema {
    json_schema(interval_value())
}

fn blank() -> Value {
    json!({"type": "string", "pattern": format!("^[{SPACE}]*$")})
}

fn pem_value() -> Value {
    json!({
        "type": "string",
        "format": "pem-certificates",
        "maxLength": MAX_PEM_CHARS,
        "description": "PEM certificates to trust for the LDAP server besides the system's roots (a company CA).",
    })
}

pub fn ldap_filter_or_empty() -> Schema {
    json_schema(json!({"anyOf": [
        rule_value(&LDAP_FILTER, "An LDAP search filter in parentheses."),
        blank(),
        {"type": "null"},
    ], "description": "An LDAP search filter; an empty string goes back to the default."}))
}

/// `{"type": "scim", "name"}` or an LDAP connection.
pub fn directory_input() -> Schema {
    let name = rule_value(&NAME, "A display name, unique in the account.");
    let filter = |what: &str| {
        nullable(rule_value(
            &LDAP_FILTER,
            &format!(
                "The LDAP filter {what} are found by (a default for OpenLDAP and Active Directory when none)."
            ),
        ))
    };
    json_schema(json!({"oneOf": [
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["type", "name"],
            "description": "A SCIM 2.0 directory: the answer carries its token and base URL.",
            "properties": {
                "type": {"type": "string", "enum": ["scim"]},
                "name": name,
            },
        },
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["type", "name", "url", "bind_dn", "bind_password", "base_dn"],
            "description": "An LDAP directory the portal pulls users and groups from.",
            "properties": {
                "type": {"type": "string", "enum": ["ldap"]},
                "name": name,
                "url": ldap_url_value(),
                "bind_dn": rule_value(&DN, "The DN the portal binds as."),
                "bind_password": rule_value(&PASSWORD, "Its password (stored sealed, never shown)."),
                "base_dn": rule_value(&DN, "Where users and groups are searched."),
                "user_filter": filter("users"),
                "group_filter": filter("groups"),
                "interval_secs": interval_value(),
                "starttls": {"type": "boolean", "description": "Upgrade ldap:// with StartTLS."},
                "ca_certificate": {"anyOf": [pem_value(), blank(), {"type": "null"}],
                    "description": "PEM certificates to trust besides the system's roots (a company CA)."},
            },
        },
    ]}))
}

pub fn pem_or_empty() -> Schema {
    json_schema(json!({"anyOf": [pem_value(), blank(), {"type": "null"}],
        "description": "PEM certificates to trust; an empty string trusts the system's roots alone."}))
}

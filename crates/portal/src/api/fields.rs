//! Request fields whose type states their rule once: the same pattern and
//! length check the value on the way in and appear in the OpenAPI document,
//! so the document and the server agree both ways (issue 21). A value that
//! breaks the rule fails deserialization: a 422 naming the field.
//!
//! Patterns are written in the common subset of ECMA-262 (JSON Schema), the
//! `regex` crate and Python's `re` (what schemathesis generates from):
//! explicit classes, `\xHH` and `\uHHHH` escapes, no `\s` or `\p{..}`.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

/// Control characters (Unicode category Cc, Rust's `char::is_control`).
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// White space as `str::trim` removes it (Unicode White_Space).
pub const SPACE: &str = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters and white space (Rust's `char::is_whitespace`, what
/// `str::trim` removes): a class of either.
const CONTROL_OR_SPACE: &str =
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

// The API's limits, shared by the handlers that enforce them and the
// schemas that state them.
/// Longest client session a provider may grant (a year).
pub const MAX_SESSION_SECS: i64 = 365 * 24 * 3600;
/// Conditions a policy may hold: they travel in every authorization.
pub const MAX_CONDITIONS: usize = 32;
/// Filters travel in every authorization; keep them a list, not a novel.
pub const MAX_FILTERS: usize = 32;
/// Shortest and longest time between two syncs of an LDAP directory.
pub const MIN_SYNC_INTERVAL_SECS: u64 = 60;
pub const MAX_SYNC_INTERVAL_SECS: u64 = 86_400;
/// Longest PEM text a directory's `ca_certificate` takes: a company CA
/// chain fits, and a request at the limit stays under the body limit even
/// with every character JSON-escaped (the schema and the body limit agree).
pub const MAX_PEM_CHARS: usize = 16_384;

/// How a field's text is checked and kept.
pub struct Rule {
    pub pattern: String,
    pub max_chars: usize,
    /// What the caller is told when the value breaks the rule.
    pub explain: &'static str,
    regex: Regex,
}

impl Rule {
    fn new(pattern: String, max_chars: usize, explain: &'static str) -> Rule {
        let regex = Regex::new(&pattern).expect("field patterns are valid");
        Rule {
            pattern,
            max_chars,
            explain,
            regex,
        }
    }

    pub fn accepts(&self, value: &str) -> bool {
        value.chars().count() <= self.max_chars && self.regex.is_match(value)
    }

    /// The JSON Schema of a string under this rule.
    pub fn schema(&self, description: &str) -> Schema {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(self.pattern.clone()))
            .max_length(Some(self.max_chars))
            .description(Some(description))
            .into()
    }
}

/// Some text with at least one character that is not white space, and no
/// control characters (surrounding white space is trimmed away).
fn non_blank(max_chars: usize, explain: &'static str) -> Rule {
    Rule::new(
        format!("^[^{CONTROL}]*[^{CONTROL_OR_SPACE}][^{CONTROL}]*$"),
        max_chars,
        explain,
    )
}

/// Text without control characters; may be empty.
fn plain(max_chars: usize, explain: &'static str) -> Rule {
    Rule::new(format!("^[^{CONTROL}]*$"), max_chars, explain)
}

pub static NAME: LazyLock<Rule> = LazyLock::new(|| {
    non_blank(
        255,
        "must be 1-255 characters, not only spaces, without control characters",
    )
});

/// One `@`, a dotted domain after it, no spaces or control characters
/// (around it, spaces are trimmed away).
pub static EMAIL: LazyLock<Rule> = LazyLock::new(|| {
    let part = format!("[^@.{CONTROL_OR_SPACE}]+");
    Rule::new(
        format!("^[{SPACE}]*[^@{CONTROL_OR_SPACE}]+@{part}(\\.{part})+[{SPACE}]*$"),
        254,
        "must be an email address like alice@example.com (at most 254 characters)",
    )
});

/// `corp.example`: labels of letters, digits, `_` and inner hyphens, 1-63
/// long; at most 253 characters with an optional final dot.
pub static DNS_NAME: LazyLock<Rule> = LazyLock::new(|| {
    let label = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";
    Rule::new(
        format!("^[{SPACE}]*({label}\\.)*{label}\\.?[{SPACE}]*$"),
        253,
        "must be a DNS name like corp.example (labels of letters, digits and hyphens)",
    )
});

/// Free text over lines: tabs and line breaks are fine, other control
/// characters not.
pub static POLICY_DESCRIPTION: LazyLock<Rule> = LazyLock::new(|| {
    Rule::new(
        r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$".to_string(),
        1024,
        "must be at most 1024 characters without control characters (but tabs and line breaks)",
    )
});

/// A group member in a declaration: an email or a service account's name.
pub static MEMBER: LazyLock<Rule> = LazyLock::new(|| {
    non_blank(
        255,
        "must be an email or a service account's name (1-255 characters)",
    )
});

pub static ADDRESS_DESCRIPTION: LazyLock<Rule> = LazyLock::new(|| {
    plain(
        512,
        "must be at most 512 characters without control characters",
    )
});

pub static CLIENT_ID: LazyLock<Rule> = LazyLock::new(|| {
    non_blank(
        512,
        "must be 1-512 characters, not only spaces, without control characters",
    )
});

pub static CLIENT_SECRET: LazyLock<Rule> = LazyLock::new(|| {
    non_blank(
        4096,
        "must be 1-4096 characters, not only spaces, without control characters",
    )
});

/// A claim name; empty (or spaces) clears it.
pub static CLAIM: LazyLock<Rule> = LazyLock::new(|| {
    plain(
        128,
        "must be at most 128 characters without control characters",
    )
});

/// An LDAP distinguished name (`cn=admin,dc=example,dc=com`).
pub static DN: LazyLock<Rule> = LazyLock::new(|| {
    non_blank(
        1024,
        "must be a distinguished name of 1-1024 characters without control characters",
    )
});

/// An LDAP search filter: parenthesized (`(objectClass=person)`).
pub static LDAP_FILTER: LazyLock<Rule> = LazyLock::new(|| {
    Rule::new(
        format!("^[{SPACE}]*\\([^{CONTROL}]*\\)[{SPACE}]*$"),
        1024,
        "must be an LDAP filter in parentheses, at most 1024 characters, without control \
         characters",
    )
});

/// A password, kept as given (spaces count).
pub static PASSWORD: LazyLock<Rule> = LazyLock::new(|| {
    Rule::new(
        format!("^[^{CONTROL}]+$"),
        4096,
        "must be 1-4096 characters without control characters",
    )
});

/// Declares a string newtype checked by a rule on the way in.
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $rule:ident, $keep:expr, $describe:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                if !$rule.accepts(&text) {
                    return Err(serde::de::Error::custom($rule.explain));
                }
                let keep: fn(&str) -> String = $keep;
                Ok($name(keep(&text)))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T($rule.schema($describe))
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

fn trimmed(text: &str) -> String {
    text.trim().to_string()
}

checked_text!(
    /// A display name (trimmed).
    Name, NAME, trimmed,
    "A display name: 1-255 characters, not only spaces, no control characters; trimmed."
);
checked_text!(
    /// An email address, kept in lower case.
    Email, EMAIL, |text| text.trim().to_ascii_lowercase(),
    "An email address (compared and kept in lower case)."
);
checked_text!(
    /// A DNS name, kept in lower case without a final dot.
    DnsName, DNS_NAME, |text| text.trim().trim_end_matches('.').to_ascii_lowercase(),
    "A DNS name like corp.example, kept in lower case without a final dot."
);
checked_text!(
    /// A group member in a declaration (trimmed).
    Member, MEMBER, trimmed,
    "A user's or admin's email, or a service account's name."
);
checked_text!(
    /// A policy's description (trimmed, may be empty).
    PolicyDescription, POLICY_DESCRIPTION, trimmed,
    "Free text, at most 1024 characters, no control characters but tabs and line breaks; trimmed."
);
checked_text!(
    /// What an address means to people (trimmed; empty removes it).
    AddressDescription, ADDRESS_DESCRIPTION, trimmed,
    "Free text, at most 512 characters, no control characters; trimmed, empty removes it."
);
checked_text!(
    /// An OAuth client id.
    ClientId, CLIENT_ID, trimmed,
    "The client id registered at the provider (1-512 characters)."
);
checked_text!(
    /// An OAuth client secret.
    ClientSecret, CLIENT_SECRET, trimmed,
    "The client secret (1-4096 characters; stored sealed, never shown again)."
);
checked_text!(
    /// An LDAP distinguished name (trimmed).
    Dn, DN, trimmed,
    "An LDAP distinguished name (1-1024 characters, no control characters; trimmed)."
);
checked_text!(
    /// An LDAP search filter (trimmed).
    LdapFilter, LDAP_FILTER, trimmed,
    "An LDAP search filter in parentheses, such as (objectClass=inetOrgPerson); trimmed."
);
checked_text!(
    /// A password (kept as given; stored sealed, never shown).
    Password, PASSWORD, |text| text.to_string(),
    "A password (1-4096 characters; stored sealed, never shown again)."
);
checked_text!(
    /// A claim name (empty clears it).
    Claim, CLAIM, trimmed,
    "A claim name, at most 128 characters; an empty string clears it."
);

/// What a hand-written schema's stand-in says, before the schema itself.
pub const HAND_WRITTEN: &str = "hand-written schema: ";

/// A JSON Schema written as JSON, for the parts utoipa's derive cannot say
/// (conditional shapes); the handlers' types still decide what is accepted.
/// utoipa's own model cannot hold every schema (an `enum` of arrays, say),
/// so this is a stand-in carrying the JSON, which `openapi::complete` puts
/// in its place verbatim.
pub fn json_schema(value: serde_json::Value) -> Schema {
    ObjectBuilder::new()
        .description(Some(format!("{HAND_WRITTEN}{value}")))
        .into()
}

/// An optional integer as JSON Schema counts them: `300` and `300.0` alike
/// (serde's `i64` refuses the second, which the document allows).
pub fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole number in range"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_the_pattern_says() {
        for ok in [
            "web",
            " web ",
            "Büro 2",
            "a\u{3000}b",
            "x".repeat(255).as_str(),
        ] {
            assert!(NAME.accepts(ok), "{ok:?}");
        }
        for bad in [
            "",
            "   ",
            "\u{3000}\u{a0}",
            "a\u{7}b",
            "tab\there",
            "x".repeat(256).as_str(),
        ] {
            assert!(!NAME.accepts(bad), "{bad:?}");
        }
        let name: Name = serde_json::from_str(r#"" web ""#).unwrap();
        assert_eq!(name.0, "web");
    }

    #[test]
    fn emails_domains_and_claims() {
        assert!(EMAIL.accepts("alice@acme.test"));
        assert!(EMAIL.accepts(" alice@acme.test\u{a0}"));
        for bad in [
            "alice",
            "a@b",
            "a@b.",
            "a@.b",
            "a@b..c",
            "a@b@c.d",
            "a b@c.d",
            "a@b.c\u{7}",
        ] {
            assert!(!EMAIL.accepts(bad), "{bad:?}");
        }
        for ok in ["corp.example", "corp.example.", "a", "_srv.x-y.z"] {
            assert!(DNS_NAME.accepts(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "-a.b",
            "a-.b",
            "a..b",
            "a b",
            "*.corp",
            &"a".repeat(64),
        ] {
            assert!(!DNS_NAME.accepts(bad), "{bad:?}");
        }
        let domain: DnsName = serde_json::from_str(r#"" Corp.Example. ""#).unwrap();
        assert_eq!(domain.0, "corp.example");
        assert!(CLAIM.accepts("") && CLAIM.accepts("  ") && !CLAIM.accepts("a\nb"));
    }
}

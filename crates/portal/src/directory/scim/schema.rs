//! The SCIM schemas this server keeps (RFC 7643 sections 4, 7, 8.7): the
//! attributes of Users (core and the enterprise extension) and Groups, with
//! the characteristics that decide how a value is read (type, case), kept
//! (mutability) and shown (returned). One description serves the `/Schemas`
//! endpoint, the reading of requests and the filter's comparisons, so they
//! cannot disagree.
//!
//! A subset of the core User schema: what identity providers send about a
//! person (names, emails, phone numbers, addresses, the enterprise fields).
//! Passwords, photos, certificates, entitlements and roles are not kept:
//! Postern signs people in through their provider, never with a password.

use serde_json::{Value, json};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    String,
    Boolean,
    Complex,
    Reference,
    DateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutability {
    ReadWrite,
    ReadOnly,
    Immutable,
}

/// One attribute (or sub-attribute) and its characteristics.
#[derive(Clone, Debug)]
pub struct Attribute {
    pub name: &'static str,
    pub kind: Type,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    /// `server` uniqueness (userName).
    pub unique: bool,
    pub canonical: &'static [&'static str],
    pub reference_types: &'static [&'static str],
    pub description: &'static str,
    pub sub: Vec<Attribute>,
}

impl Attribute {
    fn new(name: &'static str, kind: Type, description: &'static str) -> Attribute {
        Attribute {
            name,
            kind,
            multi: false,
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            unique: false,
            canonical: &[],
            reference_types: &[],
            description,
            sub: Vec::new(),
        }
    }

    fn string(name: &'static str, description: &'static str) -> Attribute {
        Attribute::new(name, Type::String, description)
    }

    fn boolean(name: &'static str, description: &'static str) -> Attribute {
        Attribute::new(name, Type::Boolean, description)
    }

    fn reference(
        name: &'static str,
        types: &'static [&'static str],
        description: &'static str,
    ) -> Attribute {
        Attribute {
            reference_types: types,
            ..Attribute::new(name, Type::Reference, description)
        }
    }

    fn complex(name: &'static str, description: &'static str, sub: Vec<Attribute>) -> Attribute {
        Attribute {
            sub,
            ..Attribute::new(name, Type::Complex, description)
        }
    }

    fn multi(self) -> Attribute {
        Attribute {
            multi: true,
            ..self
        }
    }

    fn required(self) -> Attribute {
        Attribute {
            required: true,
            ..self
        }
    }

    fn read_only(self) -> Attribute {
        Attribute {
            mutability: Mutability::ReadOnly,
            ..self
        }
    }

    fn immutable(self) -> Attribute {
        Attribute {
            mutability: Mutability::Immutable,
            ..self
        }
    }

    fn canonical(self, values: &'static [&'static str]) -> Attribute {
        Attribute {
            canonical: values,
            ..self
        }
    }

    /// The sub-attribute named `name`, in any case (attribute names are
    /// case-insensitive, RFC 7643 section 2.1).
    pub fn child(&self, name: &str) -> Option<&Attribute> {
        find(&self.sub, name)
    }

    /// The schema's JSON representation (RFC 7643 section 7).
    fn to_json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "type": match self.kind {
                Type::String => "string",
                Type::Boolean => "boolean",
                Type::Complex => "complex",
                Type::Reference => "reference",
                Type::DateTime => "dateTime",
            },
            "multiValued": self.multi,
            "description": self.description,
            "required": self.required,
            "mutability": match self.mutability {
                Mutability::ReadWrite => "readWrite",
                Mutability::ReadOnly => "readOnly",
                Mutability::Immutable => "immutable",
            },
            "returned": "default",
            "uniqueness": if self.unique { "server" } else { "none" },
        });
        if matches!(self.kind, Type::String | Type::Reference) {
            out["caseExact"] = json!(self.case_exact);
        }
        if !self.canonical.is_empty() {
            out["canonicalValues"] = json!(self.canonical);
        }
        if !self.reference_types.is_empty() {
            out["referenceTypes"] = json!(self.reference_types);
        }
        if !self.sub.is_empty() {
            out["subAttributes"] = self.sub.iter().map(Attribute::to_json).collect();
        }
        out
    }
}

/// The attribute of `attributes` named `name`, in any case.
pub fn find<'a>(attributes: &'a [Attribute], name: &str) -> Option<&'a Attribute> {
    attributes
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
}

/// A schema: its URN and attributes.
#[derive(Debug)]
pub struct Schema {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    pub fn to_json(&self, base_url: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": self.attributes.iter().map(Attribute::to_json).collect::<Vec<_>>(),
            "meta": {
                "resourceType": "Schema",
                "location": format!("{base_url}/Schemas/{}", self.id),
            },
        })
    }
}

/// The two kinds of resource a directory provisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::User => "Users",
            Kind::Group => "Groups",
        }
    }

    pub fn core(self) -> &'static Schema {
        match self {
            Kind::User => &SCHEMAS.user,
            Kind::Group => &SCHEMAS.group,
        }
    }

    /// The schema extensions this kind may carry.
    pub fn extensions(self) -> &'static [Schema] {
        match self {
            Kind::User => std::slice::from_ref(&SCHEMAS.enterprise),
            Kind::Group => &[],
        }
    }

    /// The extension whose URN is `urn`, in any case.
    pub fn extension(self, urn: &str) -> Option<&'static Schema> {
        self.extensions()
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(urn))
    }
}

pub struct Schemas {
    pub user: Schema,
    pub enterprise: Schema,
    pub group: Schema,
}

impl Schemas {
    pub fn all(&self) -> [&Schema; 3] {
        [&self.user, &self.enterprise, &self.group]
    }
}

/// The attributes every resource has (RFC 7643 section 3.1), read-only but
/// `externalId`, which the provisioning client sets.
pub fn common() -> &'static [Attribute] {
    &COMMON
}

static COMMON: std::sync::LazyLock<Vec<Attribute>> = std::sync::LazyLock::new(|| {
    vec![
        Attribute {
            case_exact: true,
            ..Attribute::string("id", "The resource's id, set by Postern.").read_only()
        },
        Attribute {
            case_exact: true,
            ..Attribute::string(
                "externalId",
                "The resource's id in the provisioning client's directory.",
            )
        },
        Attribute::complex(
            "meta",
            "The resource's metadata.",
            vec![
                Attribute::string("resourceType", "User or Group.").read_only(),
                Attribute::new("created", Type::DateTime, "When it was created.").read_only(),
                Attribute::new("lastModified", Type::DateTime, "When it last changed.").read_only(),
                Attribute::reference("location", &["uri"], "Its URI.").read_only(),
                Attribute::string("version", "Its entity tag.").read_only(),
            ],
        )
        .read_only(),
    ]
});

fn typed_value(what: &'static str, canonical: &'static [&'static str]) -> Vec<Attribute> {
    vec![
        Attribute::string("value", what),
        Attribute::string("display", "A human-readable name, for display only."),
        Attribute::string("type", "A label for the value's function.").canonical(canonical),
        Attribute::boolean("primary", "Whether this is the primary value."),
    ]
}

pub static SCHEMAS: std::sync::LazyLock<Schemas> = std::sync::LazyLock::new(|| Schemas {
    user: Schema {
        id: USER,
        name: "User",
        description: "User Account",
        attributes: vec![
            Attribute {
                unique: true,
                ..Attribute::string(
                    "userName",
                    "The user's unique name in the directory, often an email address.",
                )
                .required()
            },
            Attribute::complex(
                "name",
                "The components of the user's real name.",
                vec![
                    Attribute::string("formatted", "The full name, formatted for display."),
                    Attribute::string("familyName", "The family name."),
                    Attribute::string("givenName", "The given name."),
                    Attribute::string("middleName", "The middle name(s)."),
                    Attribute::string("honorificPrefix", "The honorific prefix (Ms.)."),
                    Attribute::string("honorificSuffix", "The honorific suffix (III)."),
                ],
            ),
            Attribute::string(
                "displayName",
                "The name shown for the user: Postern's name for the user.",
            ),
            Attribute::string("nickName", "The casual name."),
            Attribute::reference("profileUrl", &["external"], "The online profile's URL."),
            Attribute::string("title", "The user's title (Vice President)."),
            Attribute::string(
                "userType",
                "The relationship to the organization (Employee).",
            ),
            Attribute::string("preferredLanguage", "The preferred language (en-US)."),
            Attribute::string("locale", "The locale (en-US)."),
            Attribute::string("timezone", "The time zone (America/Los_Angeles)."),
            Attribute::boolean(
                "active",
                "Whether the user may sign in; false signs out and disconnects every device.",
            ),
            Attribute::complex(
                "emails",
                "Email addresses; the primary one is how the user signs in.",
                typed_value("The email address.", &["work", "home", "other"]),
            )
            .multi(),
            Attribute::complex(
                "phoneNumbers",
                "Phone numbers.",
                typed_value(
                    "The phone number.",
                    &["work", "home", "mobile", "fax", "pager", "other"],
                ),
            )
            .multi(),
            Attribute::complex(
                "addresses",
                "Physical mailing addresses.",
                vec![
                    Attribute::string("formatted", "The full address, formatted for display."),
                    Attribute::string("streetAddress", "The street address."),
                    Attribute::string("locality", "The city or locality."),
                    Attribute::string("region", "The state or region."),
                    Attribute::string("postalCode", "The postal code."),
                    Attribute::string("country", "The country (ISO 3166-1 alpha-2)."),
                    Attribute::string("type", "A label for the address.")
                        .canonical(&["work", "home", "other"]),
                    Attribute::boolean("primary", "Whether this is the primary address."),
                ],
            )
            .multi(),
            Attribute::complex(
                "groups",
                "The groups the user belongs to directly, kept by the server.",
                vec![
                    Attribute::string("value", "The group's id.").read_only(),
                    Attribute::reference("$ref", &["Group"], "The group's URI.").read_only(),
                    Attribute::string("display", "The group's name.").read_only(),
                    Attribute::string("type", "direct").read_only(),
                ],
            )
            .multi()
            .read_only(),
        ],
    },
    enterprise: Schema {
        id: ENTERPRISE,
        name: "EnterpriseUser",
        description: "Enterprise User",
        attributes: vec![
            Attribute::string("employeeNumber", "The employee's number."),
            Attribute::string("costCenter", "The cost center."),
            Attribute::string("organization", "The organization."),
            Attribute::string("division", "The division."),
            Attribute::string("department", "The department."),
            Attribute::complex(
                "manager",
                "The user's manager.",
                vec![
                    Attribute::string("value", "The manager's id."),
                    Attribute::reference("$ref", &["User"], "The manager's URI."),
                ],
            ),
        ],
    },
    group: Schema {
        id: GROUP,
        name: "Group",
        description: "Group",
        attributes: vec![
            Attribute::string("displayName", "The group's name: Postern's name for it.").required(),
            Attribute::complex(
                "members",
                "The group's members: users and groups of the same directory.",
                vec![
                    Attribute::string("value", "The member's id.").immutable(),
                    Attribute::reference("$ref", &["User", "Group"], "The member's URI.")
                        .immutable(),
                    Attribute::string("display", "The member's name."),
                    Attribute::string("type", "User or Group.")
                        .canonical(&["User", "Group"])
                        .immutable(),
                ],
            )
            .multi(),
        ],
    },
});

/// `/ResourceTypes` entries.
pub fn resource_type(kind: Kind, base_url: &str) -> Value {
    let extensions: Vec<Value> = kind
        .extensions()
        .iter()
        .map(|s| json!({"schema": s.id, "required": false}))
        .collect();
    let mut out = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": kind.name(),
        "name": kind.name(),
        "endpoint": format!("/{}", kind.endpoint()),
        "description": kind.core().description,
        "schema": kind.core().id,
        "meta": {
            "resourceType": "ResourceType",
            "location": format!("{base_url}/ResourceTypes/{}", kind.name()),
        },
    });
    if !extensions.is_empty() {
        out["schemaExtensions"] = Value::Array(extensions);
    }
    out
}

/// Most resources one list answer carries.
pub const MAX_RESULTS: usize = 1000;

/// `/ServiceProviderConfig` (RFC 7643 section 5).
pub fn service_provider_config(base_url: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The directory's token, shown once when it was created",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base_url}/ServiceProviderConfig"),
        },
    })
}

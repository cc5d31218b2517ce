//! Policy conditions as the API and the store carry them (SPEC F14). The
//! policy engine compiles and evaluates them; here they are only data.

use serde::{Deserialize, Serialize};

/// What a condition looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionProperty {
    /// The address the client connects to the portal from.
    RemoteIp,
    /// The ISO 3166 country of that address (from the GeoIP database).
    Country,
    /// Weekday and time-of-day windows in an IANA time zone.
    Time,
    /// The identity provider the client's token came from.
    IdentityProvider,
    /// Whether an admin marked the client as verified.
    ClientVerified,
    /// The operating system the client reports.
    ClientOs,
}

impl ConditionProperty {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionProperty::RemoteIp => "remote_ip",
            ConditionProperty::Country => "country",
            ConditionProperty::Time => "time",
            ConditionProperty::IdentityProvider => "identity_provider",
            ConditionProperty::ClientVerified => "client_verified",
            ConditionProperty::ClientOs => "client_os",
        }
    }
}

/// Whether the property must be among the values or outside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionOperator {
    #[default]
    In,
    NotIn,
}

/// One condition of a policy; all conditions of a policy must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub property: ConditionProperty,
    #[serde(default)]
    pub operator: ConditionOperator,
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_defaults_to_in_and_unknown_values_are_refused() {
        let condition: Condition = serde_json::from_str(
            r#"{"property": "time", "values": ["MTWRF/09:00-17:00/Europe/Berlin"]}"#,
        )
        .unwrap();
        assert_eq!(condition.operator, ConditionOperator::In);
        assert_eq!(condition.property, ConditionProperty::Time);
        let error = serde_json::from_str::<Condition>(
            r#"{"property": "moon_phase", "operator": "in", "values": []}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("moon_phase"), "{error}");
        assert!(
            serde_json::from_str::<Condition>(
                r#"{"property": "country", "operator": "maybe", "values": []}"#
            )
            .is_err()
        );
    }
}

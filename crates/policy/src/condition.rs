//! Conditions compiled from their API form once, so evaluation does no parsing.

use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;
use postern_model::{Condition, ConditionOperator, ConditionProperty};
use uuid::Uuid;

use crate::Facts;
use crate::time_window::{self, TimeWindow, TimeWindowError};

/// A validated condition, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledCondition {
    property: ConditionProperty,
    negate: bool,
    test: Test,
}

#[derive(Clone, Debug, PartialEq)]
enum Test {
    RemoteIp(Vec<IpNet>),
    /// Upper-case ISO 3166-1 alpha-2 codes.
    Country(Vec<String>),
    Time(Vec<TimeWindow>),
    IdentityProvider(Vec<Uuid>),
    ClientVerified(Vec<bool>),
    /// Lower-case names.
    ClientOs(Vec<String>),
}

/// Why a condition was refused; `index` points into `values`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("a {0} condition needs at least one value")]
    NoValues(&'static str),
    #[error("values[{index}]: {value:?} is not a CIDR prefix or address")]
    NotCidr { index: usize, value: String },
    #[error("values[{index}]: {value:?} is not a two-letter ISO 3166 country code")]
    NotCountry { index: usize, value: String },
    #[error("values[{index}]: {source}")]
    Time {
        index: usize,
        source: TimeWindowError,
    },
    #[error("values[{index}]: {value:?} is not an identity provider id (a UUID)")]
    NotProviderId { index: usize, value: String },
    #[error("values[{index}]: {value:?} is neither \"true\" nor \"false\"")]
    NotBool { index: usize, value: String },
    #[error("values[{index}]: an operating system name must not be empty")]
    EmptyOs { index: usize },
}

/// The result of one condition at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub holds: bool,
    /// When the answer may change by itself (only time windows do).
    pub changes_at: Option<Timestamp>,
}

impl CompiledCondition {
    pub fn compile(condition: &Condition) -> Result<Self, ConditionError> {
        let property = condition.property;
        if condition.values.is_empty() {
            return Err(ConditionError::NoValues(property.as_str()));
        }
        let values = condition.values.iter().map(|v| v.trim()).enumerate();
        let test = match property {
            ConditionProperty::RemoteIp => Test::RemoteIp(
                values
                    .map(|(index, value)| {
                        parse_net(value).ok_or_else(|| ConditionError::NotCidr {
                            index,
                            value: value.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ConditionProperty::Country => Test::Country(
                values
                    .map(|(index, value)| {
                        if value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()) {
                            Ok(value.to_ascii_uppercase())
                        } else {
                            Err(ConditionError::NotCountry {
                                index,
                                value: value.to_string(),
                            })
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ConditionProperty::Time => Test::Time(
                values
                    .map(|(index, value)| {
                        TimeWindow::parse(value)
                            .map_err(|source| ConditionError::Time { index, source })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ConditionProperty::IdentityProvider => Test::IdentityProvider(
                values
                    .map(|(index, value)| {
                        value.parse().map_err(|_| ConditionError::NotProviderId {
                            index,
                            value: value.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ConditionProperty::ClientVerified => Test::ClientVerified(
                values
                    .map(|(index, value)| match value.to_ascii_lowercase().as_str() {
                        "true" => Ok(true),
                        "false" => Ok(false),
                        _ => Err(ConditionError::NotBool {
                            index,
                            value: value.to_string(),
                        }),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ConditionProperty::ClientOs => Test::ClientOs(
                values
                    .map(|(index, value)| {
                        if value.is_empty() {
                            Err(ConditionError::EmptyOs { index })
                        } else {
                            Ok(value.to_lowercase())
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(CompiledCondition {
            property,
            negate: condition.operator == ConditionOperator::NotIn,
            test,
        })
    }

    pub fn property(&self) -> ConditionProperty {
        self.property
    }

    /// Evaluates the condition. Facts the portal does not know (remote
    /// address, country) fail the condition whichever the operator: a missing
    /// GeoIP answer must not open access (fail closed).
    pub fn evaluate(&self, facts: &Facts<'_>) -> Outcome {
        let fixed = |member: Option<bool>| Outcome {
            holds: member.is_some_and(|m| m != self.negate),
            changes_at: None,
        };
        match &self.test {
            Test::RemoteIp(nets) => fixed(
                facts
                    .remote_ip
                    .map(|ip| nets.iter().any(|n| n.contains(&ip))),
            ),
            Test::Country(codes) => fixed(
                facts
                    .country
                    .map(|c| codes.iter().any(|code| code.eq_ignore_ascii_case(c))),
            ),
            Test::IdentityProvider(ids) => fixed(Some(
                facts
                    .identity_provider
                    .is_some_and(|provider| ids.contains(&provider)),
            )),
            Test::ClientVerified(values) => fixed(Some(values.contains(&facts.client_verified))),
            Test::ClientOs(names) => fixed(
                facts
                    .client_os
                    .map(|os| names.iter().any(|n| n.eq_ignore_ascii_case(os))),
            ),
            Test::Time(windows) => Outcome {
                holds: time_window::any_contains(windows, facts.now) != self.negate,
                changes_at: time_window::next_change(windows, facts.now),
            },
        }
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(
        property: ConditionProperty,
        operator: ConditionOperator,
        values: &[&str],
    ) -> Condition {
        Condition {
            property,
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn facts() -> Facts<'static> {
        Facts {
            now: "2026-11-25T10:00:00Z".parse().unwrap(),
            remote_ip: Some("198.18.0.7".parse().unwrap()),
            country: None,
            identity_provider: None,
            client_verified: false,
            client_os: Some("Linux"),
        }
    }

    #[test]
    fn unknown_country_fails_closed_both_ways() {
        for operator in [ConditionOperator::In, ConditionOperator::NotIn] {
            let compiled = CompiledCondition::compile(&condition(
                ConditionProperty::Country,
                operator,
                &["de"],
            ))
            .unwrap();
            assert!(!compiled.evaluate(&facts()).holds, "{operator:?}");
        }
        let not_in = CompiledCondition::compile(&condition(
            ConditionProperty::Country,
            ConditionOperator::NotIn,
            &["DE"],
        ))
        .unwrap();
        let mut known = facts();
        known.country = Some("FR");
        assert!(not_in.evaluate(&known).holds);
        known.country = Some("de");
        assert!(!not_in.evaluate(&known).holds);
    }

    #[test]
    fn remote_ip_and_os_match() {
        let ip = CompiledCondition::compile(&condition(
            ConditionProperty::RemoteIp,
            ConditionOperator::In,
            &["198.18.0.0/15", "2001:db8::1"],
        ))
        .unwrap();
        assert!(ip.evaluate(&facts()).holds);
        let mut elsewhere = facts();
        elsewhere.remote_ip = Some("192.0.2.1".parse().unwrap());
        assert!(!ip.evaluate(&elsewhere).holds);
        elsewhere.remote_ip = None;
        assert!(!ip.evaluate(&elsewhere).holds);
        let os = CompiledCondition::compile(&condition(
            ConditionProperty::ClientOs,
            ConditionOperator::In,
            &["linux", "macOS"],
        ))
        .unwrap();
        assert!(os.evaluate(&facts()).holds);
    }

    #[test]
    fn bad_values_name_their_index() {
        let error = CompiledCondition::compile(&condition(
            ConditionProperty::RemoteIp,
            ConditionOperator::In,
            &["10.0.0.0/8", "ten"],
        ))
        .unwrap_err();
        assert!(error.to_string().starts_with("values[1]:"), "{error}");
        let error = CompiledCondition::compile(&condition(
            ConditionProperty::Time,
            ConditionOperator::In,
            &[],
        ))
        .unwrap_err();
        assert_eq!(error, ConditionError::NoValues("time"));
        assert!(
            CompiledCondition::compile(&condition(
                ConditionProperty::ClientVerified,
                ConditionOperator::In,
                &["yes"],
            ))
            .is_err()
        );
    }
}

//! Postern's policy engine (SPEC F14, F15): a pure function from an in-memory
//! snapshot of an account's policies and the facts about one access request to
//! a decision. Allow carries when it ends by itself (a time window closing);
//! deny carries why. No I/O and no clock: `now` is one of the facts.

pub mod condition;
pub mod snapshot;
pub mod time_window;

use std::net::IpAddr;

use jiff::Timestamp;
use postern_model::ConditionProperty;
use uuid::Uuid;

pub use condition::{CompiledCondition, ConditionError, Outcome};
pub use snapshot::Snapshot;
pub use time_window::{TimeWindow, TimeWindowError};

/// What the portal knows about the request being decided.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now: Timestamp,
    /// Where the client's portal connection comes from.
    pub remote_ip: Option<IpAddr>,
    /// ISO code of `remote_ip` from the GeoIP database, if it knew.
    pub country: Option<&'a str>,
    /// The identity provider the token came from (`None`: a service account
    /// or an admin-issued token).
    pub identity_provider: Option<Uuid>,
    pub client_verified: bool,
    pub client_os: Option<&'a str>,
}

/// One policy: members of `group_id` may use `resource_id` when every
/// condition holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub id: Uuid,
    pub group_id: Uuid,
    pub resource_id: Uuid,
    pub conditions: Vec<CompiledCondition>,
    pub disabled: bool,
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// The policy that grants the longest access.
        policy_id: Uuid,
        /// When access ends by itself; `None` means not before something
        /// changes (token expiry is the portal's business, not the engine's).
        expires_at: Option<Timestamp>,
    },
    Deny(Denial),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why access was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No enabled policy links any of the actor's groups to the resource.
    NoPolicy,
    /// Policies exist, but each has a condition that does not hold; the
    /// properties of all of them, sorted, without repeats.
    Conditions(Vec<ConditionProperty>),
}

/// Decides access to `resource_id` for a member of `groups`, among
/// `policies` (policies for other resources are ignored). Policies are OR-ed,
/// the conditions inside one are AND-ed; default deny.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    groups: &[Uuid],
    resource_id: Uuid,
    facts: &Facts<'_>,
) -> Decision {
    let mut best: Option<(Uuid, Option<Timestamp>)> = None;
    let mut violated: Vec<ConditionProperty> = Vec::new();
    let mut any_candidate = false;
    for policy in policies {
        if policy.disabled
            || policy.resource_id != resource_id
            || !groups.contains(&policy.group_id)
        {
            continue;
        }
        any_candidate = true;
        let mut holds = true;
        let mut expires_at: Option<Timestamp> = None;
        for condition in &policy.conditions {
            let outcome = condition.evaluate(facts);
            if !outcome.holds {
                holds = false;
                violated.push(condition.property());
            } else if let Some(change) = outcome.changes_at {
                expires_at = Some(expires_at.map_or(change, |e| e.min(change)));
            }
        }
        if !holds {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, None)) => false,
            Some((_, Some(current))) => expires_at.is_none_or(|e| e > current),
        };
        if better {
            best = Some((policy.id, expires_at));
        }
    }
    match best {
        Some((policy_id, expires_at)) => Decision::Allow {
            policy_id,
            expires_at,
        },
        None if any_candidate => {
            violated.sort_by_key(|p| p.as_str());
            violated.dedup();
            Decision::Deny(Denial::Conditions(violated))
        }
        None => Decision::Deny(Denial::NoPolicy),
    }
}

/// One policy's part in a decision, for an admin asking "why can't alice
/// reach web?": whether the asker is in its group, and each condition's
/// answer, in the policy's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict<'p> {
    pub policy: &'p Policy,
    pub member: bool,
    /// `holds` of each of `policy.conditions` for these facts.
    pub conditions: Vec<bool>,
}

impl Verdict<'_> {
    /// Whether this policy alone grants access.
    pub fn grants(&self) -> bool {
        self.member && !self.policy.disabled && self.conditions.iter().all(|h| *h)
    }
}

/// The verdict of every policy for `resource_id` (those of other resources
/// are left out), with the same facts `evaluate` decides on: access is
/// allowed exactly when one of them `grants`.
pub fn explain<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    groups: &[Uuid],
    resource_id: Uuid,
    facts: &Facts<'_>,
) -> Vec<Verdict<'p>> {
    policies
        .into_iter()
        .filter(|policy| policy.resource_id == resource_id)
        .map(|policy| Verdict {
            policy,
            member: groups.contains(&policy.group_id),
            conditions: policy
                .conditions
                .iter()
                .map(|condition| condition.evaluate(facts).holds)
                .collect(),
        })
        .collect()
}

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Property tests of the policy engine against small reference models.

use std::collections::{BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use postern_model::{Condition, ConditionOperator, ConditionProperty};
use postern_policy::{
    CompiledCondition, Decision, Denial, Facts, Policy, Snapshot, evaluate, explain,
};
use proptest::prelude::*;
use uuid::Uuid;

const GROUPS: u128 = 4;
const RESOURCES: u128 = 4;
const OSES: [&str; 3] = ["linux", "macos", "windows"];

/// A policy in the reference model: who, what, and the two deterministic
/// conditions (required verification, allowed operating systems).
#[derive(Clone, Debug)]
struct ModelPolicy {
    id: u128,
    group: u128,
    resource: u128,
    disabled: bool,
    verified: Option<bool>,
    oses: Option<Vec<&'static str>>,
}

fn model_policy() -> impl Strategy<Value = ModelPolicy> {
    (
        0u128..20,
        0..GROUPS,
        0..RESOURCES,
        proptest::bool::weighted(0.2),
        proptest::option::of(any::<bool>()),
        proptest::option::of(proptest::sample::subsequence(OSES.to_vec(), 1..=3)),
    )
        .prop_map(
            |(id, group, resource, disabled, verified, oses)| ModelPolicy {
                id,
                group,
                resource,
                disabled,
                verified,
                oses,
            },
        )
}

fn to_policy(model: &ModelPolicy) -> Policy {
    let mut conditions = Vec::new();
    if let Some(verified) = model.verified {
        conditions.push(Condition {
            property: ConditionProperty::ClientVerified,
            operator: ConditionOperator::In,
            values: vec![verified.to_string()],
        });
    }
    if let Some(oses) = &model.oses {
        conditions.push(Condition {
            property: ConditionProperty::ClientOs,
            operator: ConditionOperator::In,
            values: oses.iter().map(|s| s.to_uppercase()).collect(),
        });
    }
    Policy {
        id: Uuid::from_u128(model.id),
        group_id: Uuid::from_u128(1000 + model.group),
        resource_id: Uuid::from_u128(2000 + model.resource),
        conditions: conditions
            .iter()
            .map(|c| CompiledCondition::compile(c).unwrap())
            .collect(),
        disabled: model.disabled,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(ModelPolicy),
    Remove(u128),
    RemoveResource(u128),
    RemoveGroup(u128),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => model_policy().prop_map(Op::Upsert),
        2 => (0u128..20).prop_map(Op::Remove),
        1 => (0..RESOURCES).prop_map(Op::RemoveResource),
        1 => (0..GROUPS).prop_map(Op::RemoveGroup),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The indexed snapshot, patched by a random sequence of changes, decides
    /// exactly like the reference model over the same policies.
    #[test]
    fn snapshot_matches_reference_model(
        ops in proptest::collection::vec(op(), 0..40),
        groups in proptest::sample::subsequence((0..GROUPS).collect::<Vec<_>>(), 0..=4),
        verified in any::<bool>(),
        os in proptest::sample::select(OSES.to_vec()),
    ) {
        let mut model: HashMap<u128, ModelPolicy> = HashMap::new();
        let mut snapshot = Snapshot::default();
        for op in ops {
            match op {
                Op::Upsert(policy) => {
                    snapshot.upsert(to_policy(&policy));
                    model.insert(policy.id, policy);
                }
                Op::Remove(id) => {
                    let removed = snapshot.remove(Uuid::from_u128(id));
                    prop_assert_eq!(removed.is_some(), model.remove(&id).is_some());
                }
                Op::RemoveResource(resource) => {
                    snapshot.remove_resource(Uuid::from_u128(2000 + resource));
                    model.retain(|_, p| p.resource != resource);
                }
                Op::RemoveGroup(group) => {
                    snapshot.remove_group(Uuid::from_u128(1000 + group));
                    model.retain(|_, p| p.group != group);
                }
            }
        }
        prop_assert_eq!(snapshot.len(), model.len());
        let group_ids: Vec<Uuid> = groups.iter().map(|g| Uuid::from_u128(1000 + g)).collect();
        let facts = Facts {
            now: Timestamp::UNIX_EPOCH,
            remote_ip: None,
            country: None,
            identity_provider: None,
            client_verified: verified,
            client_os: Some(os),
        };
        let mut expected_visible = BTreeSet::new();
        for resource in 0..RESOURCES {
            let candidates: Vec<&ModelPolicy> = model
                .values()
                .filter(|p| p.resource == resource && !p.disabled && groups.contains(&p.group))
                .collect();
            if !candidates.is_empty() {
                expected_visible.insert(Uuid::from_u128(2000 + resource));
            }
            let allowed = candidates.iter().any(|p| {
                p.verified.is_none_or(|v| v == verified)
                    && p.oses.as_ref().is_none_or(|oses| oses.contains(&os))
            });
            let decision = snapshot.decide(&group_ids, Uuid::from_u128(2000 + resource), &facts);
            prop_assert_eq!(decision.is_allow(), allowed, "resource {}: {:?}", resource, decision);
            // The explanation an admin reads agrees with the decision.
            let verdicts = explain(snapshot.iter(), &group_ids, Uuid::from_u128(2000 + resource), &facts);
            prop_assert_eq!(verdicts.iter().any(|v| v.grants()), allowed);
            prop_assert_eq!(
                verdicts.len(),
                model.values().filter(|p| p.resource == resource).count()
            );
            if candidates.is_empty() {
                prop_assert_eq!(decision, Decision::Deny(Denial::NoPolicy));
            } else if !allowed {
                let Decision::Deny(Denial::Conditions(properties)) = decision else {
                    panic!("expected a conditions denial, got {decision:?}");
                };
                prop_assert!(!properties.is_empty());
            }
        }
        prop_assert_eq!(snapshot.visible_resources(&group_ids), expected_visible);
    }

    /// An allow that expires is allowed right up to its expiry and not at it
    /// (one policy), and one that does not expire stays allowed for a week.
    #[test]
    fn time_window_expiry_is_exact(
        days in "[MTWRFSU]{1,7}",
        start in 0u32..24 * 60,
        length in 1u32..24 * 60,
        zone in proptest::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
        negate in any::<bool>(),
        now_secs in 1_700_000_000i64..1_900_000_000,
    ) {
        let mut unique_days: Vec<char> = days.chars().collect();
        unique_days.sort_unstable();
        unique_days.dedup();
        let end = (start + length).min(24 * 60);
        prop_assume!(end > start);
        let window = format!(
            "{}/{:02}:{:02}-{:02}:{:02}/{}",
            unique_days.iter().collect::<String>(),
            start / 60, start % 60, end / 60, end % 60, zone
        );
        let condition = CompiledCondition::compile(&Condition {
            property: ConditionProperty::Time,
            operator: if negate { ConditionOperator::NotIn } else { ConditionOperator::In },
            values: vec![window.clone()],
        }).unwrap();
        let policy = Policy {
            id: Uuid::from_u128(1),
            group_id: Uuid::from_u128(2),
            resource_id: Uuid::from_u128(3),
            conditions: vec![condition],
            disabled: false,
        };
        let decide = |now: Timestamp| {
            let facts = Facts {
                now,
                remote_ip: None,
                country: None,
                identity_provider: None,
                client_verified: false,
                client_os: None,
            };
            evaluate([&policy], &[policy.group_id], policy.resource_id, &facts)
        };
        let now = Timestamp::from_second(now_secs).unwrap();
        match decide(now) {
            Decision::Allow { expires_at: Some(expiry), .. } => {
                prop_assert!(expiry > now, "{window}: expiry {expiry} not after {now}");
                prop_assert!(expiry <= now + SignedDuration::from_hours(24 * 8));
                let step = (expiry - now) / 7;
                for i in 0..7 {
                    prop_assert!(decide(now + step * i).is_allow(), "{window}: closed before {expiry}");
                }
                prop_assert!(decide(expiry - SignedDuration::from_secs(1)).is_allow());
                prop_assert!(!decide(expiry).is_allow(), "{window}: still open at {expiry}");
            }
            Decision::Allow { expires_at: None, .. } => {
                for hours in [1, 25, 49, 100, 167] {
                    prop_assert!(decide(now + SignedDuration::from_hours(hours)).is_allow(), "{window}");
                }
            }
            Decision::Deny(denial) => {
                prop_assert_eq!(denial, Denial::Conditions(vec![ConditionProperty::Time]));
            }
        }
    }
}

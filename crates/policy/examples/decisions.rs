//! Policy decisions per second on an account of 10,000 policies, 1,000
//! resources and 10,000 actors (issue 4's benchmark shape). Prints one line
//! per measurement; `bench/portal.sh` runs it.

use std::time::Instant;

use jiff::Timestamp;
use postern_model::{Condition, ConditionOperator, ConditionProperty};
use postern_policy::{CompiledCondition, Facts, Policy, Snapshot};
use uuid::Uuid;

const POLICIES: u128 = 10_000;
const RESOURCES: u128 = 1_000;
const ACTORS: u128 = 10_000;
const GROUPS: u128 = 500;
const GROUPS_PER_ACTOR: u128 = 4;
const DECISIONS: usize = 2_000_000;

/// A deterministic generator (no dependency for a benchmark's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self, bound: u128) -> u128 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        u128::from(self.0) % bound
    }
}

fn main() {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let office_hours = CompiledCondition::compile(&Condition {
        property: ConditionProperty::Time,
        operator: ConditionOperator::In,
        values: vec!["MTWRF/08:00-18:00/Europe/Berlin".into()],
    })
    .expect("a valid window");
    let office_ip = CompiledCondition::compile(&Condition {
        property: ConditionProperty::RemoteIp,
        operator: ConditionOperator::In,
        values: vec!["198.18.0.0/15".into(), "10.0.0.0/8".into()],
    })
    .expect("valid prefixes");
    let built = Instant::now();
    let snapshot = Snapshot::new((0..POLICIES).map(|n| {
        // A third of the policies carry conditions.
        let conditions = match n % 3 {
            0 => vec![office_hours.clone()],
            1 => vec![office_ip.clone()],
            _ => vec![],
        };
        Policy {
            id: Uuid::from_u128(n + 1),
            group_id: Uuid::from_u128(1_000_000 + dice.next(GROUPS)),
            resource_id: Uuid::from_u128(2_000_000 + dice.next(RESOURCES)),
            conditions,
            disabled: false,
        }
    }));
    println!(
        "snapshot: {} policies over {RESOURCES} resources and {GROUPS} groups built in {:.1} ms",
        snapshot.len(),
        built.elapsed().as_secs_f64() * 1e3
    );
    let actors: Vec<Vec<Uuid>> = (0..ACTORS)
        .map(|_| {
            (0..GROUPS_PER_ACTOR)
                .map(|_| Uuid::from_u128(1_000_000 + dice.next(GROUPS)))
                .collect()
        })
        .collect();
    let now: Timestamp = "2026-11-25T10:00:00Z".parse().expect("a timestamp");
    let facts = Facts {
        now,
        remote_ip: Some("198.18.0.7".parse().expect("an address")),
        country: Some("DE"),
        identity_provider: None,
        client_verified: true,
        client_os: Some("linux"),
    };
    let queries: Vec<(usize, Uuid)> = (0..DECISIONS)
        .map(|_| {
            (
                dice.next(ACTORS) as usize,
                Uuid::from_u128(2_000_000 + dice.next(RESOURCES)),
            )
        })
        .collect();
    let started = Instant::now();
    let mut allowed = 0usize;
    for (actor, resource) in &queries {
        if snapshot
            .decide(&actors[*actor], *resource, &facts)
            .is_allow()
        {
            allowed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "decisions: {DECISIONS} in {:.3} s = {:.0} decisions/s on one core ({allowed} allowed)",
        elapsed,
        DECISIONS as f64 / elapsed
    );
    let started = Instant::now();
    let mut visible = 0usize;
    for groups in &actors {
        visible += snapshot.visible_resources(groups).len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "resource lists: {ACTORS} actors in {:.1} ms = {:.0} lists/s (mean {:.1} resources each)",
        elapsed * 1e3,
        ACTORS as f64 / elapsed,
        visible as f64 / ACTORS as f64
    );
}

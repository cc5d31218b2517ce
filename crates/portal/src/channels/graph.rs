//! An account's policy graph in memory (F15): actors, group memberships,
//! resources and the indexed policies. Built whole from the account's rows
//! on its first load; a committed change patches it in place with the few
//! rows the change touched (`GraphPatch`), and the hub then re-evaluates
//! only the clients the change can affect. Plain data: `loader` reads it
//! from the store.

use std::collections::HashMap;
use std::sync::Arc;

use postern_model::protocol::ResourceDescription;
use postern_model::{ResourceAddress, ResourceId, SiteId};
use postern_policy::{CompiledCondition, Policy, Snapshot};
use uuid::Uuid;

use crate::domain::{Actor, Group, GroupKind, PolicyRecord, Resource, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ActorFacts {
    pub role: Role,
    pub disabled: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct AccountGraph {
    pub actors: HashMap<Uuid, ActorFacts>,
    /// Actor -> its groups, `Everyone` included.
    pub groups_of: HashMap<Uuid, Vec<Uuid>>,
    /// Shared with every client told of them (see `Offered`).
    pub resources: HashMap<Uuid, Arc<ResourceDescription>>,
    pub policies: Snapshot,
    /// The account's DNS search domain for its clients' `init` (F25).
    pub search_domain: Option<String>,
    /// The account's `Everyone` group, which users and admins are in.
    pub everyone: Option<Uuid>,
}

/// An account's rows, as the store lists them.
#[derive(Debug, Default)]
pub(crate) struct AccountRows {
    pub actors: Vec<Actor>,
    pub groups: Vec<Group>,
    /// (group, actor) pairs.
    pub memberships: Vec<(Uuid, Uuid)>,
    pub resources: Vec<Resource>,
    pub policies: Vec<PolicyRecord>,
    pub search_domain: Option<String>,
}

/// The rows one committed change touched, read again: the graph is patched
/// with them in place instead of being rebuilt from every row of the
/// account (`loader`).
#[derive(Debug, Default)]
pub(crate) struct GraphPatch {
    /// Resources read again; `None`: deleted.
    pub resources: Vec<(Uuid, Option<Resource>)>,
    /// Every policy naming these resources now (a deleted resource's are
    /// gone with it).
    pub policies_of_resources: Vec<(Uuid, Vec<PolicyRecord>)>,
    /// Every policy of these groups now.
    pub policies_of_groups: Vec<(Uuid, Vec<PolicyRecord>)>,
    /// Actors read again; `None`: deleted.
    pub actors: Vec<(Uuid, Option<ActorRow>)>,
}

/// An actor with the groups it is a member of (`Everyone` aside).
pub(crate) type ActorRow = (Actor, Vec<Uuid>);

/// What a client is told it has: the graph's descriptions, shared (a
/// connected client holds a pointer per resource, not a copy: with 100,000
/// clients a copy of each description was most of a client's memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Offered(Box<[Arc<ResourceDescription>]>);

impl Offered {
    pub(crate) fn get(&self, id: ResourceId) -> Option<&ResourceDescription> {
        let at = self.0.binary_search_by_key(&id, |r| r.id).ok()?;
        Some(&self.0[at])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &ResourceDescription> {
        self.0.iter().map(Arc::as_ref)
    }
}

impl AccountGraph {
    /// The graph of an account's rows. Rows that no longer validate (rules
    /// tightened since they were written) grant nothing.
    pub(crate) fn build(rows: AccountRows) -> AccountGraph {
        let AccountRows {
            actors: actor_rows,
            groups: group_rows,
            memberships,
            resources: resource_rows,
            policies: policy_rows,
            search_domain,
        } = rows;
        let everyone = group_rows
            .iter()
            .find(|g| g.kind == GroupKind::Everyone)
            .map(|g| g.id);
        let mut graph = AccountGraph {
            everyone,
            search_domain,
            ..AccountGraph::default()
        };
        let mut member_of: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (group, actor) in memberships {
            member_of.entry(actor).or_default().push(group);
        }
        for actor in &actor_rows {
            let groups = member_of.remove(&actor.id).unwrap_or_default();
            graph.set_actor(actor, groups);
        }
        // Memberships of actors the listing missed still count (as before).
        for (actor, groups) in member_of {
            graph.groups_of.entry(actor).or_default().extend(groups);
        }
        for row in resource_rows {
            graph.set_resource(row.id, Some(row));
        }
        for record in policy_rows {
            graph.policies.upsert(compile(&record));
        }
        graph
    }

    /// Applies the rows a change touched, in place.
    pub(crate) fn patch(&mut self, patch: GraphPatch) {
        for (id, row) in patch.resources {
            self.set_resource(id, row);
        }
        for (resource, records) in patch.policies_of_resources {
            self.policies.remove_resource(resource);
            for record in &records {
                self.policies.upsert(compile(record));
            }
        }
        for (group, records) in patch.policies_of_groups {
            self.policies.remove_group(group);
            for record in &records {
                self.policies.upsert(compile(record));
            }
        }
        for (id, row) in patch.actors {
            match row {
                Some((actor, groups)) => self.set_actor(&actor, groups),
                None => {
                    self.actors.remove(&id);
                    self.groups_of.remove(&id);
                }
            }
        }
    }

    /// An actor's facts and groups (`Everyone` added by role).
    fn set_actor(&mut self, actor: &Actor, mut groups: Vec<Uuid>) {
        self.actors.insert(
            actor.id,
            ActorFacts {
                role: actor.role,
                disabled: actor.disabled,
            },
        );
        if let Some(everyone) = self.everyone
            && actor.role.in_everyone()
        {
            groups.insert(0, everyone);
        }
        self.groups_of.insert(actor.id, groups);
    }

    /// A resource as clients are told it; a row that no longer parses
    /// (validated on write, rules tightened since) is offered to nobody.
    fn set_resource(&mut self, id: Uuid, row: Option<Resource>) {
        let Some(r) = row else {
            self.resources.remove(&id);
            return;
        };
        let exclusions: Vec<String> = r.exclusions.iter().map(|n| n.to_string()).collect();
        match ResourceAddress::parse_with_exclusions(r.kind, r.address.as_deref(), &exclusions) {
            Ok(address) => {
                self.resources.insert(
                    r.id,
                    Arc::new(ResourceDescription {
                        id: ResourceId(r.id),
                        name: r.name,
                        address,
                        address_description: r.address_description,
                        filters: r.filters,
                        site_id: SiteId(r.site_id),
                    }),
                );
            }
            Err(error) => {
                tracing::warn!(resource = %r.id, %error, "resource address does not parse; the resource is not offered");
                self.resources.remove(&id);
            }
        }
    }

    pub(crate) fn groups(&self, actor: Uuid) -> &[Uuid] {
        self.groups_of.get(&actor).map_or(&[], Vec::as_slice)
    }

    /// Whether an actor may hold a channel at all.
    pub(crate) fn actor_active(&self, actor: Uuid) -> bool {
        self.actors.get(&actor).is_some_and(|a| !a.disabled)
    }

    /// The resources offered to an actor, as clients see them.
    pub(crate) fn visible(&self, actor: Uuid) -> Vec<&ResourceDescription> {
        self.policies
            .visible_resources(self.groups(actor))
            .into_iter()
            .filter_map(|id| self.resources.get(&id).map(Arc::as_ref))
            .collect()
    }

    /// The resources offered to an actor, sorted by id.
    pub(crate) fn offered(&self, actor: Uuid) -> Offered {
        let mut offered: Vec<Arc<ResourceDescription>> = self
            .policies
            .visible_resources(self.groups(actor))
            .into_iter()
            .filter_map(|id| self.resources.get(&id).cloned())
            .collect();
        offered.sort_unstable_by_key(|r| r.id);
        offered.dedup_by_key(|r| r.id);
        Offered(offered.into_boxed_slice())
    }

    /// Actors that are members of any of `groups`.
    pub(crate) fn members_of(&self, groups: &[Uuid]) -> Vec<Uuid> {
        self.groups_of
            .iter()
            .filter(|(_, theirs)| theirs.iter().any(|g| groups.contains(g)))
            .map(|(actor, _)| *actor)
            .collect()
    }
}

/// A stored policy as the engine takes it. Validated on write; a condition
/// that no longer compiles (a zone removed from the database, say) makes
/// the policy grant nothing rather than everything.
fn compile(record: &PolicyRecord) -> Policy {
    let mut conditions = Vec::with_capacity(record.conditions.len());
    let mut valid = true;
    for condition in &record.conditions {
        match CompiledCondition::compile(condition) {
            Ok(compiled) => conditions.push(compiled),
            Err(error) => {
                tracing::warn!(policy = %record.id, %error, "policy condition does not compile; the policy is ignored");
                valid = false;
            }
        }
    }
    Policy {
        id: record.id,
        group_id: record.group_id,
        resource_id: record.resource_id,
        conditions,
        disabled: record.disabled || !valid,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use jiff::Timestamp;
    use postern_model::ResourceType;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn actor(n: u128, role: Role, disabled: bool) -> Actor {
        Actor {
            id: id(n),
            name: format!("actor-{n}"),
            email: None,
            role,
            disabled,
            directory_id: None,
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn group(n: u128, kind: GroupKind) -> Group {
        Group {
            id: id(n),
            name: format!("group-{n}"),
            kind,
            directory_id: None,
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn resource(n: u128, name: &str, address: &str) -> Resource {
        Resource {
            id: id(n),
            site_id: id(900),
            name: name.to_string(),
            kind: ResourceType::Cidr,
            address: Some(address.to_string()),
            address_description: None,
            filters: Vec::new(),
            exclusions: Vec::new(),
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn policy(n: u128, group: u128, resource: u128, disabled: bool) -> PolicyRecord {
        PolicyRecord {
            id: id(n),
            group_id: id(group),
            resource_id: id(resource),
            conditions: Vec::new(),
            description: String::new(),
            disabled,
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    type View = (
        BTreeMap<Uuid, (Role, bool)>,
        BTreeMap<Uuid, BTreeSet<Uuid>>,
        BTreeMap<Uuid, ResourceDescription>,
        BTreeSet<(Uuid, Uuid, Uuid, bool)>,
        BTreeMap<Uuid, Vec<ResourceId>>,
    );

    /// Everything the hub reads of a graph, in a comparable form: facts,
    /// groups, resources, policies, and what each actor is offered.
    fn view(graph: &AccountGraph) -> View {
        let offered = graph
            .actors
            .keys()
            .map(|a| (*a, graph.offered(*a).iter().map(|r| r.id).collect()))
            .collect();
        (
            graph
                .actors
                .iter()
                .map(|(id, f)| (*id, (f.role, f.disabled)))
                .collect(),
            graph
                .groups_of
                .iter()
                .filter(|(actor, _)| graph.actors.contains_key(actor))
                .map(|(id, g)| (*id, g.iter().copied().collect()))
                .collect(),
            graph
                .resources
                .iter()
                .map(|(id, r)| (*id, ResourceDescription::clone(r)))
                .collect(),
            graph
                .policies
                .iter()
                .map(|p| (p.id, p.group_id, p.resource_id, p.disabled))
                .collect(),
            offered,
        )
    }

    /// The rows of an account with users, a service account, groups,
    /// resources and policies.
    fn rows() -> AccountRows {
        AccountRows {
            actors: vec![
                actor(1, Role::User, false),
                actor(2, Role::User, false),
                actor(3, Role::ServiceAccount, false),
            ],
            groups: vec![group(10, GroupKind::Everyone), group(11, GroupKind::Static)],
            memberships: vec![(id(11), id(1)), (id(11), id(3))],
            resources: vec![
                resource(20, "web", "10.0.0.0/24"),
                resource(21, "db", "10.0.1.0/24"),
                resource(22, "ops", "10.0.2.0/24"),
            ],
            policies: vec![
                policy(30, 10, 20, false),
                policy(31, 11, 21, false),
                policy(32, 11, 22, false),
            ],
            search_domain: None,
        }
    }

    /// Each kind of change, applied as a patch of the rows it touched,
    /// gives the graph a whole rebuild from the changed rows gives.
    #[test]
    fn a_patch_gives_the_graph_a_rebuild_gives() {
        let mut graph = AccountGraph::build(rows());
        let mut after = rows();

        // A resource renamed and another deleted (its policy with it).
        after.resources[0].name = "web-2".into();
        after.resources.retain(|r| r.id != id(22));
        after.policies.retain(|p| p.resource_id != id(22));
        // A policy added for a group, another disabled.
        after.policies.push(policy(33, 10, 21, false));
        after.policies[1].disabled = true;
        // An actor disabled, one removed from a group, one deleted, one new.
        after.actors[0].disabled = true;
        after.memberships.retain(|m| *m != (id(11), id(3)));
        after.actors.retain(|a| a.id != id(2));
        after.actors.push(actor(4, Role::Admin, false));
        after.memberships.push((id(11), id(4)));

        let find =
            |rows: &AccountRows, r: u128| rows.resources.iter().find(|x| x.id == id(r)).cloned();
        let policies_of_resource = |rows: &AccountRows, r: u128| {
            rows.policies
                .iter()
                .filter(|p| p.resource_id == id(r))
                .cloned()
                .collect()
        };
        let policies_of_group = |rows: &AccountRows, g: u128| {
            rows.policies
                .iter()
                .filter(|p| p.group_id == id(g))
                .cloned()
                .collect()
        };
        let actor_row = |rows: &AccountRows, a: u128| {
            rows.actors
                .iter()
                .find(|x| x.id == id(a))
                .cloned()
                .map(|actor| {
                    let groups = rows
                        .memberships
                        .iter()
                        .filter(|(_, member)| *member == id(a))
                        .map(|(group, _)| *group)
                        .collect();
                    (actor, groups)
                })
        };
        graph.patch(GraphPatch {
            resources: vec![(id(20), find(&after, 20)), (id(22), find(&after, 22))],
            policies_of_resources: vec![
                (id(20), policies_of_resource(&after, 20)),
                (id(22), policies_of_resource(&after, 22)),
            ],
            policies_of_groups: vec![
                (id(10), policies_of_group(&after, 10)),
                (id(11), policies_of_group(&after, 11)),
            ],
            actors: [1, 2, 3, 4].map(|a| (id(a), actor_row(&after, a))).to_vec(),
        });
        let rebuilt = AccountGraph::build(after);
        assert_eq!(view(&graph), view(&rebuilt));
        // And the patch changed what it had to: the new admin is in
        // Everyone and the static group; the deleted user is gone.
        assert_eq!(
            graph.groups(id(4)).iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([id(10), id(11)])
        );
        assert!(!graph.actors.contains_key(&id(2)));
        assert_eq!(graph.resources[&id(20)].name, "web-2");
        assert!(!graph.resources.contains_key(&id(22)));
    }
}

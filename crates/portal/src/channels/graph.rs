//! An account's policy graph in memory (F15): actors, group memberships,
//! resources and the indexed policies. The hub reloads it when a change is
//! committed and then re-evaluates only the clients the change can affect.
//! Plain data: `loader` reads it from the store.

use std::collections::{BTreeMap, HashMap};

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
    pub resources: HashMap<Uuid, ResourceDescription>,
    pub policies: Snapshot,
    /// The account's DNS search domain for its clients' `init` (F25).
    pub search_domain: Option<String>,
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
        let mut groups_of: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut actors = HashMap::new();
        for actor in &actor_rows {
            actors.insert(
                actor.id,
                ActorFacts {
                    role: actor.role,
                    disabled: actor.disabled,
                },
            );
            let groups = groups_of.entry(actor.id).or_default();
            if let Some(everyone) = everyone
                && actor.role.in_everyone()
            {
                groups.push(everyone);
            }
        }
        for (group, actor) in memberships {
            groups_of.entry(actor).or_default().push(group);
        }
        let resources = resource_rows
            .into_iter()
            .filter_map(|r| {
                // Validated on write; a row that no longer parses (rules
                // tightened since) is offered to nobody.
                let exclusions: Vec<String> = r.exclusions.iter().map(|n| n.to_string()).collect();
                let address = match ResourceAddress::parse_with_exclusions(
                    r.kind,
                    r.address.as_deref(),
                    &exclusions,
                ) {
                    Ok(address) => address,
                    Err(error) => {
                        tracing::warn!(resource = %r.id, %error, "resource address does not parse; the resource is not offered");
                        return None;
                    }
                };
                Some((
                    r.id,
                    ResourceDescription {
                        id: ResourceId(r.id),
                        name: r.name,
                        address,
                        address_description: r.address_description,
                        filters: r.filters,
                        site_id: SiteId(r.site_id),
                    },
                ))
            })
            .collect();
        let mut snapshot = Snapshot::default();
        for record in policy_rows {
            let mut conditions = Vec::with_capacity(record.conditions.len());
            let mut valid = true;
            for condition in &record.conditions {
                match CompiledCondition::compile(condition) {
                    Ok(compiled) => conditions.push(compiled),
                    Err(error) => {
                        // Validated on write; a row that no longer compiles
                        // (a zone removed from the database, say) grants
                        // nothing rather than everything.
                        tracing::warn!(policy = %record.id, %error, "policy condition does not compile; the policy is ignored");
                        valid = false;
                    }
                }
            }
            snapshot.upsert(Policy {
                id: record.id,
                group_id: record.group_id,
                resource_id: record.resource_id,
                conditions,
                disabled: record.disabled || !valid,
            });
        }
        AccountGraph {
            actors,
            groups_of,
            resources,
            policies: snapshot,
            search_domain,
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
            .filter_map(|id| self.resources.get(&id))
            .collect()
    }

    /// The resources offered to an actor, by id.
    pub(crate) fn offered(&self, actor: Uuid) -> BTreeMap<ResourceId, ResourceDescription> {
        self.visible(actor)
            .into_iter()
            .map(|r| (r.id, r.clone()))
            .collect()
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

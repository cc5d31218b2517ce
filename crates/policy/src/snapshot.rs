//! An account's policies indexed for the two questions the portal asks all the
//! time: "may this actor use this resource?" and "which resources does this
//! actor see?". Changes patch the index; nothing is rebuilt.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::{Decision, Facts, Policy, evaluate};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    policies: HashMap<Uuid, Policy>,
    by_resource: HashMap<Uuid, Vec<Uuid>>,
    by_group: HashMap<Uuid, Vec<Uuid>>,
}

impl Snapshot {
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut snapshot = Snapshot::default();
        for policy in policies {
            snapshot.upsert(policy);
        }
        snapshot
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn get(&self, id: Uuid) -> Option<&Policy> {
        self.policies.get(&id)
    }

    /// Adds or replaces a policy; returns the one it replaced.
    pub fn upsert(&mut self, policy: Policy) -> Option<Policy> {
        let old = self.remove(policy.id);
        self.by_resource
            .entry(policy.resource_id)
            .or_default()
            .push(policy.id);
        self.by_group
            .entry(policy.group_id)
            .or_default()
            .push(policy.id);
        self.policies.insert(policy.id, policy);
        old
    }

    pub fn remove(&mut self, id: Uuid) -> Option<Policy> {
        let old = self.policies.remove(&id)?;
        unlink(&mut self.by_resource, old.resource_id, id);
        unlink(&mut self.by_group, old.group_id, id);
        Some(old)
    }

    /// Drops every policy of a resource (the resource was deleted).
    pub fn remove_resource(&mut self, resource_id: Uuid) -> Vec<Policy> {
        let ids = self
            .by_resource
            .get(&resource_id)
            .cloned()
            .unwrap_or_default();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Drops every policy of a group (the group was deleted).
    pub fn remove_group(&mut self, group_id: Uuid) -> Vec<Policy> {
        let ids = self.by_group.get(&group_id).cloned().unwrap_or_default();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// The decision for a member of `groups` asking for `resource_id`.
    pub fn decide(&self, groups: &[Uuid], resource_id: Uuid, facts: &Facts<'_>) -> Decision {
        let ids = self
            .by_resource
            .get(&resource_id)
            .map_or(&[][..], Vec::as_slice);
        evaluate(
            ids.iter().filter_map(|id| self.policies.get(id)),
            groups,
            resource_id,
            facts,
        )
    }

    /// Resources a member of `groups` is offered: those an enabled policy
    /// links to one of the groups. Conditions are checked when access is
    /// requested, so a client still lists a resource outside its time window
    /// and learns why it is denied.
    pub fn visible_resources(&self, groups: &[Uuid]) -> BTreeSet<Uuid> {
        groups
            .iter()
            .filter_map(|group| self.by_group.get(group))
            .flatten()
            .filter_map(|id| self.policies.get(id))
            .filter(|policy| !policy.disabled)
            .map(|policy| policy.resource_id)
            .collect()
    }

    /// Groups that reach `resource_id` through an enabled policy.
    pub fn groups_of_resource(&self, resource_id: Uuid) -> BTreeSet<Uuid> {
        self.by_resource
            .get(&resource_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.policies.get(id))
            .filter(|policy| !policy.disabled)
            .map(|policy| policy.group_id)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }
}

fn unlink(index: &mut HashMap<Uuid, Vec<Uuid>>, key: Uuid, id: Uuid) {
    if let Some(ids) = index.get_mut(&key) {
        ids.retain(|&other| other != id);
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

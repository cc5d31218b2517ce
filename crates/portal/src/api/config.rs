//! `/config`: the account's sites, resources, groups and policies as one
//! declaration (SPEC 7.6), what `postern admin export` prints and `postern
//! admin apply` sends. Objects are matched by name (a policy by its group
//! and resource); applying is one transaction (an error leaves nothing
//! half done), answers the changes it made, and a second apply of the same
//! declaration changes nothing. `dry_run` rehearses it in a transaction that
//! is rolled back; `prune` deletes what the declaration does not name.
//! Actors are not declared: groups name their members by email (users,
//! admins) or by name (service accounts).

use std::collections::{HashMap, HashSet};

use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use jiff::Timestamp;
use postern_model::{Condition, Filter, PortRange, Protocol, ResourceType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Commit, Entry, Outcome};
use super::body::Json;
use super::fields::{AddressDescription, Member, Name, PolicyDescription};
use super::problem::{ApiResult, Problem};
use super::{Admin, Shared, now_ms, policies, resources};
use crate::domain::{Actor, Group, GroupKind, PolicyRecord, Resource, Role, Site};
use crate::state::Change;
use crate::store::{self, Conn, actors, groups};

/// Everything `apply` manages.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    #[serde(default)]
    pub sites: Vec<DeclaredSite>,
    #[serde(default)]
    #[schema(schema_with = super::schemas::declared_resources)]
    pub resources: Vec<DeclaredResource>,
    #[serde(default)]
    pub groups: Vec<DeclaredGroup>,
    #[serde(default)]
    pub policies: Vec<DeclaredPolicy>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredSite {
    pub name: Name,
}

/// Its schema is in `schemas` (the address depends on the type).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredResource {
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The site's name.
    pub site: Name,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<DeclaredFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_description: Option<AddressDescription>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<String>,
}

/// A filter whose ports may be a list (`80,443`), one filter per item.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredFilter {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredGroup {
    pub name: Name,
    /// Emails of users and admins, names of service accounts.
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredPolicy {
    /// The group's name (`Everyone` included).
    pub group: Name,
    /// The resource's name.
    pub resource: Name,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = super::schemas::conditions)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<PolicyDescription>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One change `apply` made (or, rehearsed, would make).
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct ChangeLine {
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// `site`, `resource`, `group` or `policy`.
    pub kind: &'static str,
    /// The object's name (a policy: `group -> resource`).
    pub name: String,
    /// The fields an update changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    /// In the order they were made.
    pub changes: Vec<ChangeLine>,
    /// False for a dry run: nothing was changed.
    pub applied: bool,
    /// A digest of `changes`: pass a dry run's as `?plan=` so that the
    /// apply makes what was shown or nothing.
    pub plan: String,
}

/// The digest of a list of changes (SHA-256 of their JSON, hex).
fn plan_of(changes: &[ChangeLine]) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(changes).unwrap_or_default();
    sha2::Sha256::digest(json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `?prune=&dry_run=` (`true` or `false`), read strictly: anything else is
/// a 422 naming the parameter.
pub struct ApplyQuery {
    pub prune: bool,
    pub dry_run: bool,
    /// The `plan` of a dry run this apply must match.
    pub plan: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ApplyQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        let mut prune = false;
        let mut dry_run = false;
        let mut plan = None;
        for (name, value) in
            url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        {
            if name == "plan" {
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Problem::invalid("plan", "must be the plan of a dry run"));
                }
                plan = Some(value.to_ascii_lowercase());
                continue;
            }
            let flag = match name.as_ref() {
                "prune" => &mut prune,
                "dry_run" => &mut dry_run,
                _ => continue,
            };
            *flag = match value.as_ref() {
                "true" => true,
                "false" => false,
                _ => return Err(Problem::invalid(name, "must be true or false")),
            };
        }
        Ok(ApplyQuery {
            prune,
            dry_run,
            plan,
        })
    }
}

/// `prune`/`dry_run` for the document (the extractor above reads them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ApplyParams {
    /// Delete the sites, resources, static groups and policies the
    /// declaration does not name.
    prune: Option<bool>,
    /// The `plan` a dry run answered: the apply is refused (409, nothing
    /// changed) unless it makes exactly those changes.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    plan: Option<String>,
    /// Answer the changes without making them.
    dry_run: Option<bool>,
}

/// Port ranges one declared filter may list (`80,443,8000-8080`).
pub const MAX_PORT_RANGES: usize = 8;

/// A declared filter as the filters it stands for.
fn expand(filter: &DeclaredFilter) -> Result<Vec<Filter>, String> {
    let Some(ports) = &filter.ports else {
        return Ok(vec![Filter {
            protocol: filter.protocol,
            ports: None,
        }]);
    };
    if filter.protocol == Protocol::Icmp {
        return Err("icmp filters take no ports".into());
    }
    if ports.split(',').count() > MAX_PORT_RANGES {
        return Err(format!(
            "at most {MAX_PORT_RANGES} port ranges in one filter"
        ));
    }
    ports
        .split(',')
        .map(|part| {
            part.parse::<PortRange>()
                .map(|range| Filter {
                    protocol: filter.protocol,
                    ports: Some(range),
                })
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What the declaration says alone: filters and addresses well-formed,
/// conditions valid (422, naming the path); names unique per kind (409).
fn check(declaration: &Declaration) -> ApiResult<Vec<Vec<Filter>>> {
    fn unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> ApiResult<()> {
        let mut seen = HashSet::new();
        for (index, name) in names.enumerate() {
            // Each entry is valid alone; together they contradict each
            // other (which one is the site?), which no schema can say: 409.
            if !seen.insert(name) {
                return Err(Problem::conflict_at(
                    format!("{kind}[{index}].name"),
                    format!("{name:?} is declared twice"),
                ));
            }
        }
        Ok(())
    }
    unique("sites", declaration.sites.iter().map(|s| s.name.0.as_str()))?;
    unique(
        "resources",
        declaration.resources.iter().map(|r| r.name.0.as_str()),
    )?;
    unique(
        "groups",
        declaration.groups.iter().map(|g| g.name.0.as_str()),
    )?;
    for (index, policy) in declaration.policies.iter().enumerate() {
        policies::check_conditions(&policy.conditions)
            .map_err(|p| p.within(&format!("policies[{index}]")))?;
    }
    let mut all_filters = Vec::new();
    for (index, resource) in declaration.resources.iter().enumerate() {
        let at = format!("resources[{index}]");
        if resource.filters.len() > super::fields::MAX_FILTERS {
            return Err(Problem::invalid(
                format!("{at}.filters"),
                format!("at most {} filters", super::fields::MAX_FILTERS),
            ));
        }
        let mut filters = Vec::new();
        for (n, filter) in resource.filters.iter().enumerate() {
            filters.extend(
                expand(filter).map_err(|e| Problem::invalid(format!("{at}.filters[{n}]"), e))?,
            );
        }
        resources::check_request(
            Some(resource.kind),
            resource.address.as_deref(),
            Some(&resource.exclusions),
            None,
        )
        .map_err(|p| p.within(&at))?;
        all_filters.push(filters);
    }
    Ok(all_filters)
}

/// The changes and audit entries of one apply, as they are made, and the
/// resources it touched (their gateways must hear of each).
#[derive(Default)]
struct Log {
    changes: Vec<ChangeLine>,
    entries: Vec<Entry>,
    resources: Vec<Uuid>,
}

/// One change: what it did to which object, for the answer and the audit.
struct Noted<'a, T> {
    action: &'static str,
    kind: &'static str,
    name: String,
    fields: Vec<&'static str>,
    audit: &'static str,
    id: Uuid,
    before: Option<&'a T>,
    after: Option<&'a T>,
}

impl Log {
    fn note<T: Serialize>(&mut self, noted: Noted<'_, T>) {
        self.changes.push(ChangeLine {
            action: noted.action,
            kind: noted.kind,
            name: noted.name,
            fields: noted.fields,
        });
        self.entries.push(Entry::change(
            noted.audit,
            noted.id,
            noted.before,
            noted.after,
        ));
    }

    fn created<T: Serialize>(
        &mut self,
        kind: &'static str,
        audit: &'static str,
        name: &str,
        id: Uuid,
        after: &T,
    ) {
        self.note(Noted {
            action: "create",
            kind,
            name: name.to_string(),
            fields: vec![],
            audit,
            id,
            before: None,
            after: Some(after),
        });
    }

    fn deleted<T: Serialize>(
        &mut self,
        kind: &'static str,
        audit: &'static str,
        name: &str,
        id: Uuid,
        before: &T,
    ) {
        self.note(Noted {
            action: "delete",
            kind,
            name: name.to_string(),
            fields: vec![],
            audit,
            id,
            before: Some(before),
            after: None,
        });
    }
}

/// The objects of a kind by name; names are unique for sites and groups
/// (the store says so) but not for resources made before names had to be.
fn by_name<T>(items: Vec<T>, name: impl Fn(&T) -> &str) -> HashMap<String, Vec<T>> {
    let mut named: HashMap<String, Vec<T>> = HashMap::new();
    for item in items {
        named.entry(name(&item).to_string()).or_default().push(item);
    }
    named
}

/// Makes the account match the declaration, in `tx`.
async fn reconcile(
    tx: &mut Conn,
    admin: &Admin,
    declaration: &Declaration,
    filters: &[Vec<Filter>],
    prune: bool,
) -> ApiResult<Log> {
    let account = admin.account_id;
    let now = Timestamp::now();
    let mut log = Log::default();

    // Sites.
    let mut sites: HashMap<String, Site> = store::list_scoped::<Site>(tx, account)
        .await?
        .into_iter()
        .map(|site| (site.name.clone(), site))
        .collect();
    for declared in &declaration.sites {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            sites.entry(declared.name.0.clone())
        {
            let site = Site {
                id: Uuid::new_v4(),
                name: declared.name.0.clone(),
                created_at: now,
            };
            store::sites::insert(tx, account, &site).await?;
            log.created("site", "site.create", &site.name, site.id, &site);
            slot.insert(site);
        }
    }

    // Resources. What prune will delete is known now: it does not count
    // against the one internet resource or a name a declared one takes.
    let mut existing = by_name(store::resources::list(tx, account).await?, |r| {
        r.name.as_str()
    });
    let declared_names: HashSet<&str> = declaration
        .resources
        .iter()
        .map(|r| r.name.0.as_str())
        .collect();
    // In a stable order (the maps' is random): a dry run and the apply
    // after it must list the same changes in the same order (`plan`).
    let mut undeclared_resources: Vec<Resource> = existing
        .iter()
        .filter(|(name, _)| !declared_names.contains(name.as_str()))
        .flat_map(|(_, same)| same.iter().cloned())
        .collect();
    undeclared_resources.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    let leaving: Vec<Uuid> = if prune {
        undeclared_resources.iter().map(|r| r.id).collect()
    } else {
        Vec::new()
    };
    let mut declared_resources: HashMap<String, Resource> = HashMap::new();
    for (index, (declared, filters)) in declaration.resources.iter().zip(filters).enumerate() {
        let at = format!("resources[{index}]");
        let site = sites
            .get(&declared.site.0)
            .ok_or_else(|| Problem::conflict_at(format!("{at}.site"), "no such site"))?;
        let key = declared.name.0.clone();
        let before = match existing.remove(&key).unwrap_or_default() {
            mut one if one.len() <= 1 => one.pop(),
            many => {
                return Err(Problem::conflict_at(
                    format!("{at}.name"),
                    format!(
                        "the account has {} resources named {key:?}: rename or delete all but one first",
                        many.len()
                    ),
                ));
            }
        };
        let mut after = Resource {
            id: before.as_ref().map_or_else(Uuid::new_v4, |r| r.id),
            site_id: site.id,
            name: key.clone(),
            kind: declared.kind,
            address: declared.address.clone(),
            address_description: declared
                .address_description
                .as_ref()
                .map(|d| d.0.clone())
                .filter(|d| !d.is_empty()),
            filters: filters.clone(),
            exclusions: Vec::new(),
            created_at: before.as_ref().map_or(now, |r| r.created_at),
        };
        resources::validate(tx, admin, &mut after, &declared.exclusions, &leaving)
            .await
            .map_err(|p| p.within(&at))?;
        match &before {
            None => {
                store::resources::insert(tx, account, &after).await?;
                log.created("resource", "resource.create", &after.name, after.id, &after);
                log.resources.push(after.id);
            }
            Some(before) => {
                let fields = resource_changes(before, &after);
                if !fields.is_empty() {
                    store::resources::update(tx, account, &after, now_ms()).await?;
                    log.note(Noted {
                        action: "update",
                        kind: "resource",
                        name: after.name.clone(),
                        fields,
                        audit: "resource.update",
                        id: after.id,
                        before: Some(before),
                        after: Some(&after),
                    });
                    log.resources.push(after.id);
                }
            }
        }
        declared_resources.insert(key, after);
    }

    // Groups (static ones; `Everyone`, providers' and directories' are not
    // declared).
    let people = actors::list(tx, account).await?;
    let mut groups_now: HashMap<String, Group> = groups::list(tx, account)
        .await?
        .into_iter()
        .map(|group| (group.name.clone(), group))
        .collect();
    let declared_groups: HashSet<&str> = declaration
        .groups
        .iter()
        .map(|g| g.name.0.as_str())
        .collect();
    for (index, declared) in declaration.groups.iter().enumerate() {
        let at = format!("groups[{index}]");
        let mut members = Vec::new();
        for (n, member) in declared.members.iter().enumerate() {
            members.push(
                member_id(&people, &member.0)
                    .map_err(|why| Problem::conflict_at(format!("{at}.members[{n}]"), why))?,
            );
        }
        members.sort_unstable();
        members.dedup();
        let group = match groups_now.get(&declared.name.0) {
            Some(group) if !declarable(group) => {
                return Err(Problem::conflict_at(
                    format!("{at}.name"),
                    "is a built-in, identity provider's or directory's group, which a declaration \
                     cannot manage",
                ));
            }
            Some(group) => group.clone(),
            None => {
                let group = Group {
                    directory_id: None,
                    id: Uuid::new_v4(),
                    name: declared.name.0.clone(),
                    kind: GroupKind::Static,
                    created_at: now,
                };
                groups::insert(tx, account, &group).await?;
                log.created("group", "group.create", &group.name, group.id, &group);
                groups_now.insert(group.name.clone(), group.clone());
                group
            }
        };
        let mut had = groups::members(tx, account, &group).await?;
        had.sort_unstable();
        if had != members {
            groups::set_members(tx, account, group.id, &members).await?;
            log.note(Noted {
                action: "update",
                kind: "group",
                name: group.name.clone(),
                fields: vec!["members"],
                audit: "group.members",
                id: group.id,
                before: Some(&serde_json::json!({"actor_ids": had})),
                after: Some(&serde_json::json!({"actor_ids": members})),
            });
        }
    }

    // Policies, by group and resource; with prune only between what stays.
    let mut wanted = Vec::new();
    for (index, declared) in declaration.policies.iter().enumerate() {
        let at = format!("policies[{index}]");
        let group = groups_now
            .get(&declared.group.0)
            .ok_or_else(|| Problem::conflict_at(format!("{at}.group"), "no such group"))?;
        if prune && declarable(group) && !declared_groups.contains(group.name.as_str()) {
            return Err(Problem::conflict_at(
                format!("{at}.group"),
                "names a group this prune deletes (declare it in groups)",
            ));
        }
        let resource = match declared_resources.get(&declared.resource.0) {
            Some(resource) => resource,
            None if prune => {
                return Err(Problem::conflict_at(
                    format!("{at}.resource"),
                    "names a resource this prune deletes or that does not exist (declare it in resources)",
                ));
            }
            None => {
                let mut same = undeclared_resources
                    .iter()
                    .filter(|r| r.name == declared.resource.0);
                match (same.next(), same.next()) {
                    (Some(one), None) => one,
                    (None, _) => {
                        return Err(Problem::conflict_at(
                            format!("{at}.resource"),
                            "no such resource",
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(Problem::conflict_at(
                            format!("{at}.resource"),
                            "the account has several resources of this name",
                        ));
                    }
                }
            }
        };
        let policy = PolicyRecord {
            id: Uuid::new_v4(),
            group_id: group.id,
            resource_id: resource.id,
            conditions: declared.conditions.clone(),
            description: declared
                .description
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            disabled: declared.disabled,
            created_at: now,
        };
        wanted.push((format!("{} -> {}", group.name, resource.name), policy));
    }
    let mut policies_now = store::policies::list(tx, account).await?;
    // A declared policy takes the stored one of its pair that is already
    // the same, else any of its pair, else is created: several policies of
    // one pair are kept apart by their content, not by their order.
    let same_content = |a: &PolicyRecord, b: &PolicyRecord| {
        a.conditions == b.conditions && a.description == b.description && a.disabled == b.disabled
    };
    let same_pair = |a: &PolicyRecord, b: &PolicyRecord| {
        a.group_id == b.group_id && a.resource_id == b.resource_id
    };
    let mut matched: Vec<Option<PolicyRecord>> = wanted
        .iter()
        .map(|(_, policy)| {
            let at = policies_now
                .iter()
                .position(|p| same_pair(p, policy) && same_content(p, policy))?;
            Some(policies_now.remove(at))
        })
        .collect();
    for ((_, policy), found) in wanted.iter().zip(matched.iter_mut()) {
        if found.is_none() {
            *found = policies_now
                .iter()
                .position(|p| same_pair(p, policy))
                .map(|at| policies_now.remove(at));
        }
    }
    for ((name, policy), found) in wanted.into_iter().zip(matched) {
        match found {
            None => {
                store::policies::insert(tx, account, &policy).await?;
                log.created("policy", "policy.create", &name, policy.id, &policy);
            }
            Some(before) => {
                let after = PolicyRecord {
                    id: before.id,
                    created_at: before.created_at,
                    ..policy
                };
                let mut fields = Vec::new();
                if after.conditions != before.conditions {
                    fields.push("conditions");
                }
                if after.description != before.description {
                    fields.push("description");
                }
                if after.disabled != before.disabled {
                    fields.push("disabled");
                }
                if !fields.is_empty() {
                    store::policies::update(tx, account, &after, now_ms()).await?;
                    log.note(Noted {
                        action: "update",
                        kind: "policy",
                        name,
                        fields,
                        audit: "policy.update",
                        id: after.id,
                        before: Some(&before),
                        after: Some(&after),
                    });
                }
            }
        }
    }

    if prune {
        // Policies first, sites last: nothing goes with another unaudited.
        let group_names: HashMap<Uuid, String> = groups_now
            .values()
            .map(|g| (g.id, g.name.clone()))
            .collect();
        let resource_names: HashMap<Uuid, String> = declared_resources
            .values()
            .chain(&undeclared_resources)
            .map(|r| (r.id, r.name.clone()))
            .collect();
        for policy in policies_now {
            store::policies::delete(tx, account, policy.id).await?;
            let name = format!(
                "{} -> {}",
                group_names
                    .get(&policy.group_id)
                    .map_or("?", String::as_str),
                resource_names
                    .get(&policy.resource_id)
                    .map_or("?", String::as_str)
            );
            log.deleted("policy", "policy.delete", &name, policy.id, &policy);
        }
        for resource in &undeclared_resources {
            store::resources::delete(tx, account, resource.id).await?;
            log.deleted(
                "resource",
                "resource.delete",
                &resource.name,
                resource.id,
                resource,
            );
            log.resources.push(resource.id);
        }
        let mut groups_left: Vec<&Group> = groups_now.values().collect();
        groups_left.sort_by(|a, b| a.name.cmp(&b.name));
        for group in groups_left {
            if declarable(group) && !declared_groups.contains(group.name.as_str()) {
                groups::delete(tx, account, group.id).await?;
                log.deleted("group", "group.delete", &group.name, group.id, group);
            }
        }
        let declared_sites: HashSet<&str> = declaration
            .sites
            .iter()
            .map(|s| s.name.0.as_str())
            .chain(declaration.resources.iter().map(|r| r.site.0.as_str()))
            .collect();
        let mut sites_left: Vec<&Site> = sites.values().collect();
        sites_left.sort_by(|a, b| a.name.cmp(&b.name));
        for site in sites_left {
            if !declared_sites.contains(site.name.as_str()) {
                store::sites::delete(tx, account, site.id).await?;
                log.deleted("site", "site.delete", &site.name, site.id, site);
            }
        }
    }
    Ok(log)
}

/// A member as the declaration names it: a user's or admin's email, or a
/// service account's name; exactly first, then ignoring case; more than one
/// actor so named is refused, not guessed.
fn member_id(people: &[Actor], member: &str) -> Result<Uuid, &'static str> {
    let named = |exact: bool| -> Vec<Uuid> {
        people
            .iter()
            .filter(|actor| {
                let name = match actor.role {
                    Role::ServiceAccount => Some(actor.name.as_str()),
                    Role::User | Role::Admin => actor.email.as_deref(),
                };
                name.is_some_and(|name| {
                    if exact {
                        name == member
                    } else {
                        name.eq_ignore_ascii_case(member)
                    }
                })
            })
            .map(|actor| actor.id)
            .collect()
    };
    let exact = named(true);
    let found = if exact.is_empty() {
        named(false)
    } else {
        exact
    };
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err("no user or admin with this email, nor service account of this name"),
        _ => Err("names more than one actor (service accounts of one name): rename them"),
    }
}

fn resource_changes(before: &Resource, after: &Resource) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut differs = |field, changed: bool| {
        if changed {
            fields.push(field);
        }
    };
    differs("type", before.kind != after.kind);
    differs("address", before.address != after.address);
    differs("site", before.site_id != after.site_id);
    differs("filters", before.filters != after.filters);
    differs(
        "address_description",
        before.address_description != after.address_description,
    );
    differs("exclusions", before.exclusions != after.exclusions);
    fields
}

#[utoipa::path(post, path = "/config", tag = "config", params(ApplyParams),
    request_body = Declaration,
    description = "Makes the account's sites, resources, static groups and policies match the \
        declaration, in one transaction; answers the changes. Matched by name (a policy by its \
        group and resource); with `prune`, what it does not name is deleted; with `dry_run`, \
        nothing is changed.",
    responses((status = 200, body = Applied)))]
pub async fn apply(
    state: Shared,
    admin: Admin,
    query: ApplyQuery,
    Json(declaration): Json<Declaration>,
) -> ApiResult<impl IntoResponse> {
    let filters = check(&declaration)?;
    let commit = if query.dry_run {
        Commit::Rehearse
    } else {
        Commit::Yes
    };
    audited::run(&state, &admin, commit, async |tx| {
        let log = reconcile(tx, &admin, &declaration, &filters, query.prune).await?;
        let plan = plan_of(&log.changes);
        if query.plan.as_ref().is_some_and(|shown| *shown != plan) {
            // An error: the transaction rolls back.
            return Err(Problem::conflict_at(
                "plan",
                "the account changed since the plan was made: nothing was applied; make a new plan",
            ));
        }
        // Many objects may have changed: every client of the account is
        // evaluated again (a declaration is applied rarely), and gateways
        // hear of each resource that changed (their copies narrow at once).
        let notices = if log.changes.is_empty() {
            audited::Notices::Quiet("the declaration matched the account already")
        } else {
            let mut changes = vec![Change::Everything];
            changes.extend(log.resources.iter().map(|id| Change::Resource(*id)));
            audited::Notices::Publish(changes)
        };
        let applied = Applied {
            changes: log.changes,
            applied: commit == Commit::Yes,
            plan,
        };
        Ok(Outcome::batch(axum::Json(applied), log.entries, notices))
    })
    .await
}

#[utoipa::path(get, path = "/config", tag = "config",
    description = "The account's sites, resources, static groups and policies as a declaration \
        that `POST /config` maps to no change.",
    responses((status = 200, body = Declaration)))]
pub async fn export(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let account = admin.account_id;
    let mut tx = state.store.read().await?;
    let sites: Vec<Site> = store::list_scoped(&mut tx, account).await?;
    let resources = store::resources::list(&mut tx, account).await?;
    let all_groups = groups::list(&mut tx, account).await?;
    let people = actors::list(&mut tx, account).await?;
    let policies = store::policies::list(&mut tx, account).await?;
    let mut declared_groups = Vec::new();
    for group in all_groups.iter().filter(|g| declarable(g)) {
        let ids = groups::members(&mut tx, account, group).await?;
        let members: Vec<String> = people
            .iter()
            .filter(|a| ids.contains(&a.id))
            .filter_map(|a| match a.role {
                Role::ServiceAccount => Some(a.name.clone()),
                Role::User | Role::Admin => a.email.clone(),
            })
            .collect();
        declared_groups.push(DeclaredGroup {
            name: Name(group.name.clone()),
            members: members.into_iter().map(Member).collect(),
        });
    }
    tx.commit().await?;
    let site_name: HashMap<Uuid, &str> = sites.iter().map(|s| (s.id, s.name.as_str())).collect();
    let group_name: HashMap<Uuid, &str> =
        all_groups.iter().map(|g| (g.id, g.name.as_str())).collect();
    let resource_name: HashMap<Uuid, &str> =
        resources.iter().map(|r| (r.id, r.name.as_str())).collect();
    let declaration = Declaration {
        sites: sites
            .iter()
            .map(|s| DeclaredSite {
                name: Name(s.name.clone()),
            })
            .collect(),
        resources: resources
            .iter()
            .map(|r| DeclaredResource {
                name: Name(r.name.clone()),
                kind: r.kind,
                address: r.address.clone(),
                site: Name(
                    site_name
                        .get(&r.site_id)
                        .copied()
                        .unwrap_or_default()
                        .to_string(),
                ),
                filters: r
                    .filters
                    .iter()
                    .map(|f| DeclaredFilter {
                        protocol: f.protocol,
                        ports: f.ports.map(|p| p.to_string()),
                    })
                    .collect(),
                address_description: r.address_description.clone().map(AddressDescription),
                exclusions: r.exclusions.iter().map(|n| n.to_string()).collect(),
            })
            .collect(),
        groups: declared_groups,
        policies: policies
            .iter()
            .filter_map(|p| {
                Some(DeclaredPolicy {
                    group: Name(group_name.get(&p.group_id)?.to_string()),
                    resource: Name(resource_name.get(&p.resource_id)?.to_string()),
                    conditions: p.conditions.clone(),
                    description: Some(p.description.clone())
                        .filter(|d| !d.is_empty())
                        .map(PolicyDescription),
                    disabled: p.disabled,
                })
            })
            .collect(),
    };
    Ok(axum::Json(declaration))
}

/// Groups a declaration manages: admins' own, not `Everyone`, not an
/// identity provider's, not a directory's.
fn declarable(group: &Group) -> bool {
    group.kind == GroupKind::Static && group.directory_id.is_none()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::extract::State;

    use super::*;
    use crate::state::AppState;
    use crate::store::Store;

    async fn account() -> (Arc<AppState>, Admin) {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let init = crate::setup::init_account(&store, "acme", "admin@example.test")
            .await
            .unwrap();
        let admin = Admin {
            account_id: init.account.id,
            actor_id: init.admin_id,
            token_id: Uuid::from_u128(7),
        };
        (Arc::new(AppState::new(store)), admin)
    }

    fn declaration(ports: &str) -> Declaration {
        serde_json::from_value(serde_json::json!({
            "sites": [{"name": "office"}],
            "resources": [{"name": "web", "type": "cidr", "address": "10.0.1.0/24",
                           "site": "office", "filters": [{"protocol": "tcp", "ports": ports}]}],
        }))
        .unwrap()
    }

    async fn apply_as(
        state: &Arc<AppState>,
        admin: Admin,
        declaration: Declaration,
        dry_run: bool,
        plan: Option<String>,
    ) -> ApiResult<Applied> {
        let query = ApplyQuery {
            prune: false,
            dry_run,
            plan,
        };
        let answer = apply(State(state.clone()), admin, query, Json(declaration)).await?;
        let response = answer.into_response();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        Ok(Applied {
            changes: Vec::new(),
            applied: value["applied"].as_bool().unwrap(),
            plan: value["plan"].as_str().unwrap().to_string(),
        })
    }

    /// Narrowing a resource by a declaration reaches its gateways: the
    /// resource's own change is published, not only "everything".
    #[tokio::test]
    async fn a_changed_resource_is_published_for_its_gateways() {
        let (state, admin) = account().await;
        let mut published = state.subscribe_changes();
        apply_as(&state, admin, declaration("80,443"), false, None)
            .await
            .unwrap();
        let mut first = Vec::new();
        while let Ok((_, change)) = published.try_recv() {
            first.push(change);
        }
        let web = {
            let mut tx = state.store.read().await.unwrap();
            store::resources::list(&mut tx, admin.account_id)
                .await
                .unwrap()[0]
                .clone()
        };
        assert!(first.contains(&Change::Resource(web.id)), "{first:?}");
        apply_as(&state, admin, declaration("443"), false, None)
            .await
            .unwrap();
        let mut second = Vec::new();
        while let Ok((_, change)) = published.try_recv() {
            second.push(change);
        }
        assert!(second.contains(&Change::Resource(web.id)), "{second:?}");
        assert!(second.contains(&Change::Everything), "{second:?}");
    }

    /// An apply bound to a plan makes exactly it or nothing.
    #[tokio::test]
    async fn an_apply_refuses_a_plan_the_account_moved_away_from() {
        let (state, admin) = account().await;
        let plan = apply_as(&state, admin, declaration("80"), true, None)
            .await
            .unwrap();
        assert!(!plan.applied);
        // Meanwhile, someone creates the site.
        let site_only: Declaration =
            serde_json::from_value(serde_json::json!({"sites": [{"name": "office"}]})).unwrap();
        apply_as(&state, admin, site_only, false, None)
            .await
            .unwrap();
        let refused = apply_as(&state, admin, declaration("80"), false, Some(plan.plan))
            .await
            .unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::CONFLICT);
        assert_eq!(refused.field.as_deref(), Some("plan"));
        let mut tx = state.store.read().await.unwrap();
        assert!(
            store::resources::list(&mut tx, admin.account_id)
                .await
                .unwrap()
                .is_empty(),
            "nothing of the refused apply stays"
        );
    }

    /// A prune's plan is the same each time it is made (the apply checks
    /// it against the dry run's): deletions come in a stable order.
    #[tokio::test]
    async fn a_prune_plans_the_same_changes_every_time() {
        let (state, admin) = account().await;
        let many: Declaration = serde_json::from_value(serde_json::json!({
            "sites": (0..12).map(|n| serde_json::json!({"name": format!("site {n}")})).collect::<Vec<_>>(),
            "groups": (0..12).map(|n| serde_json::json!({"name": format!("group {n}")})).collect::<Vec<_>>(),
        }))
        .unwrap();
        apply_as(&state, admin, many, false, None).await.unwrap();
        let prune_all = || ApplyQuery {
            prune: true,
            dry_run: true,
            plan: None,
        };
        let mut plans = HashSet::new();
        for _ in 0..4 {
            let answer = apply(
                State(state.clone()),
                admin,
                prune_all(),
                Json(Declaration::default()),
            )
            .await
            .unwrap()
            .into_response();
            let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
                .await
                .unwrap();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(value["changes"].as_array().unwrap().len(), 24);
            plans.insert(value["plan"].as_str().unwrap().to_string());
        }
        assert_eq!(plans.len(), 1, "{plans:?}");
    }

    #[test]
    fn members_are_matched_exactly_then_by_case_and_never_guessed() {
        let actor = |name: &str, email: Option<&str>, role| Actor {
            id: Uuid::new_v4(),
            name: name.into(),
            email: email.map(str::to_string),
            role,
            disabled: false,
            directory_id: None,
            created_at: Timestamp::now(),
        };
        let people = [
            actor("ci", None, Role::ServiceAccount),
            actor("CI", None, Role::ServiceAccount),
            actor("Build", None, Role::ServiceAccount),
            actor("Alice", Some("alice@acme.test"), Role::User),
        ];
        assert_eq!(member_id(&people, "CI"), Ok(people[1].id));
        assert_eq!(member_id(&people, "build"), Ok(people[2].id));
        assert_eq!(member_id(&people, "ALICE@acme.test"), Ok(people[3].id));
        assert!(
            member_id(&people, "Ci").is_err(),
            "two match by case: refused"
        );
        assert!(
            member_id(&people, "Alice").is_err(),
            "users are named by email"
        );
    }
}

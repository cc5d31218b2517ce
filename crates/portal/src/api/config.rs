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
use super::fields::{AddressDescription, Name, PolicyDescription};
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
    #[schema(schema_with = members_schema)]
    pub members: Vec<String>,
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

fn members_schema() -> utoipa::openapi::schema::Schema {
    super::fields::json_schema(serde_json::json!({
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": 255},
        "example": ["alice@example.com", "ci-runner"],
    }))
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
}

/// `?prune=&dry_run=` (`true` or `false`), read strictly: anything else is
/// a 422 naming the parameter.
pub struct ApplyQuery {
    pub prune: bool,
    pub dry_run: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for ApplyQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        let mut prune = false;
        let mut dry_run = false;
        for (name, value) in
            url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        {
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
        Ok(ApplyQuery { prune, dry_run })
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
    /// Answer the changes without making them.
    dry_run: Option<bool>,
}

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
            Some(&filters),
        )
        .map_err(|p| p.within(&at))?;
        all_filters.push(filters);
    }
    Ok(all_filters)
}

/// The changes and audit entries of one apply, as they are made.
#[derive(Default)]
struct Log {
    changes: Vec<ChangeLine>,
    entries: Vec<Entry>,
}

impl Log {
    #[allow(clippy::too_many_arguments)]
    fn note<T: Serialize>(
        &mut self,
        action: &'static str,
        kind: &'static str,
        name: String,
        fields: Vec<&'static str>,
        audit: &'static str,
        id: Uuid,
        before: Option<&T>,
        after: Option<&T>,
    ) {
        self.changes.push(ChangeLine {
            action,
            kind,
            name,
            fields,
        });
        self.entries.push(Entry::change(audit, id, before, after));
    }
}

fn by_name<T>(items: Vec<T>, name: impl Fn(&T) -> &str) -> HashMap<String, T> {
    items
        .into_iter()
        .map(|item| (name(&item).to_string(), item))
        .collect()
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
    let mut sites = by_name(store::list_scoped::<Site>(tx, account).await?, |s| {
        s.name.as_str()
    });
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
            log.note(
                "create",
                "site",
                site.name.clone(),
                vec![],
                "site.create",
                site.id,
                None,
                Some(&site),
            );
            slot.insert(site);
        }
    }

    // Resources.
    let mut existing = by_name(store::resources::list(tx, account).await?, |r| {
        r.name.as_str()
    });
    let mut declared_resources = HashMap::new();
    for (index, (declared, filters)) in declaration.resources.iter().zip(filters).enumerate() {
        let at = format!("resources[{index}]");
        let site = sites
            .get(&declared.site.0)
            .ok_or_else(|| Problem::conflict_at(format!("{at}.site"), "no such site"))?;
        let key = declared.name.0.clone();
        let before = existing.remove(&key);
        let mut after = Resource {
            id: before.as_ref().map_or_else(Uuid::new_v4, |r| r.id),
            site_id: site.id,
            name: declared.name.0.clone(),
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
        resources::validate(tx, admin, &mut after, &declared.exclusions)
            .await
            .map_err(|p| p.within(&at))?;
        match &before {
            None => {
                store::resources::insert(tx, account, &after).await?;
                log.note(
                    "create",
                    "resource",
                    after.name.clone(),
                    vec![],
                    "resource.create",
                    after.id,
                    None,
                    Some(&after),
                );
            }
            Some(before) => {
                let fields = resource_changes(before, &after);
                if !fields.is_empty() {
                    store::resources::update(tx, account, &after, now_ms()).await?;
                    log.note(
                        "update",
                        "resource",
                        after.name.clone(),
                        fields,
                        "resource.update",
                        after.id,
                        Some(before),
                        Some(&after),
                    );
                }
            }
        }
        declared_resources.insert(key, after);
    }
    let undeclared_resources: Vec<Resource> = existing.into_values().collect();

    // Groups (static ones; `Everyone` and providers' are not declared).
    let people = actors::list(tx, account).await?;
    let mut groups_now = by_name(groups::list(tx, account).await?, |g| g.name.as_str());
    let mut declared_groups = HashSet::new();
    for (index, declared) in declaration.groups.iter().enumerate() {
        let at = format!("groups[{index}]");
        let mut members = Vec::new();
        for (n, member) in declared.members.iter().enumerate() {
            members.push(member_id(&people, member).ok_or_else(|| {
                Problem::conflict_at(
                    format!("{at}.members[{n}]"),
                    format!(
                        "no user or admin with this email, nor service account so named: {member:?}"
                    ),
                )
            })?);
        }
        members.sort_unstable();
        members.dedup();
        let key = declared.name.0.clone();
        declared_groups.insert(key.clone());
        let group = match groups_now.get(&key) {
            Some(group) if group.kind != GroupKind::Static => {
                return Err(Problem::conflict_at(
                    format!("{at}.name"),
                    "is a built-in or identity provider's group, which a declaration cannot manage",
                ));
            }
            Some(group) => group.clone(),
            None => {
                let group = Group {
                    id: Uuid::new_v4(),
                    name: declared.name.0.clone(),
                    kind: GroupKind::Static,
                    created_at: now,
                };
                groups::insert(tx, account, &group).await?;
                log.note(
                    "create",
                    "group",
                    group.name.clone(),
                    vec![],
                    "group.create",
                    group.id,
                    None,
                    Some(&group),
                );
                groups_now.insert(key, group.clone());
                group
            }
        };
        let mut had = groups::members(tx, account, &group).await?;
        had.sort_unstable();
        if had != members {
            groups::set_members(tx, account, group.id, &members).await?;
            log.note(
                "update",
                "group",
                group.name.clone(),
                vec!["members"],
                "group.members",
                group.id,
                Some(&serde_json::json!({"actor_ids": had})),
                Some(&serde_json::json!({"actor_ids": members})),
            );
        }
    }

    // Policies, by group and resource.
    let mut policies_now = store::policies::list(tx, account).await?;
    let mut kept = HashSet::new();
    for (index, declared) in declaration.policies.iter().enumerate() {
        let at = format!("policies[{index}]");
        let group = groups_now
            .get(&declared.group.0)
            .ok_or_else(|| Problem::conflict_at(format!("{at}.group"), "no such group"))?;
        let resource = declared_resources
            .get(&declared.resource.0)
            .or_else(|| {
                undeclared_resources
                    .iter()
                    .find(|r| r.name == declared.resource.0)
            })
            .ok_or_else(|| Problem::conflict_at(format!("{at}.resource"), "no such resource"))?;
        let name = format!("{} -> {}", group.name, resource.name);
        let description = declared
            .description
            .as_ref()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        let found = policies_now.iter().position(|p| {
            p.group_id == group.id && p.resource_id == resource.id && !kept.contains(&p.id)
        });
        match found {
            None => {
                let policy = PolicyRecord {
                    id: Uuid::new_v4(),
                    group_id: group.id,
                    resource_id: resource.id,
                    conditions: declared.conditions.clone(),
                    description,
                    disabled: declared.disabled,
                    created_at: now,
                };
                store::policies::insert(tx, account, &policy).await?;
                kept.insert(policy.id);
                log.note(
                    "create",
                    "policy",
                    name,
                    vec![],
                    "policy.create",
                    policy.id,
                    None,
                    Some(&policy),
                );
            }
            Some(at_index) => {
                let before = policies_now.remove(at_index);
                let mut after = before.clone();
                after.conditions = declared.conditions.clone();
                after.description = description;
                after.disabled = declared.disabled;
                kept.insert(after.id);
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
                    log.note(
                        "update",
                        "policy",
                        name,
                        fields,
                        "policy.update",
                        after.id,
                        Some(&before),
                        Some(&after),
                    );
                }
            }
        }
    }

    if prune {
        // Policies first, sites last: what goes with each is gone before it.
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
            log.note(
                "delete",
                "policy",
                name,
                vec![],
                "policy.delete",
                policy.id,
                Some(&policy),
                None,
            );
        }
        for resource in &undeclared_resources {
            store::resources::delete(tx, account, resource.id).await?;
            log.note(
                "delete",
                "resource",
                resource.name.clone(),
                vec![],
                "resource.delete",
                resource.id,
                Some(resource),
                None,
            );
        }
        for (key, group) in &groups_now {
            if group.kind == GroupKind::Static && !declared_groups.contains(key) {
                groups::delete(tx, account, group.id).await?;
                log.note(
                    "delete",
                    "group",
                    group.name.clone(),
                    vec![],
                    "group.delete",
                    group.id,
                    Some(group),
                    None,
                );
            }
        }
        let declared_sites: HashSet<String> = declaration
            .sites
            .iter()
            .map(|s| s.name.0.clone())
            .chain(declaration.resources.iter().map(|r| r.site.0.clone()))
            .collect();
        for (key, site) in &sites {
            if !declared_sites.contains(key) {
                store::sites::delete(tx, account, site.id).await?;
                log.note(
                    "delete",
                    "site",
                    site.name.clone(),
                    vec![],
                    "site.delete",
                    site.id,
                    Some(site),
                    None,
                );
            }
        }
    }
    Ok(log)
}

/// A member as the declaration names it: a user's or admin's email, or a
/// service account's name.
fn member_id(people: &[Actor], member: &str) -> Option<Uuid> {
    let member = member.trim();
    people
        .iter()
        .find(|actor| match actor.role {
            Role::ServiceAccount => actor.name.eq_ignore_ascii_case(member),
            Role::User | Role::Admin => actor
                .email
                .as_deref()
                .is_some_and(|email| email.eq_ignore_ascii_case(member)),
        })
        .map(|actor| actor.id)
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
        // Many objects may have changed: every client of the account is
        // evaluated again (a declaration is applied rarely).
        let notices = if log.changes.is_empty() {
            audited::Notices::Quiet("the declaration matched the account already")
        } else {
            audited::Notices::Publish(vec![Change::Everything])
        };
        let applied = Applied {
            changes: log.changes,
            applied: commit == Commit::Yes,
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
    for group in all_groups.iter().filter(|g| g.kind == GroupKind::Static) {
        let ids = groups::members(&mut tx, account, group).await?;
        let members = people
            .iter()
            .filter(|a| ids.contains(&a.id))
            .filter_map(|a| match a.role {
                Role::ServiceAccount => Some(a.name.clone()),
                Role::User | Role::Admin => a.email.clone(),
            })
            .collect();
        declared_groups.push(DeclaredGroup {
            name: Name(group.name.clone()),
            members,
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

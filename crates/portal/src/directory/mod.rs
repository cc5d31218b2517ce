//! Directory sync (SPEC 7.3): users and groups that a company directory
//! owns. A SCIM 2.0 directory pushes them (`scim`), an LDAP directory is
//! pulled (`ldap`); both land here, in one transaction per change, as the
//! actors, groups and memberships the policy engine reads, with an audit
//! entry naming the directory and the notices that make continuous
//! evaluation act at once (a deactivated user's channels close, a group
//! change re-decides access).
//!
//! What a directory says of each object is kept as a SCIM document
//! (`store::directories::Entry`), from which the Postern fields derive:
//! the name from `displayName` (else the formatted or given and family
//! name, else `userName`), the email from the primary email (else the first,
//! else a `userName` that is an address), the enabled state from `active`.
//! Group members may be users or groups of the same directory; nested
//! groups are flattened into memberships.

pub mod ldap;
pub mod scim;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::Timestamp;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::api::audited::Entry as AuditEntry;
use crate::api::fields::{EMAIL, NAME};
use crate::domain::{Actor, Group, GroupKind, Role, TokenKind};
use crate::state::Change;
use crate::store::directories::{self, Entry, EntryKind};
use crate::store::{Conn, StoreError, actors, groups, tokens};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Another object holds a unique value (an email, a name).
    #[error("{0}")]
    Conflict(String),
    /// The directory sent something Postern cannot keep (an unknown member).
    #[error("{0}")]
    Invalid(String),
    /// The directory was deleted meanwhile.
    #[error("the directory no longer exists")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ProvisionError {
    fn from(error: sqlx::Error) -> Self {
        ProvisionError::Store(error.into())
    }
}

/// What a provisioning step did: its audit entries and notices.
#[derive(Debug, Default)]
pub struct Effects {
    pub audit: Vec<AuditEntry>,
    pub changes: Vec<Change>,
}

/// One directory's writes inside one transaction, which holds the
/// directory's lock (`begin`): its writes on every node run one after the
/// other, each reading what the one before wrote.
pub struct Provisioner<'a> {
    pub conn: &'a mut Conn,
    pub account: Uuid,
    pub directory: Uuid,
    pub effects: Effects,
    /// The directory's user and group ids, read once per transaction.
    known: Option<Known>,
    /// A group or a group's member changed: memberships need settling.
    groups_changed: bool,
}

#[derive(Default)]
struct Known {
    users: HashSet<Uuid>,
    groups: HashSet<Uuid>,
}

/// The Postern fields of a user document.
#[derive(Debug, PartialEq)]
struct UserFields {
    name: String,
    email: Option<String>,
    active: bool,
}

fn text<'a>(document: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    document
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A name Postern's rules accept: control characters dropped, at most 255
/// characters; `fallback` when nothing is left.
fn clean_name(text: &str, fallback: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>()
        .trim()
        .to_string();
    if NAME.accepts(&cleaned) {
        cleaned
    } else {
        fallback
            .chars()
            .filter(|c| !c.is_control())
            .take(255)
            .collect()
    }
}

fn user_fields(document: &Map<String, Value>) -> UserFields {
    let user_name = text(document, "userName").unwrap_or("user");
    let name = document.get("name").and_then(Value::as_object);
    let from_parts = name.and_then(|n| {
        text(n, "formatted").map(str::to_string).or_else(|| {
            let parts: Vec<&str> = ["givenName", "familyName"]
                .iter()
                .filter_map(|k| text(n, k))
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
    });
    let display = text(document, "displayName")
        .map(str::to_string)
        .or(from_parts)
        .unwrap_or_else(|| user_name.to_string());
    let emails: Vec<&Map<String, Value>> = document
        .get("emails")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let primary = emails
        .iter()
        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
        .or(emails.first())
        .and_then(|e| text(e, "value"));
    let email = primary
        .or(Some(user_name))
        .filter(|e| EMAIL.accepts(e))
        .map(|e| e.trim().to_ascii_lowercase());
    UserFields {
        name: clean_name(&display, user_name),
        email,
        active: document.get("active") != Some(&Value::Bool(false)),
    }
}

/// The key a user or group is unique by in its directory.
pub fn name_key(kind: EntryKind, document: &Map<String, Value>) -> String {
    let field = match kind {
        EntryKind::User => "userName",
        EntryKind::Group => "displayName",
    };
    text(document, field).unwrap_or_default().to_lowercase()
}

/// The ids a group document names as members.
pub fn member_ids(document: &Map<String, Value>) -> Vec<Option<Uuid>> {
    document
        .get("members")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|m| {
                    m.get("value")
                        .and_then(Value::as_str)
                        .and_then(|v| Uuid::try_parse(v.trim()).ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

impl<'a> Provisioner<'a> {
    /// Locks the directory for the transaction `conn` is in.
    pub async fn begin(
        conn: &'a mut Conn,
        account: Uuid,
        directory: Uuid,
    ) -> Result<Provisioner<'a>, ProvisionError> {
        if !directories::lock(conn, directory).await? {
            return Err(ProvisionError::Gone);
        }
        Ok(Provisioner {
            conn,
            account,
            directory,
            effects: Effects::default(),
            known: None,
            groups_changed: false,
        })
    }

    /// Settles memberships if groups changed; the effects to record and
    /// publish.
    pub async fn finish(mut self) -> Result<Effects, ProvisionError> {
        if self.groups_changed {
            self.settle_memberships().await?;
        }
        Ok(self.effects)
    }

    async fn known(&mut self) -> Result<&mut Known, ProvisionError> {
        if self.known.is_none() {
            let users = directories::entry_ids(self.conn, self.directory, EntryKind::User).await?;
            let groups =
                directories::entry_ids(self.conn, self.directory, EntryKind::Group).await?;
            self.known = Some(Known {
                users: users.into_iter().collect(),
                groups: groups.into_iter().collect(),
            });
        }
        Ok(self.known.get_or_insert_with(Known::default))
    }

    fn conflict(error: StoreError, what: String) -> ProvisionError {
        match error {
            StoreError::Conflict(_) => ProvisionError::Conflict(what),
            other => ProvisionError::Store(other),
        }
    }

    /// Creates or replaces a user from its document; `id` of a new one is
    /// chosen by the caller. Returns the stored entry.
    pub async fn put_user(
        &mut self,
        id: Uuid,
        document: Map<String, Value>,
        external_id: Option<String>,
        existing: Option<Entry>,
        now: Timestamp,
    ) -> Result<Entry, ProvisionError> {
        let fields = user_fields(&document);
        let key = name_key(EntryKind::User, &document);
        if let Some(other) =
            directories::entry_by_name(self.conn, self.directory, EntryKind::User, &key).await?
            && other.id != id
        {
            return Err(ProvisionError::Conflict(format!(
                "a user named {key:?} exists in this directory"
            )));
        }
        let entry = Entry {
            id,
            kind: EntryKind::User,
            name_key: key,
            external_id,
            version: existing.as_ref().map_or(1, |e| e.version + 1),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
            document,
        };
        let taken = |email: &Option<String>| {
            format!(
                "the email {} belongs to another Postern user (not this directory's): \
                 delete that user or give this one another address",
                email.as_deref().unwrap_or_default()
            )
        };
        if let Some(email) = &fields.email
            && let Some(holder) = actors::by_email(self.conn, self.account, email).await?
            && holder.id != id
        {
            return Err(ProvisionError::Conflict(taken(&fields.email)));
        }
        match actors::get(self.conn, self.account, id).await? {
            None => {
                let actor = Actor {
                    id,
                    name: fields.name,
                    email: fields.email,
                    role: Role::User,
                    disabled: !fields.active,
                    directory_id: Some(self.directory),
                    created_at: crate::domain::from_millis(now.as_millisecond()),
                };
                actors::insert(self.conn, self.account, &actor)
                    .await
                    .map_err(|e| Self::conflict(e, taken(&actor.email)))?;
                self.known().await?.users.insert(id);
                self.effects.audit.push(AuditEntry::change(
                    "actor.create",
                    id,
                    None::<&Actor>,
                    Some(&actor),
                ));
                self.effects.changes.push(Change::Actors(vec![id]));
            }
            Some(before) => {
                let after = Actor {
                    name: fields.name,
                    email: fields.email,
                    disabled: !fields.active,
                    ..before.clone()
                };
                if after != before {
                    actors::update(self.conn, self.account, &after, now.as_millisecond())
                        .await
                        .map_err(|e| Self::conflict(e, taken(&after.email)))?;
                    if after.disabled && !before.disabled {
                        self.revoke_tokens(id).await?;
                    }
                    self.effects.audit.push(AuditEntry::change(
                        "actor.update",
                        id,
                        Some(&before),
                        Some(&after),
                    ));
                    self.effects.changes.push(Change::Actors(vec![id]));
                }
            }
        }
        directories::put_entry(self.conn, self.account, self.directory, &entry).await?;
        Ok(entry)
    }

    /// A deactivated user's tokens go: signing in again is needed even
    /// once the directory reactivates them.
    async fn revoke_tokens(&mut self, actor: Uuid) -> Result<(), ProvisionError> {
        let revoked = tokens::delete_of_actor(
            self.conn,
            self.account,
            actor,
            &[TokenKind::Client, TokenKind::Browser, TokenKind::Api],
        )
        .await?;
        self.effects
            .changes
            .extend(revoked.into_iter().map(Change::TokenRevoked));
        Ok(())
    }

    /// Deletes a user: the actor with its tokens and devices, and its place
    /// in the directory's groups.
    pub async fn delete_user(
        &mut self,
        entry: &Entry,
        now: Timestamp,
    ) -> Result<(), ProvisionError> {
        if let Some(actor) = actors::get(self.conn, self.account, entry.id).await? {
            actors::delete(self.conn, self.account, entry.id).await?;
            self.effects.audit.push(AuditEntry::change(
                "actor.delete",
                entry.id,
                Some(&actor),
                None::<&Actor>,
            ));
            self.effects.changes.push(Change::Actors(vec![entry.id]));
        }
        directories::delete_entry(self.conn, self.directory, entry.id).await?;
        self.known().await?.users.remove(&entry.id);
        self.forget_member(entry.id, now).await
    }

    /// Removes `id` from every group document of the directory naming it.
    async fn forget_member(&mut self, id: Uuid, now: Timestamp) -> Result<(), ProvisionError> {
        for mut group in directories::entries(self.conn, self.directory, EntryKind::Group).await? {
            let Some(Value::Array(members)) = group.document.get_mut("members") else {
                continue;
            };
            let before = members.len();
            members.retain(|m| {
                m.get("value")
                    .and_then(Value::as_str)
                    .and_then(|v| Uuid::try_parse(v.trim()).ok())
                    != Some(id)
            });
            if members.len() != before {
                if members.is_empty() {
                    group.document.remove("members");
                }
                group.version += 1;
                group.updated_at = now;
                directories::put_entry(self.conn, self.account, self.directory, &group).await?;
                self.groups_changed = true;
            }
        }
        Ok(())
    }

    /// Creates or replaces a group from its document.
    pub async fn put_group(
        &mut self,
        id: Uuid,
        document: Map<String, Value>,
        external_id: Option<String>,
        existing: Option<Entry>,
        now: Timestamp,
    ) -> Result<Entry, ProvisionError> {
        let key = name_key(EntryKind::Group, &document);
        if let Some(other) =
            directories::entry_by_name(self.conn, self.directory, EntryKind::Group, &key).await?
            && other.id != id
        {
            return Err(ProvisionError::Conflict(format!(
                "a group named {key:?} exists in this directory"
            )));
        }
        // Members are users or groups of this directory.
        let known = self.known().await?;
        for member in member_ids(&document) {
            match member {
                Some(m) if known.users.contains(&m) || known.groups.contains(&m) || m == id => {}
                _ => {
                    return Err(ProvisionError::Invalid(
                        "a member is not a user or group of this directory (members are \
                         named by their SCIM id)"
                            .into(),
                    ));
                }
            }
        }
        let name = clean_name(text(&document, "displayName").unwrap_or_default(), "group");
        let taken = || {
            format!(
                "a group named {name:?} exists in the account (not this directory's): rename \
                 one of them"
            )
        };
        if let Some(holder) = groups::by_name(self.conn, self.account, &name).await?
            && holder.id != id
        {
            return Err(ProvisionError::Conflict(taken()));
        }
        self.groups_changed = true;
        match groups::get(self.conn, self.account, id).await? {
            None => {
                let group = Group {
                    id,
                    name: name.clone(),
                    kind: GroupKind::Static,
                    directory_id: Some(self.directory),
                    created_at: crate::domain::from_millis(now.as_millisecond()),
                };
                groups::insert(self.conn, self.account, &group)
                    .await
                    .map_err(|e| Self::conflict(e, taken()))?;
                self.known().await?.groups.insert(id);
                self.effects.audit.push(AuditEntry::change(
                    "group.create",
                    id,
                    None::<&Group>,
                    Some(&group),
                ));
            }
            Some(before) if before.name != name => {
                groups::rename(self.conn, self.account, id, &name, now.as_millisecond())
                    .await
                    .map_err(|e| Self::conflict(e, taken()))?;
                let after = Group {
                    name: name.clone(),
                    ..before.clone()
                };
                self.effects.audit.push(AuditEntry::change(
                    "group.update",
                    id,
                    Some(&before),
                    Some(&after),
                ));
            }
            Some(_) => {}
        }
        let entry = Entry {
            id,
            kind: EntryKind::Group,
            name_key: key,
            external_id,
            version: existing.as_ref().map_or(1, |e| e.version + 1),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
            document,
        };
        directories::put_entry(self.conn, self.account, self.directory, &entry).await?;
        Ok(entry)
    }

    /// Deletes a group (and, as an admin's deletion does, its policies).
    pub async fn delete_group(
        &mut self,
        entry: &Entry,
        now: Timestamp,
    ) -> Result<(), ProvisionError> {
        if let Some(group) = groups::get(self.conn, self.account, entry.id).await? {
            let members = groups::members(self.conn, self.account, &group).await?;
            groups::delete(self.conn, self.account, entry.id).await?;
            self.effects.audit.push(AuditEntry::change(
                "group.delete",
                entry.id,
                Some(&group),
                None::<&Group>,
            ));
            self.effects.changes.push(Change::Actors(members));
        }
        directories::delete_entry(self.conn, self.directory, entry.id).await?;
        self.known().await?.groups.remove(&entry.id);
        self.groups_changed = true;
        self.forget_member(entry.id, now).await
    }

    /// Brings every group's memberships in line with the documents, nested
    /// groups flattened; the actors whose memberships changed are
    /// re-evaluated. `finish` runs it when a group or a member changed.
    async fn settle_memberships(&mut self) -> Result<(), ProvisionError> {
        let group_entries =
            directories::entries(self.conn, self.directory, EntryKind::Group).await?;
        let users = self.known().await?.users.clone();
        let direct: HashMap<Uuid, Vec<Uuid>> = group_entries
            .iter()
            .map(|g| {
                (
                    g.id,
                    member_ids(&g.document).into_iter().flatten().collect(),
                )
            })
            .collect();
        let mut changed: BTreeSet<Uuid> = BTreeSet::new();
        let mut memberships: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for group in direct.keys() {
            memberships.insert(*group, flatten(*group, &direct, &users));
        }
        for (group_id, want) in memberships {
            let Some(group) = groups::get(self.conn, self.account, group_id).await? else {
                continue;
            };
            let have = groups::members(self.conn, self.account, &group).await?;
            if have == want {
                continue;
            }
            let have_set: BTreeSet<Uuid> = have.iter().copied().collect();
            let want_set: BTreeSet<Uuid> = want.iter().copied().collect();
            changed.extend(have_set.symmetric_difference(&want_set));
            groups::set_members(self.conn, self.account, group_id, &want).await?;
            self.effects.audit.push(AuditEntry::change(
                "group.members",
                group_id,
                Some(&serde_json::json!({"members": have})),
                Some(&serde_json::json!({"members": want})),
            ));
        }
        if !changed.is_empty() {
            self.effects
                .changes
                .push(Change::Actors(changed.into_iter().collect()));
        }
        Ok(())
    }
}

/// The users a group holds, through nested groups too (cycles are cut).
fn flatten(group: Uuid, direct: &HashMap<Uuid, Vec<Uuid>>, users: &HashSet<Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::from([group]);
    let mut stack = vec![group];
    let mut out = BTreeSet::new();
    while let Some(g) = stack.pop() {
        for member in direct.get(&g).into_iter().flatten() {
            if users.contains(member) {
                out.insert(*member);
            } else if direct.contains_key(member) && seen.insert(*member) {
                stack.push(*member);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(document: Value) -> UserFields {
        user_fields(document.as_object().unwrap())
    }

    #[test]
    fn a_user_s_name_email_and_state_derive_from_its_document() {
        assert_eq!(
            fields(json!({"userName": "Bjensen@Example.com"})),
            UserFields {
                name: "Bjensen@Example.com".into(),
                email: Some("bjensen@example.com".into()),
                active: true
            }
        );
        assert_eq!(
            fields(json!({
                "userName": "bjensen",
                "name": {"givenName": "Barbara", "familyName": "Jensen"},
                "emails": [{"value": "home@x.test"}, {"value": "Work@X.test", "primary": true}],
                "active": false,
            })),
            UserFields {
                name: "Barbara Jensen".into(),
                email: Some("work@x.test".into()),
                active: false
            }
        );
        let odd = fields(
            json!({"userName": "u1", "displayName": "\u{7}\t ", "emails": [{"value": "not an email"}]}),
        );
        assert_eq!(odd.name, "u1");
        assert_eq!(odd.email, None);
    }

    #[test]
    fn nested_groups_flatten_and_cycles_end() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let (u1, u2) = (Uuid::from_u128(11), Uuid::from_u128(12));
        let direct = HashMap::from([(a, vec![u1, b]), (b, vec![u2, c]), (c, vec![a])]);
        let users = HashSet::from([u1, u2]);
        assert_eq!(flatten(a, &direct, &users), vec![u1, u2]);
        assert_eq!(flatten(b, &direct, &users), vec![u1, u2]);
        assert_eq!(flatten(c, &direct, &users), vec![u1, u2]);
    }
}

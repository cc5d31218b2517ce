//! LDAP pull (OpenLDAP, Active Directory): every `interval_secs` and on
//! demand, the portal binds, reads users and groups with paged searches
//! (over StartTLS or LDAPS when asked), and makes the directory's users and
//! groups match them in one transaction. A directory that cannot be reached
//! or read changes nothing: the error is recorded and shown.
//!
//! Users are matched from one sync to the next by `entryUUID` (OpenLDAP) or
//! `objectGUID` (Active Directory), else their DN, so a renamed or moved
//! entry stays the same Postern user. Group members are DNs (`member`,
//! `uniqueMember`); a member that is a group nests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Effects, ProvisionError, Provisioner};
use crate::api::audited::{Commit, Outcome, run_as};
use crate::domain::Directory;
use crate::state::AppState;
use crate::store::audit::Author;
use crate::store::directories::{self, Entry, EntryKind};

/// OpenLDAP's people and Active Directory's users (not its computers,
/// which are users too).
pub const DEFAULT_USER_FILTER: &str =
    "(|(objectClass=inetOrgPerson)(&(objectClass=user)(!(objectClass=computer))))";
/// Groups whose members are DNs.
pub const DEFAULT_GROUP_FILTER: &str =
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))";
pub const DEFAULT_INTERVAL_SECS: u64 = 300;

/// How long connecting, and each operation, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// A page of a paged search.
const PAGE_SIZE: i32 = 500;
/// Most entries one search may bring (a bound on memory).
const MAX_ENTRIES: usize = 200_000;

/// An LDAP directory's connection, as kept in `directories.settings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub url: String,
    pub bind_dn: String,
    /// Sealed (`crate::secrets`), never shown.
    pub sealed_bind_password: String,
    pub base_dn: String,
    pub user_filter: Option<String>,
    pub group_filter: Option<String>,
    pub interval_secs: u64,
    pub starttls: bool,
    /// PEM certificates trusted for this server besides the system's roots
    /// (a company CA).
    pub ca_certificate: Option<String>,
}

impl Settings {
    pub fn of(directory: &Directory) -> Option<Settings> {
        serde_json::from_value(directory.settings.clone()).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Directory(String),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

impl From<crate::store::StoreError> for SyncError {
    fn from(error: crate::store::StoreError) -> Self {
        SyncError::Provision(error.into())
    }
}

/// One user or group as read from the server.
#[derive(Clone, Debug, PartialEq)]
struct Read {
    dn: String,
    /// The stable key (entryUUID, objectGUID, else the DN).
    key: String,
    attrs: HashMap<String, Vec<String>>,
}

impl Read {
    fn first(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|name| {
            self.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first())
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        })
    }

    fn all(&self, names: &[&str]) -> Vec<&str> {
        names
            .iter()
            .flat_map(|name| {
                self.attrs
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .flat_map(|(_, v)| v.iter().map(String::as_str))
            })
            .collect()
    }

    /// Active Directory's ACCOUNTDISABLE bit, 389/OpenLDAP's lock flags.
    fn disabled(&self) -> bool {
        let uac = self
            .first(&["userAccountControl"])
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|flags| flags & 0x2 != 0);
        let locked = self
            .first(&["nsAccountLock"])
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        uac || locked || self.first(&["pwdAccountLockedTime"]).is_some()
    }
}

/// DNs compare without case and spaces after separators.
fn dn_key(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

const USER_ATTRIBUTES: &[&str] = &[
    "mail",
    "displayName",
    "cn",
    "givenName",
    "sn",
    "uid",
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "nsAccountLock",
    "pwdAccountLockedTime",
    "entryUUID",
    "objectGUID",
];
const GROUP_ATTRIBUTES: &[&str] = &[
    "cn",
    "displayName",
    "member",
    "uniqueMember",
    "entryUUID",
    "objectGUID",
];

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_roots() {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        let mut reader = std::io::BufReader::new(pem.as_bytes());
        let mut added = 0;
        for cert in rustls_pemfile_certs(&mut reader)? {
            roots
                .add(cert)
                .map_err(|e| format!("ca_certificate holds a certificate rustls refuses: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("ca_certificate holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's trusted roots (none if they cannot be read: a company CA
/// can still be given).
fn rustls_native_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let paths = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    for path in paths {
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut reader = std::io::BufReader::new(text.as_bytes());
            if let Ok(certs) = rustls_pemfile_certs(&mut reader) {
                return certs;
            }
        }
    }
    Vec::new()
}

fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    reader.read_to_end(&mut text).map_err(|e| e.to_string())?;
    rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_certificate is not PEM: {e}"))
}

/// Reads the users and groups from the server.
async fn fetch(settings: &Settings, password: &str) -> Result<(Vec<Read>, Vec<Read>), String> {
    let config = tls_config(settings.ca_certificate.as_deref())?;
    let conn_settings = LdapConnSettings::new()
        .set_conn_timeout(CONNECT_TIMEOUT)
        .set_starttls(settings.starttls)
        .set_config(config);
    let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings, &settings.url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", settings.url))?;
    ldap3::drive!(conn);
    ldap.with_timeout(OPERATION_TIMEOUT)
        .simple_bind(&settings.bind_dn, password)
        .await
        .and_then(|r| r.success())
        .map_err(|e| format!("cannot bind as {}: {e}", settings.bind_dn))?;
    let users = search(
        &mut ldap,
        &settings.base_dn,
        settings
            .user_filter
            .as_deref()
            .unwrap_or(DEFAULT_USER_FILTER),
        USER_ATTRIBUTES,
    )
    .await
    .map_err(|e| format!("cannot search users: {e}"))?;
    let groups = search(
        &mut ldap,
        &settings.base_dn,
        settings
            .group_filter
            .as_deref()
            .unwrap_or(DEFAULT_GROUP_FILTER),
        GROUP_ATTRIBUTES,
    )
    .await
    .map_err(|e| format!("cannot search groups: {e}"))?;
    let mut groups = groups;
    for group in &mut groups {
        complete_ranges(&mut ldap, group)
            .await
            .map_err(|e| format!("cannot read the members of {}: {e}", group.dn))?;
    }
    let _ = ldap.unbind().await;
    Ok((users, groups))
}

async fn search(
    ldap: &mut ldap3::Ldap,
    base: &str,
    filter: &str,
    attributes: &[&str],
) -> ldap3::result::Result<Vec<Read>> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(PAGE_SIZE)),
    ];
    let mut stream = ldap
        .with_timeout(OPERATION_TIMEOUT)
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attributes.to_vec())
        .await?;
    let mut out = Vec::new();
    while let Some(entry) = stream.next().await? {
        if out.len() >= MAX_ENTRIES {
            return Err(ldap3::LdapError::AdapterInit(format!(
                "more than {MAX_ENTRIES} entries: narrow the filter"
            )));
        }
        let entry = SearchEntry::construct(entry);
        let key = stable_key(&entry);
        out.push(Read {
            dn: entry.dn,
            key,
            attrs: entry.attrs,
        });
    }
    stream.finish().await.success()?;
    Ok(out)
}

/// Active Directory returns the members of a large group in ranges
/// (`member;range=0-1499`); this asks for the rest until the last range
/// (`...-*`) and files them all under `member`.
async fn complete_ranges(ldap: &mut ldap3::Ldap, group: &mut Read) -> ldap3::result::Result<()> {
    let ranged: Vec<String> = group
        .attrs
        .keys()
        .filter(|k| k.to_ascii_lowercase().starts_with("member;range="))
        .cloned()
        .collect();
    let mut next = None;
    for key in ranged {
        let values = group.attrs.remove(&key).unwrap_or_default();
        group
            .attrs
            .entry("member".into())
            .or_default()
            .extend(values);
        next = range_after(&key);
    }
    // A bound on the rounds: a server that keeps answering the same range
    // must not keep the sync going.
    for _ in 0..10_000 {
        let Some(start) = next else {
            return Ok(());
        };
        let attribute = format!("member;range={start}-*");
        let (entries, _) = ldap
            .with_timeout(OPERATION_TIMEOUT)
            .search(
                &group.dn,
                Scope::Base,
                "(objectClass=*)",
                vec![attribute.as_str()],
            )
            .await?
            .success()?;
        next = None;
        for entry in entries {
            let entry = SearchEntry::construct(entry);
            for (key, values) in entry.attrs {
                if key.to_ascii_lowercase().starts_with("member;range=") {
                    next = range_after(&key).filter(|n| *n > start);
                    group
                        .attrs
                        .entry("member".into())
                        .or_default()
                        .extend(values);
                }
            }
        }
    }
    Err(ldap3::LdapError::AdapterInit(
        "too many member ranges".into(),
    ))
}

/// The first index after `member;range=L-H`, none for the last range (`*`).
fn range_after(key: &str) -> Option<u64> {
    let (_, range) = key.split_once('=')?;
    let (_, high) = range.split_once('-')?;
    high.parse::<u64>().ok().map(|h| h + 1)
}

/// What identifies an entry across renames: OpenLDAP's `entryUUID`, else
/// Active Directory's `objectGUID` in hex (binary, so ldap3 files it as
/// binary unless its bytes happen to be UTF-8), else the DN.
fn stable_key(entry: &SearchEntry) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |name: &str| {
        entry
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
    };
    if let Some(uuid) = text("entryUUID") {
        return uuid.to_ascii_lowercase();
    }
    let binary = entry
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("objectGUID"))
        .and_then(|(_, v)| v.first());
    if let Some(guid) = binary {
        return hex(guid);
    }
    if let Some(guid) = text("objectGUID") {
        return hex(guid.as_bytes());
    }
    dn_key(&entry.dn)
}

fn user_document(read: &Read) -> Map<String, Value> {
    let user_name = read
        .first(&["uid", "sAMAccountName", "userPrincipalName", "mail"])
        .unwrap_or(&read.dn)
        .to_string();
    let mut doc = Map::new();
    doc.insert("userName".into(), json!(user_name));
    doc.insert("externalId".into(), json!(read.key));
    if let Some(display) = read.first(&["displayName", "cn"]) {
        doc.insert("displayName".into(), json!(display));
    }
    let mut name = Map::new();
    if let Some(given) = read.first(&["givenName"]) {
        name.insert("givenName".into(), json!(given));
    }
    if let Some(family) = read.first(&["sn"]) {
        name.insert("familyName".into(), json!(family));
    }
    if !name.is_empty() {
        doc.insert("name".into(), Value::Object(name));
    }
    if let Some(mail) = read.first(&["mail"]) {
        doc.insert("emails".into(), json!([{"value": mail, "primary": true}]));
    }
    doc.insert("active".into(), json!(!read.disabled()));
    doc
}

/// What a sync did, as `GET /directories/{id}` shows it.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Counts {
    pub users: Tally,
    pub groups: Tally,
    /// Entries left as they were, and why (a name or email another user
    /// or group holds); the rest of the sync is applied.
    pub skipped: Vec<String>,
}

/// Most skipped entries listed (the count goes on).
const MAX_SKIPPED_LISTED: usize = 50;

impl Counts {
    fn skip(&mut self, dn: &str, why: &str) {
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(format!("{dn}: {why}"));
        }
    }
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Tally {
    pub total: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Syncs one directory now: reads the server, applies the difference in one
/// transaction, records the outcome. An error changes nothing but the
/// recorded error.
pub async fn sync(
    state: &AppState,
    account: Uuid,
    directory: &Directory,
) -> Result<Counts, SyncError> {
    let outcome = sync_inner(state, account, directory).await;
    let now = Timestamp::now();
    let recorded = match &outcome {
        Ok(counts) => serde_json::to_value(counts).unwrap_or_default(),
        Err(_) => Value::Null,
    };
    let mut tx = state.store.write().await?;
    let error_text = outcome.as_ref().err().map(ToString::to_string);
    directories::record_sync(
        &mut tx,
        directory.id,
        now,
        match &error_text {
            None => Ok(&recorded),
            Some(text) => Err(text.as_str()),
        },
    )
    .await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    match &outcome {
        Ok(counts) => tracing::info!(directory = %directory.id, name = %directory.name,
            users = counts.users.total, groups = counts.groups.total, "LDAP directory synced"),
        Err(error) => tracing::warn!(directory = %directory.id, name = %directory.name,
            %error, "LDAP directory sync failed; nothing was changed"),
    }
    outcome
}

async fn sync_inner(
    state: &AppState,
    account: Uuid,
    directory: &Directory,
) -> Result<Counts, SyncError> {
    let settings = Settings::of(directory).ok_or_else(|| {
        SyncError::Directory("the directory's LDAP settings cannot be read".into())
    })?;
    let key = state.secret_key.as_ref().ok_or_else(|| {
        SyncError::Directory("the portal has no secret key to open the bind password with".into())
    })?;
    let password = key
        .open(&settings.sealed_bind_password, &directory.id.to_string())
        .map_err(|e| SyncError::Directory(format!("cannot open the bind password: {e}")))?;
    // On a task of its own: the LDAP crate's decoder asserts on malformed
    // entries, and a server's bytes must not take the portal down.
    let fetched = tokio::spawn(async move { fetch(&settings, &password).await })
        .await
        .map_err(|_| {
            SyncError::Directory("the server sent an entry that could not be read".into())
        })?
        .map_err(SyncError::Directory)?;
    apply(state, account, directory.id, fetched).await
}

async fn apply(
    state: &AppState,
    account: Uuid,
    directory: Uuid,
    (users, groups): (Vec<Read>, Vec<Read>),
) -> Result<Counts, SyncError> {
    let author = Author {
        actor_id: None,
        token_id: None,
        directory_id: Some(directory),
    };
    run_as(state, account, author, Commit::Yes, async |conn| {
        let now = Timestamp::now();
        let mut counts = Counts::default();
        let mut p = Provisioner::begin(conn, account, directory).await?;
        let existing_users = directories::entries(p.conn, directory, EntryKind::User).await?;
        let existing_groups = directories::entries(p.conn, directory, EntryKind::Group).await?;
        // A search that finds nobody, where there were some, is a wrong base
        // or filter far more often than an empty company.
        for (found, had, what, filter) in [
            (users.len(), existing_users.len(), "users", "user_filter"),
            (
                groups.len(),
                existing_groups.len(),
                "groups",
                "group_filter",
            ),
        ] {
            if found == 0 && had > 0 {
                return Err(SyncError::Directory(format!(
                    "the search found no {what}, and the directory has {had}: nothing was \
                     changed (check base_dn and {filter})"
                )));
            }
        }
        let keyed = |entries: Vec<Entry>| -> HashMap<String, Entry> {
            entries
                .into_iter()
                .filter_map(|e| e.external_id.clone().map(|k| (k, e)))
                .collect()
        };
        let mut users_by_key = keyed(existing_users);
        let mut groups_by_key = keyed(existing_groups);

        // What is gone goes first, so that its names and emails are free
        // for what is new (an account deleted and made again).
        let user_keys: HashSet<&str> = users.iter().map(|r| r.key.as_str()).collect();
        let group_keys: HashSet<&str> = groups.iter().map(|r| r.key.as_str()).collect();
        let gone_users: Vec<String> = users_by_key
            .keys()
            .filter(|k| !user_keys.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone_users {
            if let Some(gone) = users_by_key.remove(&key) {
                p.delete_user(&gone, now).await?;
                counts.users.deleted += 1;
            }
        }
        let gone_groups: Vec<String> = groups_by_key
            .keys()
            .filter(|k| !group_keys.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone_groups {
            if let Some(gone) = groups_by_key.remove(&key) {
                p.delete_group(&gone, now).await?;
                counts.groups.deleted += 1;
            }
        }

        // DN -> id of every user and group kept, for group members.
        let mut ids: HashMap<String, Uuid> = HashMap::new();
        counts.users.total = users.len();
        let mut seen_names = HashSet::new();
        for read in &users {
            let document = user_document(read);
            let name = super::name_key(EntryKind::User, &document);
            if !seen_names.insert(name.clone()) {
                counts.skip(&read.dn, &format!("another entry is also named {name:?}"));
                continue;
            }
            let existing = users_by_key.remove(&read.key);
            let id = existing.as_ref().map_or_else(Uuid::new_v4, |e| e.id);
            let created = existing.is_none();
            if existing.as_ref().is_some_and(|e| e.document == document) {
                ids.insert(dn_key(&read.dn), id);
                continue;
            }
            match p
                .put_user(id, document, Some(read.key.clone()), existing, now)
                .await
            {
                Ok(_) => {
                    ids.insert(dn_key(&read.dn), id);
                    if created {
                        counts.users.created += 1;
                    } else {
                        counts.users.updated += 1;
                    }
                }
                Err(ProvisionError::Conflict(why) | ProvisionError::Invalid(why)) => {
                    if !created {
                        ids.insert(dn_key(&read.dn), id);
                    }
                    counts.skip(&read.dn, &why);
                }
                Err(other) => return Err(other.into()),
            }
        }

        counts.groups.total = groups.len();
        let mut planned = Vec::new();
        for read in &groups {
            let existing = groups_by_key.remove(&read.key);
            let id = existing.as_ref().map_or_else(Uuid::new_v4, |e| e.id);
            ids.insert(dn_key(&read.dn), id);
            planned.push((read, id, existing));
        }
        let group_ids: HashSet<Uuid> = planned.iter().map(|(_, id, _)| *id).collect();
        let documents: Vec<Map<String, Value>> = planned
            .iter()
            .map(|(read, _, _)| group_document(read, &ids))
            .collect();
        // Two passes: every group exists before any names another as member.
        let mut kept: HashSet<Uuid> = HashSet::new();
        for ((read, id, existing), document) in planned.iter().zip(&documents) {
            match existing {
                Some(e) => {
                    kept.insert(*id);
                    if &e.document != document {
                        counts.groups.updated += 1;
                    }
                }
                None => {
                    let mut users_only = document.clone();
                    if let Some(Value::Array(members)) = users_only.get_mut("members") {
                        members.retain(|m| {
                            m["value"]
                                .as_str()
                                .and_then(|v| Uuid::try_parse(v).ok())
                                .is_some_and(|v| !group_ids.contains(&v))
                        });
                    }
                    match p
                        .put_group(*id, users_only, Some(read.key.clone()), None, now)
                        .await
                    {
                        Ok(_) => {
                            kept.insert(*id);
                            counts.groups.created += 1;
                        }
                        Err(ProvisionError::Conflict(why) | ProvisionError::Invalid(why)) => {
                            counts.skip(&read.dn, &why);
                        }
                        Err(other) => return Err(other.into()),
                    }
                }
            }
        }
        for ((read, id, _), mut document) in planned.iter().zip(documents) {
            if !kept.contains(id) {
                continue;
            }
            // Members skipped above are not named.
            if let Some(Value::Array(members)) = document.get_mut("members") {
                members.retain(|m| {
                    m["value"]
                        .as_str()
                        .and_then(|v| Uuid::try_parse(v).ok())
                        .is_some_and(|v| kept.contains(&v) || !group_ids.contains(&v))
                });
            }
            let current = directories::entry(p.conn, directory, EntryKind::Group, *id).await?;
            if current.as_ref().is_some_and(|e| e.document == document) {
                continue;
            }
            match p
                .put_group(*id, document, Some(read.key.clone()), current, now)
                .await
            {
                Ok(_) => {}
                Err(ProvisionError::Conflict(why) | ProvisionError::Invalid(why)) => {
                    counts.skip(&read.dn, &why);
                }
                Err(other) => return Err(other.into()),
            }
        }
        let Effects { audit, changes } = p.finish().await?;
        Ok(Outcome::batch(counts, audit, changes))
    })
    .await
}

/// A group entry as a SCIM document: its name and its members that are
/// users or groups of this sync.
fn group_document(read: &Read, ids: &HashMap<String, Uuid>) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert(
        "displayName".into(),
        json!(read.first(&["displayName", "cn"]).unwrap_or(&read.dn)),
    );
    doc.insert("externalId".into(), json!(read.key));
    let mut seen = HashSet::new();
    let members: Vec<Value> = read
        .all(&["member", "uniqueMember"])
        .into_iter()
        .filter_map(|dn| ids.get(&dn_key(dn)))
        .filter(|id| seen.insert(**id))
        .map(|id| json!({"value": id.to_string()}))
        .collect();
    if !members.is_empty() {
        doc.insert("members".into(), Value::Array(members));
    }
    doc
}

/// Syncs every LDAP directory whose interval has passed, every few seconds,
/// for as long as the runtime runs. Each sync runs on its own task, so one
/// slow server delays no other directory; a directory still syncing is not
/// started again.
pub fn spawn_scheduler(state: Arc<AppState>) {
    let running: Arc<std::sync::Mutex<HashSet<Uuid>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            match due(&state).await {
                Ok(due) => {
                    for (account, directory) in due {
                        let started = running
                            .lock()
                            .map(|mut set| set.insert(directory.id))
                            .unwrap_or(false);
                        if !started {
                            continue;
                        }
                        let (state, running) = (Arc::clone(&state), Arc::clone(&running));
                        tokio::spawn(async move {
                            let _ = sync(&state, account, &directory).await;
                            if let Ok(mut set) = running.lock() {
                                set.remove(&directory.id);
                            }
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot list the LDAP directories to sync"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// The LDAP directories whose interval has passed (or that never synced).
async fn due(state: &AppState) -> Result<Vec<(Uuid, Directory)>, crate::store::StoreError> {
    let mut tx = state.store.read().await?;
    let all = directories::all_ldap(&mut tx).await?;
    tx.commit().await?;
    let now = Timestamp::now().as_second();
    Ok(all
        .into_iter()
        .filter(|(_, directory)| {
            let interval =
                Settings::of(directory).map_or(DEFAULT_INTERVAL_SECS, |s| s.interval_secs);
            directory
                .last_sync_at
                .map(|at| at.as_second().saturating_add(interval as i64))
                .is_none_or(|next| next <= now)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(attrs: &[(&str, &str)]) -> Read {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in attrs {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
        Read {
            dn: "uid=x,dc=example".into(),
            key: "k".into(),
            attrs: map,
        }
    }

    #[test]
    fn disabled_accounts_are_read_from_ad_and_openldap_flags() {
        assert!(!read(&[("userAccountControl", "512")]).disabled());
        assert!(read(&[("userAccountControl", "514")]).disabled());
        assert!(read(&[("nsAccountLock", "TRUE")]).disabled());
        assert!(read(&[("pwdAccountLockedTime", "000001010000Z")]).disabled());
        assert!(!read(&[("uid", "alice")]).disabled());
    }

    #[test]
    fn member_ranges_continue_after_their_end_and_stop_at_the_star() {
        assert_eq!(range_after("member;range=0-1499"), Some(1500));
        assert_eq!(range_after("Member;Range=1500-2999"), Some(3000));
        assert_eq!(range_after("member;range=3000-*"), None);
        assert_eq!(range_after("member;range=garbage"), None);
    }

    #[test]
    fn entries_are_keyed_by_entry_uuid_then_object_guid_then_dn() {
        let entry = |attrs: &[(&str, &str)], guid: Option<Vec<u8>>| SearchEntry {
            dn: "CN=Carol, OU=People,DC=Corp".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            bin_attrs: guid
                .map(|g| HashMap::from([("objectGUID".to_string(), vec![g])]))
                .unwrap_or_default(),
        };
        assert_eq!(
            stable_key(&entry(&[("entryUUID", "ABC-1")], Some(vec![1, 2]))),
            "abc-1"
        );
        assert_eq!(
            stable_key(&entry(&[], Some(vec![0xde, 0xad, 0x01]))),
            "dead01"
        );
        // GUID bytes that happen to be UTF-8 land among the text attributes.
        assert_eq!(stable_key(&entry(&[("objectGUID", "AB")], None)), "4142");
        assert_eq!(stable_key(&entry(&[], None)), "cn=carol,ou=people,dc=corp");
    }

    #[test]
    fn a_user_entry_becomes_a_scim_document() {
        let doc = user_document(&read(&[
            ("uid", "alice"),
            ("cn", "Alice Liddell"),
            ("mail", "alice@example.com"),
            ("givenName", "Alice"),
        ]));
        assert_eq!(
            Value::Object(doc),
            json!({
                "userName": "alice",
                "externalId": "k",
                "displayName": "Alice Liddell",
                "name": {"givenName": "Alice"},
                "emails": [{"value": "alice@example.com", "primary": true}],
                "active": true,
            })
        );
        assert_eq!(
            dn_key("CN=Alice, OU=People,DC=Example"),
            "cn=alice,ou=people,dc=example"
        );
    }
}

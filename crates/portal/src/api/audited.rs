//! One audited write. Every change through the API is one transaction with
//! an audit entry of who did what (SPEC section 4), and continuous evaluation
//! (F15) must hear of it, but only once it is committed: a notice before the
//! commit could re-evaluate clients against the old rows, and a forgotten one
//! leaves clients with access they lost. `write` owns that ritual; a handler
//! only validates and mutates, then hands back an [`Outcome`] naming its audit
//! entry and its notices (or why it needs none), so neither can be left out.

use axum::http::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use super::problem::ApiResult;
use super::{Admin, now_ms, scoped};
use crate::state::{AppState, Change};
use crate::store::audit::{self, Author, NewAuditEntry};
use crate::store::{Conn, Scoped, StoreError};

/// The audit entry of a write: the action (`site.update`; its first part is
/// the object type), the object, and the object before and after as the API
/// shows it.
#[derive(Debug)]
pub struct Entry {
    action: &'static str,
    object_id: Uuid,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

impl Entry {
    /// A change of an object shown as it was and as it is (either may be
    /// none: created, deleted).
    pub fn change(
        action: &'static str,
        id: Uuid,
        before: Option<&impl Serialize>,
        after: Option<&impl Serialize>,
    ) -> Entry {
        Entry::new(action, id, before.and_then(json), after.and_then(json))
    }

    /// A create whose response is not the object itself (a token, shown once).
    pub fn created(action: &'static str, id: Uuid, after: &impl Serialize) -> Entry {
        Entry::new(action, id, None, json(after))
    }

    fn new(
        action: &'static str,
        object_id: Uuid,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Entry {
        Entry {
            action,
            object_id,
            before,
            after,
        }
    }
}

/// What the audit log keeps of an object; one that does not serialize is
/// logged without it rather than failing the write.
fn json(value: &impl Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// What continuous evaluation hears once a write is committed.
#[derive(Debug, PartialEq)]
pub enum Notices {
    /// These changes (none when the write turned out to touch nothing, like
    /// a provider nobody signed in with).
    Publish(Vec<Change>),
    /// Nothing a client's access depends on changed; the text says why, so
    /// that a quiet write is a decision, not an omission.
    Quiet(&'static str),
}

impl From<Change> for Notices {
    fn from(change: Change) -> Notices {
        Notices::Publish(vec![change])
    }
}

impl From<Vec<Change>> for Notices {
    fn from(changes: Vec<Change>) -> Notices {
        Notices::Publish(changes)
    }
}

/// What a write's body hands back: the response, the audit entry and the
/// notices. `write` records the entry, commits, then publishes the notices.
#[derive(Debug)]
#[must_use]
pub struct Outcome<T> {
    response: T,
    entries: Vec<Entry>,
    notices: Notices,
}

impl<T> Outcome<T> {
    pub fn new(response: T, entry: Entry, notices: impl Into<Notices>) -> Outcome<T> {
        Outcome::batch(response, vec![entry], notices)
    }

    /// Several changes in one write (a declaration applied), each with its
    /// own entry.
    pub fn batch(response: T, entries: Vec<Entry>, notices: impl Into<Notices>) -> Outcome<T> {
        Outcome {
            response,
            entries,
            notices: notices.into(),
        }
    }
}

/// The usual answers, whose audit entry shows the object the response
/// carries (or, for a delete, the object that was).
impl<O: Serialize> Outcome<(StatusCode, axum::Json<O>)> {
    /// 201 with the new object.
    pub fn created(action: &'static str, id: Uuid, object: O, notices: impl Into<Notices>) -> Self {
        let entry = Entry::new(action, id, None, json(&object));
        Outcome::new((StatusCode::CREATED, axum::Json(object)), entry, notices)
    }
}

impl<O: Serialize> Outcome<axum::Json<O>> {
    /// 200 with the object as it is now.
    pub fn updated(
        action: &'static str,
        id: Uuid,
        before: &impl Serialize,
        after: O,
        notices: impl Into<Notices>,
    ) -> Self {
        let entry = Entry::new(action, id, json(before), json(&after));
        Outcome::new(axum::Json(after), entry, notices)
    }
}

impl Outcome<StatusCode> {
    /// 204.
    pub fn deleted(
        action: &'static str,
        id: Uuid,
        before: &impl Serialize,
        notices: impl Into<Notices>,
    ) -> Self {
        let entry = Entry::new(action, id, json(before), None);
        Outcome::new(StatusCode::NO_CONTENT, entry, notices)
    }
}

/// Runs `body` in a write transaction of `admin`'s account. When the body
/// succeeds its audit entry is recorded, the transaction committed, and only
/// then its notices published. When the body, the entry or the commit fails
/// the transaction rolls back and nothing is published.
///
/// The body gets the transaction's connection, which every store query takes:
/// over `&mut Tx` (a type with a lifetime) the async closure's future fails
/// axum's `Send` check.
pub async fn write<T>(
    state: &AppState,
    admin: &Admin,
    body: impl AsyncFnOnce(&mut Conn) -> ApiResult<Outcome<T>>,
) -> ApiResult<T> {
    run(state, admin, Commit::Yes, body).await
}

/// Whether a write is made or only rehearsed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Commit {
    Yes,
    /// Everything `write` does up to the commit, then a rollback: what the
    /// write would do, with every check the store makes, and nothing done
    /// (no entry, no notice).
    Rehearse,
}

/// `write`, or its rehearsal.
pub async fn run<T>(
    state: &AppState,
    admin: &Admin,
    commit: Commit,
    body: impl AsyncFnOnce(&mut Conn) -> ApiResult<Outcome<T>>,
) -> ApiResult<T> {
    run_as(state, admin.account_id, admin.author(), commit, body).await
}

/// `run` for any author (a directory's SCIM request or sync, not only an
/// admin's API call) and any error type the store's errors become.
pub async fn run_as<T, E: From<StoreError>>(
    state: &AppState,
    account: Uuid,
    author: Author,
    commit: Commit,
    body: impl AsyncFnOnce(&mut Conn) -> Result<Outcome<T>, E>,
) -> Result<T, E> {
    let mut tx = state.store.write().await?;
    let Outcome {
        response,
        entries,
        notices,
    } = body(&mut tx).await?;
    if commit == Commit::Rehearse {
        tx.rollback().await.map_err(StoreError::from)?;
        return Ok(response);
    }
    for entry in entries {
        let object_type = entry.action.split('.').next().unwrap_or(entry.action);
        audit::record(
            &mut tx,
            account,
            author,
            NewAuditEntry {
                action: entry.action,
                object_type,
                object_id: entry.object_id.to_string(),
                before: entry.before,
                after: entry.after,
            },
            now_ms(),
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    if let Notices::Publish(changes) = notices {
        for change in changes {
            state.changed(account, change);
        }
    }
    Ok(response)
}

/// `write` on one row of the account: loads the row named by the path `id`
/// (404 for a malformed id, a missing row or another account's) and hands it
/// to `body`.
pub async fn write_scoped<R: Scoped, T>(
    state: &AppState,
    admin: &Admin,
    id: &str,
    body: impl AsyncFnOnce(&mut Conn, R) -> ApiResult<Outcome<T>>,
) -> ApiResult<T> {
    write(state, admin, async |tx| {
        let row = scoped(tx, admin, id).await?;
        body(tx, row).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;
    use crate::api::problem::Problem;
    use crate::domain::{AuditEntry, Site};
    use crate::store::{Store, sites};

    struct Fixture {
        state: AppState,
        admin: Admin,
        published: UnboundedReceiver<(Uuid, Change)>,
    }

    async fn fixture() -> Fixture {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let init = crate::setup::init_account(&store, "acme", "admin@example.test")
            .await
            .unwrap();
        let state = AppState::new(store);
        let published = state.subscribe_changes();
        let admin = Admin {
            account_id: init.account.id,
            actor_id: init.admin_id,
            token_id: Uuid::from_u128(7),
        };
        Fixture {
            state,
            admin,
            published,
        }
    }

    fn site(name: &str) -> Site {
        Site {
            id: Uuid::new_v4(),
            name: name.to_string(),
            // As the store keeps it: to the millisecond.
            created_at: crate::domain::from_millis(now_ms()),
        }
    }

    /// The account's sites and audit log, newest entry first.
    async fn stored(f: &Fixture) -> (Vec<Site>, Vec<AuditEntry>) {
        let mut tx = f.state.store.read().await.unwrap();
        let sites = crate::store::list_scoped::<crate::domain::Site>(&mut tx, f.admin.account_id)
            .await
            .unwrap();
        let log = audit::list(&mut tx, f.admin.account_id, None, 100)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (sites, log)
    }

    fn actions(log: &[AuditEntry]) -> Vec<&str> {
        log.iter().map(|e| e.action.as_str()).collect()
    }

    #[tokio::test]
    async fn a_write_is_audited_committed_then_published() {
        let mut f = fixture().await;
        let hq = site("HQ");
        let response = write(&f.state, &f.admin, async |tx| {
            sites::insert(tx, f.admin.account_id, &hq).await?;
            Ok(Outcome::new(
                StatusCode::CREATED,
                Entry::created("site.create", hq.id, &hq),
                vec![Change::Resource(hq.id), Change::Everything],
            ))
        })
        .await
        .unwrap();
        assert_eq!(response, StatusCode::CREATED);

        let (sites, log) = stored(&f).await;
        assert_eq!(sites, std::slice::from_ref(&hq));
        let entry = &log[0];
        assert_eq!(
            (entry.action.as_str(), entry.object_type.as_str()),
            ("site.create", "site")
        );
        assert_eq!(entry.object_id, hq.id.to_string());
        assert_eq!(entry.actor_id, Some(f.admin.actor_id));
        assert_eq!(entry.token_id, Some(f.admin.token_id));
        assert_eq!(entry.before, None);
        assert_eq!(entry.after, serde_json::to_value(&hq).ok());
        for expected in [Change::Resource(hq.id), Change::Everything] {
            assert_eq!(f.published.try_recv(), Ok((f.admin.account_id, expected)));
        }
        assert_eq!(f.published.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_refused_write_stores_nothing_and_publishes_nothing() {
        let mut f = fixture().await;
        let refused = write(&f.state, &f.admin, async |tx| {
            // Refused after it already wrote: the write must not survive.
            sites::insert(tx, f.admin.account_id, &site("half")).await?;
            Err::<Outcome<()>, _>(Problem::invalid("name", "refused"))
        })
        .await;
        assert_eq!(refused, Err(Problem::invalid("name", "refused")));
        let (sites, log) = stored(&f).await;
        assert_eq!(sites, []);
        assert_eq!(actions(&log), ["account.init"]);
        assert_eq!(f.published.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_failed_commit_publishes_nothing() {
        let mut f = fixture().await;
        let failed = write(&f.state, &f.admin, async |tx| {
            // Foreign keys checked only at COMMIT: a site of no account
            // passes the body and the audit entry, then fails the commit.
            sqlx::query("PRAGMA defer_foreign_keys = ON")
                .execute(&mut *tx)
                .await?;
            let orphan = site("orphan");
            sites::insert(tx, Uuid::new_v4(), &orphan).await?;
            Ok(Outcome::new(
                (),
                Entry::created("site.create", orphan.id, &orphan),
                Change::Everything,
            ))
        })
        .await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(f.published.try_recv(), Err(TryRecvError::Empty));
        let (_, log) = stored(&f).await;
        assert_eq!(actions(&log), ["account.init"]);
    }

    #[tokio::test]
    async fn a_quiet_write_is_audited_and_publishes_nothing() {
        let mut f = fixture().await;
        let office = site("Office");
        write(&f.state, &f.admin, async |tx| {
            sites::insert(tx, f.admin.account_id, &office).await?;
            Ok(Outcome::new(
                (),
                Entry::created("site.create", office.id, &office),
                Notices::Quiet("a test"),
            ))
        })
        .await
        .unwrap();
        let (sites, log) = stored(&f).await;
        assert_eq!(sites, [office]);
        assert_eq!(actions(&log), ["site.create", "account.init"]);
        assert_eq!(f.published.try_recv(), Err(TryRecvError::Empty));
    }

    /// The rule holds only while no handler opens a write transaction or
    /// publishes a notice on its own.
    #[test]
    fn handlers_write_only_through_write() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut read = 0;
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            if path.file_name().is_some_and(|name| name == "audited.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for own in ["store.write()", ".changed("] {
                assert!(!text.contains(own), "{}: {own}", path.display());
            }
            read += 1;
        }
        assert!(read > 10, "read only {read} files");
    }

    #[tokio::test]
    async fn write_scoped_hands_over_only_the_accounts_own_row() {
        let mut f = fixture().await;
        let other = crate::setup::init_account(&f.state.store, "other", "admin@other.test")
            .await
            .unwrap();
        let (ours, theirs) = (site("ours"), site("theirs"));
        let mut tx = f.state.store.write().await.unwrap();
        sites::insert(&mut tx, f.admin.account_id, &ours)
            .await
            .unwrap();
        sites::insert(&mut tx, other.account.id, &theirs)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        for id in [theirs.id.to_string(), "not-a-uuid".to_string()] {
            let mut ran = false;
            let answer = write_scoped(&f.state, &f.admin, &id, async |_, _: Site| {
                ran = true;
                Ok(Outcome::deleted(
                    "site.delete",
                    theirs.id,
                    &theirs,
                    Change::Everything,
                ))
            })
            .await;
            assert_eq!(answer, Err(Problem::not_found()), "{id}");
            assert!(!ran, "{id}: the body ran");
        }
        let handed = write_scoped(
            &f.state,
            &f.admin,
            &ours.id.to_string(),
            async |_, row: Site| {
                Ok(Outcome::updated(
                    "site.update",
                    row.id,
                    &row,
                    row.clone(),
                    Notices::Quiet("a test"),
                ))
            },
        )
        .await;
        assert_eq!(handed.map(|json| json.0), Ok(ours));
        assert_eq!(f.published.try_recv(), Err(TryRecvError::Empty));
    }
}

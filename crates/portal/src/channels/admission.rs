//! The store writes of connecting channels, committed in groups.
//!
//! Each connecting device needs its row written (new devices get their
//! addresses) and a session logged before its channel opens, and each
//! admitted one its details recorded. One transaction per write made every
//! connect wait for a commit of its own (an fsync on SQLite): about a
//! thousand connects a second, so a portal restart with 100,000 clients
//! took minutes to recover. Here one task commits whatever queued meanwhile
//! in one transaction (group commit), in few statements: the group's actors
//! in one query, a known device touched and read in one, the sessions and
//! details many to a statement (each statement is a round trip to the
//! database's thread, which cost more than the SQL). A new device is
//! created in a savepoint of its own, so one refused (past its cap, say)
//! leaves the others' writes in.
//!
//! The queue of registrations is bounded. A connect that finds it full is
//! answered at once with 503 and a `Retry-After` that grows with the
//! backlog (load shedding): in a reconnect storm the portal hands out
//! later turns instead of letting connections time out, and the clients'
//! jittered waits turn the storm into a ramp.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::hub::DeviceDetails;
use crate::domain::{Actor, Device, DeviceKind, Role};
use crate::problem::Problem;
use crate::store::devices::{self, Connecting, DeviceCaps};
use crate::store::logs::{self, NewSession};
use crate::store::{Conn, Store, StoreError, actors};

/// Writes committed together, at most.
const BATCH: usize = 512;
/// The pace `Retry-After` assumes at least, in registrations a second.
const MIN_PACE: u64 = 1000;

/// What a connecting client or gateway asks to have recorded.
#[derive(Debug)]
pub(super) struct Registration {
    pub account: Uuid,
    pub kind: DeviceKind,
    /// A client's actor (checked again here: still there, enabled, a role
    /// that may hold a client).
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub token_id: Uuid,
    pub device_id: String,
    pub name: String,
    pub os: Option<String>,
    pub version: Option<String>,
    pub remote_ip: IpAddr,
    pub user_agent: Option<String>,
}

/// An admitted device's details, recorded after the fact.
#[derive(Debug)]
pub(super) struct Seen {
    pub account: Uuid,
    pub device: Uuid,
    pub details: DeviceDetails,
    pub remote_ip: IpAddr,
    pub at_ms: i64,
}

/// A registration's answer: the device, or `None` if its actor may not
/// hold a client.
type Answer = Result<Option<Device>, Problem>;

struct Job {
    registration: Registration,
    answer: oneshot::Sender<Answer>,
}

/// The batcher's rate and the connects it shed lately, for `Retry-After`.
#[derive(Debug, Default)]
struct Pace {
    /// Registrations committed per second, as last measured.
    per_second: AtomicU64,
    /// Connects shed in the current second, and that second.
    shed: std::sync::Mutex<(u64, u64)>,
}

/// The connecting side's handle.
#[derive(Clone, Debug)]
pub(super) struct Admission {
    register: mpsc::Sender<Job>,
    seen: mpsc::UnboundedSender<Seen>,
    pace: Arc<Pace>,
    /// The queue's size (`Limits::connect_queue`).
    queue: usize,
    started: Instant,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Starts the batcher on `store`, with room for `queue` registrations.
    pub(super) fn spawn(store: Store, caps: DeviceCaps, queue: usize) -> Admission {
        let (register, registrations) = mpsc::channel(queue.max(1));
        let (seen, seens) = mpsc::unbounded_channel();
        let pace = Arc::new(Pace::default());
        tokio::spawn(run(store, caps, registrations, seens, pace.clone()));
        Admission {
            register,
            seen,
            pace,
            queue,
            started: Instant::now(),
        }
    }

    /// Records a connecting device (and its session) with the next group;
    /// a full queue is answered at once with 503 and `Retry-After`.
    pub(super) async fn register(&self, registration: Registration) -> Answer {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            registration,
            answer,
        };
        match self.register.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.shed()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the portal is shutting down",
                ));
            }
        }
        answered.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Records an admitted device's details with the next group.
    pub(super) fn seen(&self, seen: Seen) {
        let _ = self.seen.send(seen);
    }

    /// The answer to a connect that found the queue full: come back once
    /// the connects shed before it have had their turn (at the batcher's
    /// pace), at least in a second, at most in a minute.
    fn shed(&self) -> Problem {
        let second = self.started.elapsed().as_secs();
        let ahead = {
            let mut shed = self.pace.shed.lock().unwrap_or_else(|e| e.into_inner());
            if shed.0 != second {
                *shed = (second, 0);
            }
            shed.1 += 1;
            shed.1
        };
        // Before a pace is measured (just after a restart: the storm's
        // first second) and when the measured one is low, assume a
        // thousand a second: a client back too early costs one more quick
        // 503, one told to wait too long waits for nothing.
        let pace = self.pace.per_second.load(Ordering::Relaxed).max(MIN_PACE);
        let wait = (1 + (self.queue as u64 + ahead) / pace).min(60);
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the portal is busy admitting other devices; connect again in {wait} s"),
        );
        problem.retry_after = Some(wait);
        problem
    }
}

fn unavailable() -> Problem {
    let mut problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is not available; try again",
    );
    problem.retry_after = Some(1);
    problem
}

/// The batcher: waits for work, takes everything queued (up to `BATCH`),
/// commits it in one transaction, answers. Ends when both queues close.
async fn run(
    store: Store,
    caps: DeviceCaps,
    mut registrations: mpsc::Receiver<Job>,
    mut seens: mpsc::UnboundedReceiver<Seen>,
    pace: Arc<Pace>,
) {
    let (mut jobs, mut seen) = (Vec::with_capacity(BATCH), Vec::new());
    let mut window = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            job = registrations.recv() => match job {
                Some(job) => jobs.push(job),
                None if seens.is_closed() => return,
                None => {}
            },
            one = seens.recv() => if let Some(one) = one { seen.push(one) },
        }
        while jobs.len() < BATCH
            && let Ok(job) = registrations.try_recv()
        {
            jobs.push(job);
        }
        while seen.len() < BATCH
            && let Ok(one) = seens.try_recv()
        {
            seen.push(one);
        }
        let count = jobs.len() as u64;
        commit(&store, caps, &mut jobs, &mut seen).await;
        window.1 += count;
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = (window.1 as f64 / elapsed.as_secs_f64()) as u64;
            // An idle second says nothing of the pace: keep the last.
            if rate > 0 {
                pace.per_second.store(rate, Ordering::Relaxed);
            }
            window = (Instant::now(), 0);
        }
    }
}

/// One group, in one transaction, then the answers. A failed commit fails
/// them all (503).
async fn commit(store: &Store, caps: DeviceCaps, jobs: &mut Vec<Job>, seen: &mut Vec<Seen>) {
    let now_ms = Timestamp::now().as_millisecond();
    let outcome = match together(store, caps, jobs, seen, now_ms).await {
        Ok(answers) => Ok(answers),
        // A statement outside a savepoint failed (a row that no longer
        // reads, a deadlock on PostgreSQL): the group is written again one
        // by one, so only the registration at fault is refused.
        Err(error) => {
            tracing::debug!(%error, devices = jobs.len(), "a group of connects failed; writing them one by one");
            one_by_one(store, caps, jobs, seen, now_ms).await
        }
    };
    seen.clear();
    match outcome {
        Ok(answers) => {
            for (job, answer) in jobs.drain(..).zip(answers) {
                let _ = job.answer.send(answer.map_err(Problem::from));
            }
        }
        Err(error) => {
            tracing::warn!(%error, devices = jobs.len(), "cannot record connecting devices");
            for job in jobs.drain(..) {
                let _ = job.answer.send(Err(unavailable()));
            }
        }
    }
}

/// Each registration's answer: its device, `None` if its actor may not hold
/// a client, or why it was refused.
type Answers = Vec<Result<Option<Device>, StoreError>>;

/// The group in few statements: the actors read once, each known device
/// touched, each new one created in a savepoint of its own, the sessions
/// and details many to a statement.
async fn together(
    store: &Store,
    caps: DeviceCaps,
    jobs: &[Job],
    seen: &[Seen],
    now_ms: i64,
) -> Result<Answers, StoreError> {
    let mut tx = store.write().await?;
    let actors = actors_of(&mut tx, jobs).await?;
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        answers.push(register(&mut tx, &job.registration, &actors, caps, now_ms).await?);
    }
    let sessions: Vec<(Uuid, NewSession<'_>)> = jobs
        .iter()
        .zip(&answers)
        .filter_map(|(job, answer)| {
            let device = answer.as_ref().ok()?.as_ref()?;
            Some((job.registration.account, session(&job.registration, device)))
        })
        .collect();
    let sessions: Vec<(Uuid, &NewSession<'_>)> = sessions
        .iter()
        .map(|(account, one)| (*account, one))
        .collect();
    logs::record_sessions(&mut tx, &sessions, now_ms).await?;
    record_seen_apart(&mut tx, seen).await?;
    tx.commit().await?;
    Ok(answers)
}

/// The group as it was written before it was grouped: each registration
/// (its actor read, its device, its session) in a savepoint of its own.
async fn one_by_one(
    store: &Store,
    caps: DeviceCaps,
    jobs: &[Job],
    seen: &[Seen],
    now_ms: i64,
) -> Result<Answers, StoreError> {
    let mut tx = store.write().await?;
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let registration = &job.registration;
        let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
        let alone: Result<Option<Device>, StoreError> = async {
            let mut actors = HashMap::new();
            if let Some(actor) = registration.actor_id
                && let Some(found) =
                    actors::get(&mut savepoint, registration.account, actor).await?
            {
                actors.insert((registration.account, actor), found);
            }
            let device = register(&mut savepoint, registration, &actors, caps, now_ms).await??;
            if let Some(device) = &device {
                let line = session(registration, device);
                logs::record_sessions(&mut savepoint, &[(registration.account, &line)], now_ms)
                    .await?;
            }
            Ok(device)
        }
        .await;
        match alone {
            Ok(device) => {
                savepoint.commit().await?;
                answers.push(Ok(device));
            }
            Err(error) => {
                savepoint.rollback().await?;
                answers.push(Err(error));
            }
        }
    }
    record_seen_apart(&mut tx, seen).await?;
    tx.commit().await?;
    Ok(answers)
}

/// The admitted devices' details, in a savepoint: failing to record them
/// must not refuse the group's connects.
async fn record_seen_apart(conn: &mut Conn, seen: &[Seen]) -> Result<(), StoreError> {
    if seen.is_empty() {
        return Ok(());
    }
    let mut savepoint = sqlx::Acquire::begin(&mut *conn).await?;
    match record_seen(&mut savepoint, seen).await {
        Ok(()) => savepoint.commit().await?,
        Err(error) => {
            tracing::warn!(%error, devices = seen.len(), "cannot record the devices' details");
            savepoint.rollback().await?;
        }
    }
    Ok(())
}

/// The actors the group's clients connect as, one query per account.
async fn actors_of(
    conn: &mut Conn,
    jobs: &[Job],
) -> Result<HashMap<(Uuid, Uuid), Actor>, StoreError> {
    let mut wanted: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
    for job in jobs {
        if let Some(actor) = job.registration.actor_id {
            wanted
                .entry(job.registration.account)
                .or_default()
                .insert(actor);
        }
    }
    let mut found = HashMap::new();
    for (account, ids) in wanted {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        for actor in actors::get_many(conn, account, &ids).await? {
            found.insert((account, actor.id), actor);
        }
    }
    Ok(found)
}

/// A device's row, or `None` if its actor may not hold a client. The outer
/// error fails the whole group; the inner one (a new device refused: past
/// its cap, no address left) only this registration.
async fn register(
    conn: &mut Conn,
    registration: &Registration,
    actors: &HashMap<(Uuid, Uuid), Actor>,
    caps: DeviceCaps,
    now_ms: i64,
) -> Result<Result<Option<Device>, StoreError>, StoreError> {
    let account = registration.account;
    if let Some(actor) = registration.actor_id {
        let allowed = actors.get(&(account, actor)).is_some_and(|a| {
            !a.disabled && (a.role == Role::ServiceAccount || a.role.in_everyone())
        });
        if !allowed {
            return Ok(Ok(None));
        }
    }
    let connecting = Connecting {
        kind: registration.kind,
        actor_id: registration.actor_id,
        site_id: registration.site_id,
        token_id: Some(registration.token_id),
        device_id: &registration.device_id,
        name: &registration.name,
        os: registration.os.as_deref(),
        version: registration.version.as_deref(),
        remote_ip: Some(registration.remote_ip.to_string()),
    };
    if let Some(known) = devices::touch_on_connect(conn, account, &connecting).await? {
        return Ok(Ok(Some(known)));
    }
    let mut savepoint = sqlx::Acquire::begin(&mut *conn).await?;
    match devices::insert_on_connect(&mut savepoint, account, &connecting, caps, now_ms).await {
        Ok(device) => {
            savepoint.commit().await?;
            Ok(Ok(Some(device)))
        }
        Err(error) => {
            savepoint.rollback().await?;
            Ok(Err(error))
        }
    }
}

/// The session line of an answered registration.
fn session<'a>(registration: &'a Registration, device: &Device) -> NewSession<'a> {
    NewSession {
        actor_id: registration.actor_id,
        device_id: Some(device.id),
        kind: match registration.kind {
            DeviceKind::Client => "client_connect",
            DeviceKind::Gateway => "gateway_connect",
        },
        remote_ip: Some(registration.remote_ip.to_string()),
        user_agent: registration.user_agent.as_deref(),
    }
}

async fn record_seen(conn: &mut Conn, seen: &[Seen]) -> Result<(), StoreError> {
    let seen: Vec<devices::Seen<'_>> = seen
        .iter()
        .map(|one| devices::Seen {
            account: one.account,
            device: one.device,
            name: &one.details.name,
            os: one.details.os.as_deref(),
            version: one.details.version.as_deref(),
            remote_ip: one.remote_ip.to_string(),
            at_ms: one.at_ms,
        })
        .collect();
    devices::record_seen(conn, &seen).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::from_millis;
    use crate::store::{accounts, logs};

    struct Fixture {
        store: Store,
        account: Uuid,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let store = Store::open("sqlite::memory:").await.unwrap();
            let mut tx = store.write().await.unwrap();
            let account = accounts::insert(&mut tx, "acme", "Acme", 0)
                .await
                .unwrap()
                .id;
            tx.commit().await.unwrap();
            Fixture { store, account }
        }

        async fn actor(&self, disabled: bool) -> Uuid {
            let actor = Actor {
                id: Uuid::new_v4(),
                name: "robot".to_string(),
                email: None,
                role: Role::ServiceAccount,
                disabled,
                directory_id: None,
                created_at: from_millis(0),
            };
            let mut tx = self.store.write().await.unwrap();
            actors::insert(&mut tx, self.account, &actor).await.unwrap();
            tx.commit().await.unwrap();
            actor.id
        }

        fn job(&self, actor: Uuid, device: &str) -> (Job, oneshot::Receiver<Answer>) {
            let (answer, answered) = oneshot::channel();
            let registration = Registration {
                account: self.account,
                kind: DeviceKind::Client,
                actor_id: Some(actor),
                site_id: None,
                token_id: Uuid::from_u128(7),
                device_id: device.to_string(),
                name: device.to_string(),
                os: Some("linux".to_string()),
                version: None,
                remote_ip: "198.18.0.1".parse().unwrap(),
                user_agent: None,
            };
            (
                Job {
                    registration,
                    answer,
                },
                answered,
            )
        }

        /// Commits `jobs` as one group; each one's answer, in order.
        async fn group(&self, jobs: Vec<(Job, oneshot::Receiver<Answer>)>) -> Vec<Answer> {
            let caps = DeviceCaps {
                per_actor: 3,
                per_token: 100,
            };
            let (mut jobs, answered): (Vec<Job>, Vec<_>) = jobs.into_iter().unzip();
            commit(&self.store, caps, &mut jobs, &mut Vec::new()).await;
            let mut answers = Vec::new();
            for answer in answered {
                answers.push(answer.await.unwrap());
            }
            answers
        }

        async fn sessions(&self) -> usize {
            let mut conn = self.store.conn().await.unwrap();
            logs::sessions(&mut conn, self.account, None, 1000)
                .await
                .unwrap()
                .len()
        }
    }

    fn device(answer: &Answer) -> Uuid {
        match answer {
            Ok(Some(device)) => device.id,
            other => panic!("not admitted: {other:?}"),
        }
    }

    /// One group holding every case: a known device, a new one twice, a
    /// new one past its actor's cap, a disabled actor's.
    #[tokio::test]
    async fn a_group_answers_each_registration_on_its_own() {
        let f = Fixture::new().await;
        let robot = f.actor(false).await;
        let disabled = f.actor(true).await;
        let known = device(&f.group(vec![f.job(robot, "known")]).await[0]);

        let answers = f
            .group(vec![
                f.job(robot, "known"),
                f.job(robot, "new"),
                f.job(robot, "new"),
                f.job(robot, "third"),
                f.job(robot, "past the cap"),
                f.job(disabled, "theirs"),
            ])
            .await;
        assert_eq!(device(&answers[0]), known);
        let new = device(&answers[1]);
        assert_eq!(
            device(&answers[2]),
            new,
            "the same device twice is one device"
        );
        assert_ne!(new, known);
        device(&answers[3]);
        match &answers[4] {
            Err(problem) => assert_eq!(problem.status, StatusCode::FORBIDDEN, "{problem:?}"),
            other => panic!("past the cap: {other:?}"),
        }
        assert!(matches!(answers[5], Ok(None)), "{:?}", answers[5]);
        // A session line for each admitted connect: 1 before, 4 now.
        assert_eq!(f.sessions().await, 5);
    }

    /// A row the group cannot read (an actor with a role this build does
    /// not know) fails the grouped write; the group is written again one by
    /// one and only that registration is refused.
    #[tokio::test]
    async fn a_bad_row_refuses_only_its_own_registration() {
        let f = Fixture::new().await;
        let robot = f.actor(false).await;
        let odd = f.actor(false).await;
        let mut conn = f.store.conn().await.unwrap();
        sqlx::query("UPDATE actors SET role = 'from_the_future' WHERE id = $1")
            .bind(odd.to_string())
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let answers = f
            .group(vec![f.job(robot, "a"), f.job(odd, "b"), f.job(robot, "c")])
            .await;
        device(&answers[0]);
        // Refused alone: the others around it are admitted.
        assert!(answers[1].is_err(), "{:?}", answers[1]);
        device(&answers[2]);
        assert_eq!(f.sessions().await, 2);
    }
}

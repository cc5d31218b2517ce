//! The store writes of connecting channels, committed in groups.
//!
//! Each connecting device needs its row written (new devices get their
//! addresses) and a session logged before its channel opens, and each
//! admitted one its details recorded. One transaction per write made every
//! connect wait for a commit of its own (an fsync on SQLite): about a
//! thousand connects a second, so a portal restart with 100,000 clients
//! took minutes to recover. Here one task commits whatever queued meanwhile
//! in one transaction (group commit); each registration runs in a savepoint
//! of its own, so a refused device (past its cap, say) leaves the others'
//! writes in.
//!
//! The queue of registrations is bounded. A connect that finds it full is
//! answered at once with 503 and a `Retry-After` that grows with the
//! backlog (load shedding): in a reconnect storm the portal hands out
//! later turns instead of letting connections time out, and the clients'
//! jittered waits turn the storm into a ramp.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::hub::DeviceDetails;
use crate::domain::{Device, DeviceKind, Role};
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

/// One group: every registration in its own savepoint, the details after,
/// one commit; then the answers. A failed commit fails them all (503).
async fn commit(store: &Store, caps: DeviceCaps, jobs: &mut Vec<Job>, seen: &mut Vec<Seen>) {
    let now_ms = Timestamp::now().as_millisecond();
    let mut answers = Vec::with_capacity(jobs.len());
    let outcome: Result<(), StoreError> = async {
        let mut tx = store.write().await?;
        for job in jobs.iter() {
            let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
            match register(&mut savepoint, &job.registration, caps, now_ms).await {
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
        if !seen.is_empty() {
            let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
            match record_seen(&mut savepoint, seen).await {
                Ok(()) => savepoint.commit().await?,
                Err(error) => {
                    tracing::warn!(%error, devices = seen.len(), "cannot record the devices' details");
                    savepoint.rollback().await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    seen.clear();
    match outcome {
        Ok(()) => {
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

/// A device's row and its session, or `None` if its actor may not hold a
/// client.
async fn register(
    conn: &mut Conn,
    registration: &Registration,
    caps: DeviceCaps,
    now_ms: i64,
) -> Result<Option<Device>, StoreError> {
    let Registration {
        account,
        kind,
        actor_id,
        site_id,
        token_id,
        ..
    } = *registration;
    if let Some(actor) = actor_id {
        let actor = actors::get(conn, account, actor).await?;
        if !actor.is_some_and(|a| {
            !a.disabled && (a.role == Role::ServiceAccount || a.role.in_everyone())
        }) {
            return Ok(None);
        }
    }
    let remote_ip = registration.remote_ip.to_string();
    let device = devices::upsert_on_connect(
        conn,
        account,
        &Connecting {
            kind,
            actor_id,
            site_id,
            token_id: Some(token_id),
            device_id: &registration.device_id,
            name: &registration.name,
            os: registration.os.as_deref(),
            version: registration.version.as_deref(),
            remote_ip: Some(remote_ip.clone()),
        },
        caps,
        now_ms,
    )
    .await?;
    logs::record_session(
        conn,
        account,
        &NewSession {
            actor_id,
            device_id: Some(device.id),
            kind: match kind {
                DeviceKind::Client => "client_connect",
                DeviceKind::Gateway => "gateway_connect",
            },
            remote_ip: Some(remote_ip),
            user_agent: registration.user_agent.as_deref(),
        },
        now_ms,
    )
    .await?;
    Ok(Some(device))
}

async fn record_seen(conn: &mut Conn, seen: &[Seen]) -> Result<(), StoreError> {
    for one in seen {
        devices::record_seen(
            conn,
            one.account,
            one.device,
            &one.details.name,
            one.details.os.as_deref(),
            one.details.version.as_deref(),
            &one.remote_ip.to_string(),
            one.at_ms,
        )
        .await?;
    }
    Ok(())
}

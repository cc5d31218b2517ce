//! The hub's task, the async shell around the sans-IO core (`hub`). It owns
//! the receivers (the sockets' and the cluster listener's events, committed
//! changes, load answers, the tick), hands each to the core with the time,
//! and carries out what the core gives: frames into the connections'
//! queues, messages to the cluster, presence and counters into the shared
//! state, and account loads into tasks of their own, whose answers come back
//! as inputs. It waits on nothing else: a slow database or a slow
//! connection never holds it up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::admission::{Admission, Seen};
use super::cluster::ClusterMessage;
use super::hub::{
    ConnId, Frame, GrantWrite, Hub, Inbound, Input, Joined, LoadRequest, Metric, Output,
    PresenceUpdate,
};
use super::loader;
use super::notify::Heard;
use super::writer::{self, Writer};
use crate::change::Change;
use crate::metrics::PortalMetrics;
use crate::online::Online;
use crate::state::AppState;

/// How often timeouts, expiries and the heartbeat are checked.
const TICK: Duration = Duration::from_millis(200);

/// Flow log batches held at once, at most (each gateway keeps 8 in
/// flight): past it a batch is not confirmed and its gateway sends it
/// again later, so a gateway that floods the log cannot pile up tasks.
static FLOW_BATCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);
/// Of those, written at once: the rest wait their turn, so the flow log
/// never crowds out the API's and the ledger's writes.
static FLOW_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// What the sockets and the cluster listener send the hub.
#[derive(Debug)]
pub(super) enum HubEvent {
    /// A channel passed authentication; `sender` is its outbound queue.
    Joined {
        joined: Box<Joined>,
        sender: mpsc::Sender<Outbound>,
    },
    Message {
        conn: ConnId,
        message: Inbound,
    },
    Closed {
        conn: ConnId,
    },
    Heard(Heard),
}

impl From<Heard> for HubEvent {
    fn from(heard: Heard) -> Self {
        HubEvent::Heard(heard)
    }
}

/// What a socket task writes.
#[derive(Debug)]
pub(super) enum Outbound {
    /// Shared: one change fanned out to thousands is encoded once, and a
    /// queue's slots stay two words each.
    Text(Arc<str>),
    /// Close the socket (after the text frames queued before it).
    Close,
}

/// The connections' bounded outbound queues.
#[derive(Debug, Default)]
pub(super) struct Outlets {
    queues: HashMap<ConnId, mpsc::Sender<Outbound>>,
}

impl Outlets {
    pub(super) fn open(&mut self, conn: ConnId, sender: mpsc::Sender<Outbound>) {
        self.queues.insert(conn, sender);
    }

    /// Queues a frame; `Err(overloaded)` if the queue is full (`true`) or
    /// the socket is gone (`false`). A connection without a queue here has
    /// closed already, and its frames are dropped.
    fn send(&self, conn: ConnId, text: Arc<str>) -> Result<(), bool> {
        let Some(queue) = self.queues.get(&conn) else {
            return Ok(());
        };
        match queue.try_send(Outbound::Text(text)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(false),
        }
    }

    /// Closes after what is queued; dropping the sender ends the socket
    /// task even if the close itself does not fit.
    fn close(&mut self, conn: ConnId) {
        if let Some(queue) = self.queues.remove(&conn) {
            let _ = queue.try_send(Outbound::Close);
        }
    }

    /// A connection's queue, for an answer that comes later (after a
    /// store write).
    fn sender(&self, conn: ConnId) -> Option<mpsc::Sender<Outbound>> {
        self.queues.get(&conn).cloned()
    }

    /// The socket closed by itself.
    fn gone(&mut self, conn: ConnId) {
        self.queues.remove(&conn);
    }
}

/// Where outputs other than frames go.
pub(super) struct Sinks<'a> {
    pub online: &'a Online,
    pub activity: &'a crate::activity::Activity,
    pub metrics: &'a PortalMetrics,
    pub cluster: Option<&'a mpsc::UnboundedSender<ClusterMessage>>,
    /// The ledger's writer (see `writer`).
    pub ledger: Option<&'a mpsc::UnboundedSender<(u64, GrantWrite)>>,
    /// Where gateways' flows are recorded.
    pub store: Option<&'a crate::Store>,
    /// Where admitted devices' details are recorded.
    pub admission: Option<&'a Admission>,
}

/// Carries out everything the core gave. Frames a queue cannot take go
/// back to the core as `Undeliverable`, which closes that connection alone,
/// until nothing is left. The loads asked for are returned to be started.
pub(super) fn carry_out(
    hub: &mut Hub,
    outlets: &mut Outlets,
    sinks: &Sinks<'_>,
    now: Instant,
    wall: Timestamp,
) -> Vec<LoadRequest> {
    let mut loads = Vec::new();
    // The last frame encoded: a change fans out as the same frame to client
    // after client, encoded once (comparing costs less than encoding).
    let mut last: Option<(Frame, Arc<str>)> = None;
    loop {
        let mut stalled: Vec<(ConnId, bool)> = Vec::new();
        while let Some(output) = hub.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    let text = match &last {
                        Some((encoded, text)) if *encoded == frame => text.clone(),
                        _ => match frame.to_json() {
                            Ok(text) => {
                                let text: Arc<str> = text.into();
                                last = Some((frame, text.clone()));
                                text
                            }
                            Err(error) => {
                                tracing::error!(%error, "cannot encode a channel message");
                                continue;
                            }
                        },
                    };
                    if let Err(overloaded) = outlets.send(conn, text)
                        && !stalled.iter().any(|(c, _)| *c == conn)
                    {
                        stalled.push((conn, overloaded));
                    }
                }
                Output::Close { conn } => outlets.close(conn),
                Output::Publish(message) => {
                    if let Some(cluster) = sinks.cluster {
                        let _ = cluster.send(message);
                    }
                }
                Output::Presence(PresenceUpdate::Client { device, online }) => {
                    sinks.online.set_client(device.0, online);
                    sinks.activity.touch();
                }
                Output::Presence(PresenceUpdate::Gateway { device, load }) => {
                    sinks.online.set_gateway(device.0, load);
                    sinks.activity.touch();
                }
                Output::Refused(refused) => sinks.activity.denied(
                    refused.account,
                    crate::activity::Denial {
                        seq: 0,
                        at: wall,
                        actor: refused.actor,
                        client: refused.client.0,
                        resource: refused.resource.0,
                        reason: refused.reason,
                        violated: refused.violated,
                        count: 1,
                    },
                ),
                Output::Metric(Metric::Granted) => {
                    sinks.metrics.access_granted.fetch_add(1, Ordering::Relaxed);
                }
                Output::Metric(Metric::Denied(reason)) => sinks.metrics.denied(reason),
                Output::Load(request) => loads.push(request),
                Output::Seen {
                    account,
                    device,
                    details,
                    remote_ip,
                } => {
                    if let Some(admission) = sinks.admission {
                        admission.seen(Seen {
                            account,
                            device,
                            details,
                            remote_ip,
                            at_ms: wall.as_millisecond(),
                        });
                    }
                }
                Output::StoreFlows {
                    conn,
                    account,
                    gateway,
                    batch,
                    flows,
                } => {
                    let permit = FLOW_BATCHES.try_acquire();
                    if permit.is_err() {
                        tracing::debug!(%gateway, batch, "flow log busy; the gateway sends the batch again");
                    }
                    if let (Some(store), Ok(permit)) = (sinks.store, permit) {
                        let store = store.clone();
                        let answer = outlets.sender(conn);
                        let now_ms = wall.as_millisecond();
                        tokio::spawn(async move {
                            let _held = permit;
                            let Ok(_writing) = FLOW_WRITES.acquire().await else {
                                return;
                            };
                            match record_flows(&store, account, gateway.0, &flows, now_ms).await {
                                Ok(stored) => {
                                    tracing::debug!(%gateway, batch, stored, "flows stored");
                                    let ack =
                                        postern_model::protocol::PortalToGateway::FlowsStored {
                                            batch,
                                        };
                                    if let (Some(queue), Ok(text)) =
                                        (answer, serde_json::to_string(&ack))
                                    {
                                        // A full queue: the gateway sends the batch again.
                                        let _ = queue.try_send(Outbound::Text(text.into()));
                                    }
                                }
                                // Not confirmed: the gateway keeps the batch and
                                // sends it again after a reconnect.
                                Err(error) => {
                                    tracing::warn!(%error, %gateway, batch, "cannot store flows")
                                }
                            }
                        });
                    }
                }
                Output::Persist { seq, write } => {
                    if let Some(ledger) = sinks.ledger {
                        let _ = ledger.send((seq, write));
                    }
                }
            }
        }
        if stalled.is_empty() {
            return loads;
        }
        for (conn, overloaded) in stalled {
            hub.handle(now, wall, Input::Undeliverable { conn, overloaded });
        }
    }
}

/// A gateway's flows, in one transaction.
async fn record_flows(
    store: &crate::Store,
    account: uuid::Uuid,
    gateway: uuid::Uuid,
    flows: &[postern_model::protocol::FlowRecord],
    now_ms: i64,
) -> crate::store::Result<u64> {
    let mut tx = store.write().await?;
    let stored = crate::store::logs::record_flows(&mut tx, account, gateway, flows, now_ms).await?;
    tx.commit().await?;
    Ok(stored)
}

pub(super) struct Shell {
    hub: Hub,
    state: Arc<AppState>,
    outlets: Outlets,
    cluster: Option<mpsc::UnboundedSender<ClusterMessage>>,
    writer: Writer,
    admission: Admission,
}

impl Shell {
    pub(super) fn new(
        hub: Hub,
        state: Arc<AppState>,
        cluster: Option<mpsc::UnboundedSender<ClusterMessage>>,
        writer: Writer,
        admission: Admission,
    ) -> Self {
        Shell {
            hub,
            state,
            outlets: Outlets::default(),
            cluster,
            writer,
            admission,
        }
    }

    /// Runs until the sockets' or the changes' senders are all gone.
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<HubEvent>,
        mut changes: mpsc::UnboundedReceiver<(Uuid, Change)>,
    ) {
        let (answers, mut answered) = mpsc::unbounded_channel::<Input>();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let input = tokio::select! {
                // Committed changes first: a request that follows an admin's
                // change must be decided on the changed graph.
                biased;
                change = changes.recv() => match change {
                    Some(first) => {
                        // Every change queued so far, in one batch.
                        let mut batch = vec![first];
                        while let Ok(more) = changes.try_recv() {
                            batch.push(more);
                        }
                        Input::Changes(batch)
                    }
                    None => break,
                },
                Some(answer) = answered.recv() => answer,
                event = events.recv() => match event {
                    Some(event) => self.admit(event),
                    None => break,
                },
                _ = tick.tick() => Input::Tick,
            };
            let (now, wall) = (Instant::now(), Timestamp::now());
            self.hub.handle(now, wall, input);
            let sinks = Sinks {
                online: self.state.online(),
                activity: self.state.activity(),
                metrics: &self.state.metrics,
                cluster: self.cluster.as_ref(),
                ledger: Some(&self.writer.sender),
                store: Some(&self.state.store),
                admission: Some(&self.admission),
            };
            for request in carry_out(&mut self.hub, &mut self.outlets, &sinks, now, wall) {
                let store = self.state.store.clone();
                let answers = answers.clone();
                let mut applied = self.writer.applied.clone();
                tokio::spawn(async move {
                    writer::reached(&mut applied, request.after).await;
                    let result = Box::new(loader::load(&store, &request).await);
                    let _ = answers.send(Input::Loaded {
                        account: request.account,
                        result,
                    });
                });
            }
        }
    }

    /// An event from outside, as the core's input; the shell keeps the
    /// connections' queues.
    fn admit(&mut self, event: HubEvent) -> Input {
        match event {
            HubEvent::Joined { joined, sender } => {
                self.outlets.open(joined.conn, sender);
                Input::Joined(joined)
            }
            HubEvent::Message { conn, message } => Input::Message { conn, message },
            HubEvent::Closed { conn } => {
                self.outlets.gone(conn);
                Input::Closed { conn }
            }
            HubEvent::Heard(Heard::Message(message)) => Input::Cluster(message),
            HubEvent::Heard(Heard::Resync) => Input::ClusterResync,
        }
    }
}

#[cfg(test)]
mod tests {
    use postern_model::ClientId;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;
    use crate::channels::hub::tests::{ACCOUNT, CLIENT, ENGINEERS, World, client, graph};
    use crate::channels::hub::{GraphLoad, Loaded};

    /// Moves one input through the core and carries out what it gives.
    fn step(
        world: &mut World,
        outlets: &mut Outlets,
        sinks: &Sinks<'_>,
        input: Input,
    ) -> Vec<LoadRequest> {
        world.hub.handle(world.now, world.wall, input);
        carry_out(&mut world.hub, outlets, sinks, world.now, world.wall)
    }

    fn texts(queue: &mut mpsc::Receiver<Outbound>) -> (Vec<String>, bool) {
        let mut texts = Vec::new();
        loop {
            match queue.try_recv() {
                Ok(Outbound::Text(text)) => texts.push(text.to_string()),
                Ok(Outbound::Close) | Err(TryRecvError::Disconnected) => return (texts, true),
                Err(TryRecvError::Empty) => return (texts, false),
            }
        }
    }

    #[test]
    fn a_connection_whose_queue_is_full_is_closed_alone() {
        let (online, metrics) = (Online::default(), PortalMetrics::default());
        let sinks = Sinks {
            online: &online,
            activity: &crate::activity::Activity::default(),
            metrics: &metrics,
            cluster: None,
            ledger: None,
            store: None,
            admission: None,
        };
        let mut world = World::new();
        let mut outlets = Outlets::default();
        let (slow, mut slow_queue) = mpsc::channel(2);
        let (fast, mut fast_queue) = mpsc::channel(64);
        let other = ClientId::from_u128(0xc2);
        outlets.open(1, slow);
        outlets.open(2, fast);
        let loads = step(
            &mut world,
            &mut outlets,
            &sinks,
            client(1, ACCOUNT, CLIENT, 1),
        );
        assert_eq!(loads.len(), 1);
        step(
            &mut world,
            &mut outlets,
            &sinks,
            client(2, ACCOUNT, other, 2),
        );
        let loaded = Loaded {
            graph: GraphLoad::Whole(Box::new(graph(3, &[1, 2, 3]))),
            verified: Default::default(),
            grants: Some(Vec::new()),
        };
        let answer = Input::Loaded {
            account: ACCOUNT,
            result: Box::new(Ok(loaded)),
        };
        step(&mut world, &mut outlets, &sinks, answer);
        assert!(online.client(CLIENT.0) && online.client(other.0));
        // Three resources go at once: the slow queue (one `init` in it
        // already) takes one more frame.
        let change = Input::Changes(vec![(ACCOUNT, Change::Groups(vec![ENGINEERS]))]);
        let loads = step(&mut world, &mut outlets, &sinks, change);
        assert_eq!(loads.len(), 1);
        let loaded = Loaded {
            graph: GraphLoad::Whole(Box::new(graph(3, &[]))),
            verified: Default::default(),
            grants: Some(Vec::new()),
        };
        let answer = Input::Loaded {
            account: ACCOUNT,
            result: Box::new(Ok(loaded)),
        };
        step(&mut world, &mut outlets, &sinks, answer);

        let (slow_texts, slow_closed) = texts(&mut slow_queue);
        assert_eq!(slow_texts.len(), 2, "{slow_texts:?}");
        assert!(slow_closed, "the slow connection's queue is closed");
        assert!(!online.client(CLIENT.0), "the slow client is gone");
        let (fast_texts, fast_closed) = texts(&mut fast_queue);
        assert_eq!(
            fast_texts.len(),
            4,
            "init and three removals: {fast_texts:?}"
        );
        assert!(
            fast_texts[1..]
                .iter()
                .all(|t| t.contains("resource_removed"))
        );
        assert!(!fast_closed);
        assert!(online.client(other.0), "the other client stays");
    }
}

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! A reconnect storm, as after a portal restart: thousands of clients that
//! all connect at once. Every one must get its `init` (none dropped for
//! lack of a slot); a connect the portal cannot take yet is answered 503
//! with `Retry-After`, never with a reset or a timeout; and a client that
//! stayed connected keeps getting its access requests answered meanwhile.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::channel::{Peer, key};
use support::{TempDb, TestApp};

/// Clients in the storm (each holds two sockets in this process).
const CLIENTS: usize = 2000;
/// The portal's connect queue, small so that the storm overflows it.
const QUEUE: usize = 32;

/// Room for every socket of the test: the client's end and the portal's.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = (CLIENTS as u64) * 2 + 512;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed {
        assert!(
            hard >= needed,
            "the storm test needs {needed} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// What one client went through until it held a channel with its `init`.
struct Joined {
    peer: Peer,
    /// Refusals it got: (status, Retry-After).
    refusals: Vec<(u16, Option<u64>)>,
}

/// Connects like the daemon: a 503 waits for its `Retry-After` (spread up
/// to half of it again), anything else but success is a failure.
async fn join(
    addr: std::net::SocketAddr,
    token: String,
    device: String,
    seed: u8,
    spread: u64,
) -> Joined {
    let mut refusals = Vec::new();
    loop {
        match Peer::connect_or_busy(addr, "/v1/client", &token, &device, &key(seed)).await {
            Ok(mut peer) => {
                let init = peer.next_of("init").await;
                assert!(init["resources"].is_array(), "{device}: {init}");
                return Joined { peer, refusals };
            }
            Err(refusal) => {
                assert_eq!(refusal.status, 503, "{device}: {refusal:?}");
                let wait = refusal.retry_after.expect("a 503 says when to come back");
                assert!((1..=60).contains(&wait), "{device}: {refusal:?}");
                assert!(refusal.body.contains("busy"), "{refusal:?}");
                refusals.push((refusal.status, refusal.retry_after));
                let spread = Duration::from_millis(spread % (wait * 500).max(1));
                tokio::time::sleep(Duration::from_secs(wait) + spread).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_admits_every_client_and_sheds_with_retry_after() {
    raise_open_file_limit();
    let db = TempDb::new("storm");
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.limits.devices_per_actor = 10_000;
        state.limits.devices_per_token = 10_000;
        state.limits.connect_queue = QUEUE;
    })
    .await;
    let addr = app.serve().await;
    let seeded = support::seed(&app).await;

    // Every client has connected once: the storm is of devices the portal
    // knows, as after a restart. Fewer at a time than the queue holds.
    let token = seeded.client_token.clone();
    let started = std::time::Instant::now();
    let mut first = Vec::with_capacity(CLIENTS);
    for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(QUEUE / 2) {
        let joins = chunk.iter().map(|n| {
            tokio::spawn(join(
                addr,
                token.clone(),
                format!("storm-{n}"),
                (*n % 251) as u8,
                *n as u64 * 7919,
            ))
        });
        for joined in futures_util::future::join_all(joins).await {
            first.push(joined.unwrap());
        }
    }
    drop(first);
    eprintln!("storm: first connects took {:?}", started.elapsed());

    // A gateway and a client that stay connected through the storm.
    let mut gateway = Peer::connect(
        addr,
        "/v1/gateway",
        &seeded.gateway_token,
        "gw-1",
        &key(252),
    )
    .await
    .unwrap();
    assert_eq!(gateway.next_of("init").await["type"], "init");
    let mut steady = join(addr, token.clone(), "steady".into(), 253, 0)
        .await
        .peer;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The storm: every client at once.
    let started = std::time::Instant::now();
    let admitted = Arc::new(AtomicUsize::new(0));
    let storm: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let admitted = admitted.clone();
            tokio::spawn({
                let token = token.clone();
                async move {
                    let joined = join(
                        addr,
                        token,
                        format!("storm-{n}"),
                        (n % 251) as u8,
                        n as u64 * 104_729,
                    )
                    .await;
                    admitted.fetch_add(1, Ordering::Relaxed);
                    joined
                }
            })
        })
        .collect();

    // Meanwhile the steady client's requests are answered, and granted
    // through the gateway.
    let mut answered = 0;
    let mut reference = 0;
    while admitted.load(Ordering::Relaxed) < CLIENTS || answered < 3 {
        reference += 1;
        steady
            .send(json!({"type": "request_access", "ref": reference.to_string(), "resource_id": seeded.resource}))
            .await;
        let authorize = gateway.next_of("authorize").await;
        gateway
            .send(json!({"type": "authorized", "ref": authorize["ref"]}))
            .await;
        let granted = steady.next_of("access_granted").await;
        assert_eq!(granted["ref"], reference.to_string(), "{granted}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!("storm: all admitted after {:?}", started.elapsed());
    let mut holding = Vec::with_capacity(CLIENTS);
    let mut shed = 0;
    for task in storm {
        let joined = task.await.unwrap();
        shed += joined.refusals.len();
        holding.push(joined.peer);
    }
    assert_eq!(holding.len(), CLIENTS);
    // The queue is far smaller than the storm: the portal had to shed, and
    // did so with 503 + Retry-After (checked in `join`), not by dropping.
    assert!(
        shed > 0,
        "a storm of {CLIENTS} never filled a queue of {QUEUE}: nothing was shed"
    );
    // Every client is online at once, and the portal's store knows each.
    let clients = app
        .expect(axum::http::StatusCode::OK, "GET", "/clients", None)
        .await;
    let online = clients["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["online"] == true)
        .count();
    assert_eq!(online, CLIENTS + 1, "online clients after the storm");
    assert_eq!(
        app.state
            .metrics
            .channels_rate_limited
            .load(Ordering::Relaxed),
        0
    );
    eprintln!(
        "storm: {CLIENTS} clients admitted, {shed} connects shed with Retry-After, {answered} access requests answered meanwhile"
    );
}

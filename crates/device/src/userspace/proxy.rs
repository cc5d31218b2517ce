//! The SOCKS5 listener and its connections' tasks. A task speaks SOCKS5
//! with the app, resolves a name through the client's DNS path (the same
//! queue the TUN client's stub uses: names of DNS resources get proxy
//! addresses), asks the device loop to open the connection in the userspace
//! stack, answers the app, and then moves bytes between the app's socket
//! and a [`Pipe`] the loop empties into the stack (and fills from it).
//! Bounded pipes carry back-pressure both ways: a full pipe stops reading
//! the app; a full stack buffer stops emptying the pipe.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, oneshot};

use super::netstack::{ConnectionId, Refusal};
use super::socks::{self, Command, Destination, Reply};
use crate::stub::{ReplyTo, StubQuery};

/// Bytes a pipe holds each way before the side filling it waits.
pub const PIPE_BYTES: usize = 256 * 1024;
/// Datagrams an association holds each way.
pub const PIPE_DATAGRAMS: usize = 256;
/// How long a client may take over its greeting and request.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a name may take to resolve.
const RESOLVE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog (each
/// may hold about 1.3 MB of buffers at full speed).
const CONNECTIONS: usize = 1024;

/// A connection's bytes between its task and the device loop.
#[derive(Default)]
pub struct Pipe {
    state: Mutex<PipeState>,
    /// The loop added to `down`, ended it, or reset the connection.
    pub data: Notify,
    /// The loop made room in `up`.
    pub room: Notify,
}

#[derive(Default)]
pub struct PipeState {
    /// From the app, for the far end.
    pub up: std::collections::VecDeque<u8>,
    /// The app closed its sending side.
    pub up_closed: bool,
    /// The app's connection failed (reset): the far end's is reset too.
    pub up_reset: bool,
    /// From the far end, for the app.
    pub down: Vec<u8>,
    /// The far end closed its sending side.
    pub down_closed: bool,
    /// The connection ended without a close (access revoked, reset by the
    /// far end): the app's connection is reset.
    pub reset: bool,
    /// The app's connection is over (the task ended).
    pub gone: bool,
    /// An association's datagrams: (destination, payload) from the app.
    pub datagrams_up: std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
    /// (source, payload) for the app.
    pub datagrams_down: std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Pipe {
    pub fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A poisoned lock means a task panicked mid-copy; its bytes are
        // still what they were.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a task asks of the device loop.
pub enum Request {
    /// Open a TCP connection; the answer is the local address or why not.
    Connect {
        id: ConnectionId,
        to: SocketAddr,
        pipe: Arc<Pipe>,
        answer: oneshot::Sender<Result<SocketAddr, Refusal>>,
    },
    /// Open a UDP association.
    Associate {
        id: ConnectionId,
        pipe: Arc<Pipe>,
        answer: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// What the tasks share.
#[derive(Clone)]
struct Context {
    requests: mpsc::Sender<Request>,
    queries: mpsc::Sender<StubQuery>,
    /// Wakes the loop: a pipe has bytes or an end for it.
    wake: Arc<Notify>,
    next_id: Arc<AtomicU64>,
    /// DNS query ids: a random walk from a fresh seed (the forwarder passes
    /// them on to upstream resolvers, so they must not be guessable).
    query_ids: Arc<AtomicU64>,
    /// This process's user: other local users may not use its access.
    uid: u32,
}

/// Listens on `listen` for SOCKS5 clients (in the runtime's context).
pub fn serve(
    listen: SocketAddr,
    requests: mpsc::Sender<Request>,
    queries: mpsc::Sender<StubQuery>,
    wake: Arc<Notify>,
    seed: u64,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    let context = Context {
        requests,
        queries,
        wake,
        next_id: Arc::new(AtomicU64::new(1)),
        query_ids: Arc::new(AtomicU64::new(seed)),
        uid: nix::unistd::geteuid().as_raw(),
    };
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "SOCKS5 accept failed");
                    continue;
                }
            };
            let context = context.clone();
            tokio::spawn(async move {
                if !allowed(peer, bound, context.uid) {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(HANDSHAKE, socks::refuse(&mut stream)).await;
                    drop(slot);
                    return;
                }
                if let Err(error) = serve_client(stream, &context).await {
                    tracing::debug!(%peer, %error, "SOCKS5 client ended");
                }
                drop(slot);
            });
        }
    });
    Ok(bound)
}

/// Whether a client may use this proxy: on loopback only processes of
/// this user (or root, who could be it anyway); every local user shares
/// loopback, and the proxy carries this user's access. A proxy told to
/// listen elsewhere serves whoever reaches it (it warned at start).
fn allowed(peer: SocketAddr, local: SocketAddr, uid: u32) -> bool {
    if !peer.ip().is_loopback() {
        return true;
    }
    match postern_sys::tcp::loopback_peer_uid(peer, local) {
        Some(owner) if owner == uid || owner == 0 => true,
        owner => {
            tracing::warn!(%peer, ?owner, "refused a SOCKS5 client of another user: this proxy carries only its own user's access");
            false
        }
    }
}

async fn serve_client(mut stream: TcpStream, context: &Context) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (command, destination) =
        match tokio::time::timeout(HANDSHAKE, socks::handshake(&mut stream)).await {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return Err(std::io::Error::other(error)),
            Err(_) => return Err(std::io::Error::other("no request in time")),
        };
    let id = context.next_id.fetch_add(1, Ordering::Relaxed);
    match command {
        Command::Connect => connect(stream, destination.literal(), id, context).await,
        Command::UdpAssociate => associate(stream, destination.literal(), id, context).await,
    }
}

async fn connect(
    mut stream: TcpStream,
    destination: Destination,
    id: ConnectionId,
    context: &Context,
) -> std::io::Result<()> {
    let to = match resolve(&destination, &context.queries, &context.query_ids).await {
        Ok(to) => to,
        Err(reply) => {
            tracing::info!(destination = ?destination, "SOCKS5: the name does not resolve");
            stream.write_all(&socks::reply(reply, None)).await?;
            return Ok(());
        }
    };
    let pipe = Arc::new(Pipe::default());
    let (answer, opened) = oneshot::channel();
    let request = Request::Connect {
        id,
        to,
        pipe: Arc::clone(&pipe),
        answer,
    };
    if context.requests.send(request).await.is_err() {
        stream
            .write_all(&socks::reply(Reply::GeneralFailure, None))
            .await?;
        return Ok(());
    }
    context.wake.notify_one();
    let result = opened.await.unwrap_or(Err(Refusal::Failed));
    match result {
        Ok(local) => {
            tracing::debug!(%to, %local, "SOCKS5 connection open");
            stream
                .write_all(&socks::reply(Reply::Succeeded, Some(local)))
                .await?;
            carry(stream, &pipe, &context.wake).await;
        }
        Err(why) => {
            tracing::info!(%to, ?why, "SOCKS5 connection refused");
            stream
                .write_all(&socks::reply(reply_for(why), None))
                .await?;
        }
    }
    Ok(())
}

/// The SOCKS5 answer to a refusal.
pub fn reply_for(why: Refusal) -> Reply {
    match why {
        Refusal::NotAllowed => Reply::NotAllowed,
        Refusal::HostUnreachable => Reply::HostUnreachable,
        Refusal::ConnectionRefused => Reply::ConnectionRefused,
        Refusal::TimedOut => Reply::TtlExpired,
        Refusal::NotReady | Refusal::Failed => Reply::GeneralFailure,
    }
}

/// Moves bytes until both sides closed, or resets the app's connection
/// when the loop says the connection is gone.
async fn carry(stream: TcpStream, pipe: &Pipe, wake: &Notify) {
    let (mut reader, mut writer) = stream.into_split();
    let reset = {
        let up = async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                loop {
                    let (reset, full) = {
                        let state = pipe.lock();
                        (state.reset, state.up.len() >= PIPE_BYTES)
                    };
                    if reset {
                        return;
                    }
                    if !full {
                        break;
                    }
                    pipe.room.notified().await;
                }
                match reader.read(&mut buffer).await {
                    Ok(0) => {
                        pipe.lock().up_closed = true;
                        wake.notify_one();
                        return;
                    }
                    Err(_) => {
                        pipe.lock().up_reset = true;
                        wake.notify_one();
                        return;
                    }
                    Ok(n) => {
                        pipe.lock().up.extend(&buffer[..n]);
                        wake.notify_one();
                    }
                }
            }
        };
        let down = async {
            loop {
                let (data, closed, reset) = {
                    let mut state = pipe.lock();
                    (
                        std::mem::take(&mut state.down),
                        state.down_closed,
                        state.reset,
                    )
                };
                // What came before a reset is delivered first.
                if !data.is_empty() {
                    // Room in the pipe: the loop reads the stack again.
                    wake.notify_one();
                    if writer.write_all(&data).await.is_err() {
                        return false;
                    }
                    continue;
                }
                if reset {
                    return true;
                }
                if closed {
                    let _ = writer.shutdown().await;
                    return false;
                }
                pipe.data.notified().await;
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut reset = false;
        loop {
            if reset || (up_done && down_done) {
                break;
            }
            tokio::select! {
                () = &mut up, if !up_done => up_done = true,
                was_reset = &mut down, if !down_done => {
                    down_done = true;
                    reset = was_reset;
                }
            }
        }
        reset
    };
    if reset {
        // A reset, not a close: the app must not take a cut-off stream
        // for a whole one.
        let _ = socket2::SockRef::from(writer.as_ref()).set_linger(Some(Duration::ZERO));
        writer.forget();
    }
    pipe.lock().gone = true;
    wake.notify_one();
}

/// UDP ASSOCIATE: a UDP socket beside the listener for the app's
/// datagrams, alive while the control connection is. Datagrams come only
/// from the address the request named (or, when it named none, the first
/// sender from the control connection's address), and on loopback only
/// from a socket of this user.
async fn associate(
    mut stream: TcpStream,
    named: Destination,
    id: ConnectionId,
    context: &Context,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let app_ip = stream.peer_addr()?.ip();
    let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    let pipe = Arc::new(Pipe::default());
    let (answer, opened) = oneshot::channel();
    let request = Request::Associate {
        id,
        pipe: Arc::clone(&pipe),
        answer,
    };
    let result = match context.requests.send(request).await {
        Ok(()) => {
            context.wake.notify_one();
            opened.await.unwrap_or(Err(Refusal::Failed))
        }
        Err(_) => Err(Refusal::Failed),
    };
    if let Err(why) = result {
        stream
            .write_all(&socks::reply(reply_for(why), None))
            .await?;
        return Ok(());
    }
    stream
        .write_all(&socks::reply(Reply::Succeeded, Some(socket.local_addr()?)))
        .await?;
    let mut app: Option<SocketAddr> = match named {
        Destination::Address(address) if !address.ip().is_unspecified() && address.port() != 0 => {
            Some(address)
        }
        _ => None,
    };
    let mut buffer = vec![0u8; 65_535];
    let mut control = [0u8; 64];
    loop {
        tokio::select! {
            // The association ends with its control connection.
            read = stream.read(&mut control) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
            received = socket.recv_from(&mut buffer) => {
                let Ok((n, from)) = received else { break };
                // Only the app that asked (RFC 1928 section 7).
                if from.ip() != app_ip || app.is_some_and(|a| a != from) {
                    continue;
                }
                if app.is_none() {
                    let owner = from
                        .ip()
                        .is_loopback()
                        .then(|| postern_sys::tcp::loopback_udp_owner(from));
                    if owner.is_some_and(|o| o != Some(context.uid) && o != Some(0)) {
                        tracing::warn!(%from, "a datagram from another user's socket on a SOCKS5 association; dropped");
                        continue;
                    }
                    app = Some(from);
                }
                let Some((destination, payload)) = socks::parse_datagram(&buffer[..n]) else {
                    continue;
                };
                let Ok(to) = resolve(&destination, &context.queries, &context.query_ids).await else {
                    continue;
                };
                {
                    let mut state = pipe.lock();
                    if state.datagrams_up.len() < PIPE_DATAGRAMS {
                        state.datagrams_up.push_back((to, payload.to_vec()));
                    }
                }
                context.wake.notify_one();
            }
            () = pipe.data.notified() => {
                let datagrams: Vec<_> = pipe.lock().datagrams_down.drain(..).collect();
                if let Some(app) = app {
                    for (from, payload) in datagrams {
                        let _ = socket.send_to(&socks::datagram(from, &payload), app).await;
                    }
                }
            }
        }
    }
    pipe.lock().gone = true;
    context.wake.notify_one();
    Ok(())
}

/// The address to connect to: an address as it is, a name through the
/// client's DNS path (A first, then AAAA).
async fn resolve(
    destination: &Destination,
    queries: &mpsc::Sender<StubQuery>,
    ids: &AtomicU64,
) -> Result<SocketAddr, Reply> {
    let (name, port) = match destination {
        Destination::Address(address) => return Ok(*address),
        Destination::Name(name, port) => (name, *port),
    };
    let name = Name::from_ascii(format!("{name}.")).map_err(|_| Reply::HostUnreachable)?;
    for kind in [RecordType::A, RecordType::AAAA] {
        if let Some(ip) = ask(&name, kind, queries, query_id(ids)).await {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(Reply::HostUnreachable)
}

/// One question to the client's DNS path; the first address answered.
async fn ask(
    name: &Name,
    kind: RecordType,
    queries: &mpsc::Sender<StubQuery>,
    id: u16,
) -> Option<IpAddr> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.queries.push(Query::query(name.clone(), kind));
    let bytes = message.to_vec().ok()?;
    let (reply, answer) = oneshot::channel();
    queries
        .send(StubQuery {
            bytes,
            reply: ReplyTo::Channel(reply),
        })
        .await
        .ok()?;
    let answer = tokio::time::timeout(RESOLVE, answer).await.ok()?.ok()?;
    let answer = Message::from_vec(&answer).ok()?;
    if answer.metadata.id != id {
        return None;
    }
    answer.answers.iter().find_map(|record| match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    })
}

/// The next query id: splitmix64 over a counter that starts at a fresh
/// seed (answers come back on their own channel; the id only has to be
/// unguessable to whoever could spoof the upstream's answer).
fn query_id(state: &AtomicU64) -> u16 {
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u16
}

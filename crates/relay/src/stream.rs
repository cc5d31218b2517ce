//! TURN over TCP and TLS (RFC 8656 section 3.1) for clients on networks
//! that drop UDP: each worker listens on the relay's port over TCP as well,
//! and on `--tls-listen` (the kernel spreads connections over the workers,
//! SO_REUSEPORT), and a connection's messages go to the worker's core as
//! its datagrams would, the client known by the connection's address. What
//! the core sends that client (replies, peers' data) goes back on the
//! connection. The allocation ends when the connection closes. TLS is
//! rustls driven by hand over the non-blocking socket (`read_tls`,
//! `write_tls`), as the worker's loop is mio, not an async runtime.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use postern_turn::stream;

/// The listening socket's token; connections count up from
/// [`FIRST_CONNECTION`] (relayed UDP ports use their port number, the
/// waker 1 << 20).
pub(crate) const LISTENER: Token = Token(1 << 21);
pub(crate) const TLS_LISTENER: Token = Token((1 << 21) + 1);
const FIRST_CONNECTION: usize = 1 << 22;
/// Bytes queued for a client that reads slower than its peers send: past
/// this, messages are dropped as a full UDP buffer would drop them.
const MAX_QUEUED: usize = 1 << 20;
/// Connections per worker.
const MAX_CONNECTIONS: usize = 4096;
/// A connection must carry a whole message this soon after it opened (a
/// TLS handshake included)...
const FIRST_MESSAGE: Duration = Duration::from_secs(10);
/// ... and one at least this often after (TURN refreshes every few
/// minutes; an allocation lapses after 10).
const IDLE: Duration = Duration::from_secs(11 * 60);
/// Dead peers (a laptop that slept, a NAT that forgot) found by TCP
/// keepalives: probes after a minute of silence, every 10 s.
const KEEPALIVE: Duration = Duration::from_secs(60);

struct Connection {
    stream: TcpStream,
    /// When a whole message last arrived (or the connection opened).
    last_message: Instant,
    /// At least one whole message arrived.
    spoke: bool,
    /// Over TLS: the session (plaintext in and out goes through it).
    tls: Option<Box<rustls::ServerConnection>>,
    client: SocketAddr,
    received: Vec<u8>,
    /// Plaintext not yet taken by the socket (or by the TLS session).
    queued: Vec<u8>,
}

pub(crate) struct Streams {
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    connections: HashMap<Token, Connection>,
    by_client: HashMap<SocketAddr, Token>,
    next: usize,
}

/// What a connection's readiness brought.
pub(crate) struct Received {
    pub client: SocketAddr,
    /// Whole messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// The connection closed (or broke the framing): its client is gone.
    pub closed: bool,
}

impl Streams {
    /// Listens on `address` over TCP (and on the TLS address), sharing the
    /// ports with the other workers.
    pub(crate) fn bind(
        address: SocketAddr,
        tls: Option<crate::TlsListen>,
        registry: &Registry,
    ) -> io::Result<Streams> {
        let listener = listen(address, LISTENER, registry)?;
        let tls = match tls {
            Some(tls) => Some((listen(tls.listen, TLS_LISTENER, registry)?, tls.config)),
            None => None,
        };
        Ok(Streams {
            listener,
            tls,
            connections: HashMap::new(),
            by_client: HashMap::new(),
            next: FIRST_CONNECTION,
        })
    }

    pub(crate) fn owns(token: Token) -> bool {
        token.0 >= FIRST_CONNECTION
    }

    /// Accepts every waiting connection (on the TLS listener if `tls`).
    pub(crate) fn accept(&mut self, registry: &Registry, tls: bool) {
        loop {
            let listener = match (&self.tls, tls) {
                (Some((listener, _)), true) => listener,
                (None, true) => return,
                (_, false) => &self.listener,
            };
            let (mut stream, client) = match listener.accept() {
                // An IPv4 client of a `[::]` listener comes v4-mapped.
                Ok((stream, client)) => (
                    stream,
                    SocketAddr::new(client.ip().to_canonical(), client.port()),
                ),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                tracing::debug!(%client, "too many TCP clients; refused");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE)
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let token = Token(self.next);
            self.next += 1;
            if let Err(error) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                tracing::debug!(%client, %error, "cannot watch a TCP client");
                continue;
            }
            let session = match (&self.tls, tls) {
                (Some((_, config)), true) => {
                    match rustls::ServerConnection::new(Arc::clone(config)) {
                        Ok(mut session) => {
                            // Past this much unsent, our queue holds the rest.
                            session.set_buffer_limit(Some(64 * 1024));
                            Some(Box::new(session))
                        }
                        Err(error) => {
                            tracing::debug!(%client, %error, "cannot start TLS");
                            continue;
                        }
                    }
                }
                _ => None,
            };
            tracing::debug!(%client, tls, "TURN client over a stream");
            self.by_client.insert(client, token);
            self.connections.insert(
                token,
                Connection {
                    stream,
                    last_message: Instant::now(),
                    spoke: false,
                    tls: session,
                    client,
                    received: Vec::new(),
                    queued: Vec::new(),
                },
            );
        }
    }

    /// Whether `client` is one of this worker's TCP clients.
    pub(crate) fn has(&self, client: SocketAddr) -> bool {
        self.by_client.contains_key(&client)
    }

    /// Reads what arrived on a connection and sends what waits for it.
    pub(crate) fn ready(&mut self, token: Token, now: Instant) -> Option<Received> {
        let connection = self.connections.get_mut(&token)?;
        let mut closed = false;
        let mut messages = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while !closed {
            match read(connection, &mut chunk) {
                Ok(0) => closed = true,
                Ok(n) => {
                    connection.received.extend_from_slice(&chunk[..n]);
                    // Cut as it arrives: what stays is one partial message.
                    closed |= cut(&mut connection.received, &mut messages).is_err();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => closed = true,
            }
        }
        if !messages.is_empty() {
            connection.last_message = now;
            connection.spoke = true;
        }
        // A TLS handshake's answers, or what waited for the socket.
        closed |= flush(connection).is_err();
        let client = connection.client;
        if closed {
            self.close(token);
        }
        Some(Received {
            client,
            messages,
            closed,
        })
    }

    /// Closes connections that said nothing in time: no whole message
    /// within [`FIRST_MESSAGE`] of connecting (a slot held by nobody), or
    /// none for [`IDLE`] (a client gone without a word; its allocation has
    /// lapsed by then). Returns their clients, whose allocations end.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<SocketAddr> {
        let stale: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                let quiet = now.saturating_duration_since(c.last_message);
                quiet > if c.spoke { IDLE } else { FIRST_MESSAGE }
            })
            .map(|(token, _)| *token)
            .collect();
        let mut gone = Vec::new();
        for token in stale {
            if let Some(connection) = self.connections.get(&token) {
                gone.push(connection.client);
            }
            self.close(token);
        }
        gone
    }

    /// Queues `message` for `client` and sends what the socket takes; false
    /// when it was dropped (queue full) or the connection broke.
    pub(crate) fn send(&mut self, client: SocketAddr, message: &[u8]) -> bool {
        let Some(token) = self.by_client.get(&client).copied() else {
            return false;
        };
        let Some(connection) = self.connections.get_mut(&token) else {
            return false;
        };
        if connection.queued.len() + message.len() + 3 > MAX_QUEUED {
            return false;
        }
        stream::push_frame(&mut connection.queued, message);
        if flush(connection).is_err() {
            self.close(token);
            return false;
        }
        true
    }

    fn close(&mut self, token: Token) {
        if let Some(connection) = self.connections.remove(&token) {
            self.by_client.remove(&connection.client);
            tracing::debug!(client = %connection.client, "TCP client gone");
        }
    }
}

/// Moves the whole messages at the front of `received` to `messages`; an
/// error when the stream is not TURN.
fn cut(received: &mut Vec<u8>, messages: &mut Vec<Vec<u8>>) -> Result<(), stream::FrameError> {
    let mut offset = 0;
    while let Some((message, taken)) = stream::next_frame(&received[offset..])? {
        messages.push(message.to_vec());
        offset += taken;
    }
    received.drain(..offset);
    Ok(())
}

/// Plaintext from the connection: straight from the socket, or through
/// the TLS session (whose handshake records are answered by [`flush`]).
/// `Ok(0)`: the client closed.
fn read(connection: &mut Connection, chunk: &mut [u8]) -> io::Result<usize> {
    let Some(tls) = &mut connection.tls else {
        return connection.stream.read(chunk);
    };
    loop {
        match tls.reader().read(chunk) {
            Ok(n) => return Ok(n),
            // No plaintext yet: more records from the socket.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        if tls.read_tls(&mut connection.stream)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    }
}

/// Writes what is queued until the socket would block.
fn flush(connection: &mut Connection) -> io::Result<()> {
    let Connection {
        stream,
        tls,
        queued,
        ..
    } = connection;
    let Some(tls) = tls else {
        while !queued.is_empty() {
            match stream.write(queued) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    queued.drain(..n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        return Ok(());
    };
    loop {
        if !queued.is_empty() {
            // Takes what fits its buffer; the rest stays queued.
            let n = tls.writer().write(queued)?;
            queued.drain(..n);
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// A listening TCP socket shared with the other workers.
fn listen(address: SocketAddr, token: Token, registry: &Registry) -> io::Result<TcpListener> {
    let socket = postern_sys::tcp::listening_socket(address, true)?;
    let mut listener = TcpListener::from_std(socket.into());
    registry.register(&mut listener, token, Interest::READABLE)?;
    Ok(listener)
}

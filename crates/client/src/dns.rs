//! The DNS stub's I/O (SPEC F23): UDP and TCP on the sentinel addresses
//! (assigned to the tunnel interface, so the kernel delivers queries to
//! these sockets without them entering the tunnel), and forwarding of names
//! that are not resources to the upstream resolvers over UDP, again over TCP
//! when the answer was truncated. The decisions are `postern_tunnel::dns`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use postern_tunnel::dns::{DnsStub, StubAnswer};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// Largest query or answer handled.
const MAX_MESSAGE: usize = 65_535;

/// Where an answer goes.
#[derive(Debug)]
pub enum ReplyTo {
    Udp {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    },
    Tcp(oneshot::Sender<Vec<u8>>),
}

impl ReplyTo {
    pub async fn send(self, answer: Vec<u8>) {
        match self {
            ReplyTo::Udp { socket, peer } => {
                let _ = socket.send_to(&answer, peer).await;
            }
            ReplyTo::Tcp(sender) => {
                let _ = sender.send(answer);
            }
        }
    }

    /// Answers without waiting (from the loop).
    pub fn send_now(self, answer: Vec<u8>) {
        match self {
            ReplyTo::Udp { socket, peer } => {
                let _ = socket.try_send_to(&answer, peer);
            }
            ReplyTo::Tcp(sender) => {
                let _ = sender.send(answer);
            }
        }
    }
}

/// One query from an app.
#[derive(Debug)]
pub struct DnsQuery {
    pub bytes: Vec<u8>,
    pub reply: ReplyTo,
    /// What the stub decided already (on the socket's task).
    pub decided: Option<StubAnswer>,
}

/// The stub, shared by the sockets' tasks (which answer what needs nothing
/// else) and the daemon's loop (routes, gateways).
pub type SharedStub = Arc<std::sync::Mutex<DnsStub>>;

/// Decides on the socket's task: `Ok(answer)` when the stub answered alone
/// (no new proxies to tell a gateway about), else the decision for the loop.
fn decide(stub: &SharedStub, bytes: &[u8]) -> Result<Vec<u8>, StubAnswer> {
    let Ok(mut stub) = stub.lock() else {
        return Err(StubAnswer::Drop);
    };
    match stub.handle_query(bytes) {
        StubAnswer::Reply(answer) if !stub.has_assigned() => Ok(answer),
        other => Err(other),
    }
}

/// Serves UDP and TCP on `addresses` port 53; queries go to `queries`.
pub async fn serve(
    addresses: &[IpAddr],
    queries: mpsc::Sender<DnsQuery>,
    stub: SharedStub,
) -> std::io::Result<()> {
    for address in addresses {
        let address = SocketAddr::new(*address, 53);
        let socket = Arc::new(UdpSocket::from_std(bind(address, Type::DGRAM)?.into())?);
        let listener = TcpListener::from_std(bind(address, Type::STREAM)?.into())?;
        tokio::spawn(serve_udp(socket, queries.clone(), Arc::clone(&stub)));
        tokio::spawn(serve_tcp(listener, queries.clone(), Arc::clone(&stub)));
    }
    Ok(())
}

/// A socket on a sentinel address. Free binding: a freshly added IPv6
/// address may still be tentative for a moment.
fn bind(address: SocketAddr, kind: Type) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    if kind == Type::STREAM {
        socket.listen(128)?;
    }
    Ok(socket)
}

async fn serve_udp(socket: Arc<UdpSocket>, queries: mpsc::Sender<DnsQuery>, stub: SharedStub) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let decided = match decide(&stub, &buffer[..n]) {
            Ok(answer) => {
                let _ = socket.send_to(&answer, peer).await;
                continue;
            }
            Err(decided) => decided,
        };
        let query = DnsQuery {
            bytes: buffer[..n].to_vec(),
            reply: ReplyTo::Udp {
                socket: Arc::clone(&socket),
                peer,
            },
            decided: Some(decided),
        };
        // A full queue drops the query, as a busy server would.
        if queries.try_send(query).is_err() {
            tracing::debug!("DNS queue full; query dropped");
        }
    }
}

async fn serve_tcp(listener: TcpListener, queries: mpsc::Sender<DnsQuery>, stub: SharedStub) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream, queries.clone(), Arc::clone(&stub)));
    }
}

/// RFC 7766: two-byte length, then the message; several per connection.
async fn serve_connection(
    mut stream: TcpStream,
    queries: mpsc::Sender<DnsQuery>,
    stub: SharedStub,
) {
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await
        else {
            return;
        };
        let mut bytes = vec![0u8; usize::from(length)];
        if stream.read_exact(&mut bytes).await.is_err() {
            return;
        }
        let answer = match decide(&stub, &bytes) {
            Ok(answer) => answer,
            Err(decided) => {
                let (reply, answer) = oneshot::channel();
                let query = DnsQuery {
                    bytes,
                    reply: ReplyTo::Tcp(reply),
                    decided: Some(decided),
                };
                if queries.send(query).await.is_err() {
                    return;
                }
                let Ok(answer) = answer.await else { return };
                answer
            }
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return;
        };
        if stream.write_u16(length).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

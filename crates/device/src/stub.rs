//! The DNS stub's sockets (SPEC F23): UDP and TCP on the sentinel addresses
//! (assigned to the tunnel interface, so the kernel delivers queries to
//! these sockets without them entering the tunnel). Every query goes to the
//! loop, which numbers it for the client role and sends the role's answer
//! back where it came from. The decisions are the role's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// Largest query or answer handled.
const MAX_MESSAGE: usize = 65_535;
/// Queries waiting for the loop; a full queue drops them, as a busy server
/// would.
pub const QUEUE: usize = 1024;
/// TCP connections served at once; more wait in the kernel's backlog.
const TCP_CONNECTIONS: usize = 64;
/// How long a TCP client may take to send a whole query.
const TCP_READ: Duration = Duration::from_secs(10);

/// Where an answer goes.
#[derive(Debug)]
pub enum ReplyTo {
    Udp {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    },
    /// A task waiting for it (a TCP query, a SOCKS5 name).
    Channel(oneshot::Sender<Vec<u8>>),
}

impl ReplyTo {
    /// Answers without waiting (from the loop; a full socket buffer drops
    /// it, the app asks again).
    pub fn send_now(self, answer: Vec<u8>) {
        match self {
            ReplyTo::Udp { socket, peer } => {
                let _ = socket.try_send_to(&answer, peer);
            }
            ReplyTo::Channel(sender) => {
                let _ = sender.send(answer);
            }
        }
    }

    /// Answers from a task.
    pub async fn send(self, answer: Vec<u8>) {
        match self {
            ReplyTo::Udp { socket, peer } => {
                let _ = socket.send_to(&answer, peer).await;
            }
            ReplyTo::Channel(sender) => {
                let _ = sender.send(answer);
            }
        }
    }
}

/// One query from an app.
#[derive(Debug)]
pub struct StubQuery {
    pub bytes: Vec<u8>,
    pub reply: ReplyTo,
}

/// Serves UDP and TCP on `addresses` port 53; queries go to `queries`.
pub fn serve(addresses: &[IpAddr], queries: mpsc::Sender<StubQuery>) -> std::io::Result<()> {
    for address in addresses {
        let address = SocketAddr::new(*address, 53);
        let socket = Arc::new(UdpSocket::from_std(bind(address, Type::DGRAM)?.into())?);
        let listener = TcpListener::from_std(bind(address, Type::STREAM)?.into())?;
        tokio::spawn(serve_udp(socket, queries.clone()));
        tokio::spawn(serve_tcp(listener, queries.clone()));
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

async fn serve_udp(socket: Arc<UdpSocket>, queries: mpsc::Sender<StubQuery>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let query = StubQuery {
            bytes: buffer[..n].to_vec(),
            reply: ReplyTo::Udp {
                socket: Arc::clone(&socket),
                peer,
            },
        };
        match queries.try_send(query) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("DNS queue full; query dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn serve_tcp(listener: TcpListener, queries: mpsc::Sender<StubQuery>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
    loop {
        // A slot first: idle connections cannot pile up without bound.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let queries = queries.clone();
        tokio::spawn(async move {
            serve_connection(stream, queries).await;
            drop(slot);
        });
    }
}

/// RFC 7766: two-byte length, then the message; several per connection.
async fn serve_connection(mut stream: TcpStream, queries: mpsc::Sender<StubQuery>) {
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(TCP_READ, stream.read_u16()).await else {
            return;
        };
        let mut bytes = vec![0u8; usize::from(length)];
        if !matches!(
            tokio::time::timeout(TCP_READ, stream.read_exact(&mut bytes)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if queries
            .send(StubQuery {
                bytes,
                reply: ReplyTo::Channel(reply),
            })
            .await
            .is_err()
        {
            return;
        }
        // A dropped query (not DNS at all) closes the connection.
        let Ok(answer) = answer.await else { return };
        let Ok(length) = u16::try_from(answer.len()) else {
            return;
        };
        if stream.write_u16(length).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

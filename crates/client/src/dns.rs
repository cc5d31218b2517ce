//! The DNS stub's I/O (SPEC F23): UDP and TCP on the sentinel addresses
//! (assigned to the tunnel interface, so the kernel delivers queries to
//! these sockets without them entering the tunnel), and forwarding of names
//! that are not resources to the upstream resolvers over UDP, again over TCP
//! when the answer was truncated. The decisions are `postern_tunnel::dns`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// How long one upstream resolver gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
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
}

/// Serves UDP and TCP on `addresses` port 53; queries go to `queries`.
pub async fn serve(addresses: &[IpAddr], queries: mpsc::Sender<DnsQuery>) -> std::io::Result<()> {
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

async fn serve_udp(socket: Arc<UdpSocket>, queries: mpsc::Sender<DnsQuery>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let query = DnsQuery {
            bytes: buffer[..n].to_vec(),
            reply: ReplyTo::Udp {
                socket: Arc::clone(&socket),
                peer,
            },
        };
        // A full queue drops the query, as a busy server would.
        if queries.try_send(query).is_err() {
            tracing::debug!("DNS queue full; query dropped");
        }
    }
}

async fn serve_tcp(listener: TcpListener, queries: mpsc::Sender<DnsQuery>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream, queries.clone()));
    }
}

/// RFC 7766: two-byte length, then the message; several per connection.
async fn serve_connection(mut stream: TcpStream, queries: mpsc::Sender<DnsQuery>) {
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await
        else {
            return;
        };
        let mut bytes = vec![0u8; usize::from(length)];
        if stream.read_exact(&mut bytes).await.is_err() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if queries
            .send(DnsQuery {
                bytes,
                reply: ReplyTo::Tcp(reply),
            })
            .await
            .is_err()
        {
            return;
        }
        let Ok(answer) = answer.await else { return };
        let Ok(length) = u16::try_from(answer.len()) else {
            return;
        };
        if stream.write_u16(length).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Asks the upstream resolvers in turn; the first answer wins. A truncated
/// UDP answer is asked again over TCP. `None` if nobody answered.
pub async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        match tokio::time::timeout(UPSTREAM_TIMEOUT, over_udp(query, *upstream)).await {
            Ok(Ok(answer)) if truncated(&answer) => {
                if let Ok(Ok(full)) =
                    tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(query, *upstream)).await
                {
                    return Some(full);
                }
                return Some(answer);
            }
            Ok(Ok(answer)) => return Some(answer),
            _ => continue,
        }
    }
    None
}

fn truncated(answer: &[u8]) -> bool {
    answer.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

async fn over_udp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let wildcard: SocketAddr = if upstream.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(wildcard).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // Only the answer to this query (same id).
        if n >= 2 && query.len() >= 2 && buffer[..2] == query[..2] {
            return Ok(buffer[..n].to_vec());
        }
    }
}

async fn over_tcp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    stream.write_u16(length).await?;
    stream.write_all(query).await?;
    let length = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// The nameservers of a resolv.conf, except the stub's own sentinels.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| {
            *ip != IpAddr::V4(postern_model::plan::DNS_SENTINEL_V4)
                && *ip != IpAddr::V6(postern_model::plan::DNS_SENTINEL_V6)
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

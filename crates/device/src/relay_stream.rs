//! TURN over TCP or TLS to the relays, for networks that drop UDP: the
//! node decides a relay is reached over a stream (its transmits say which),
//! this opens the connection on the first message and carries the messages
//! both ways, cut and padded as RFC 8656 says (`postern_turn::stream`).
//! TLS trusts what the portal connection trusts (`--ca-file`, or the
//! system's roots).
//! Messages from a relay come out of [`RelayStreams::recv`] as its
//! datagrams would, with the relay's address as their source. A broken
//! connection is forgotten; the next message opens a new one (the node's
//! TURN client allocates again when its requests go unanswered).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use postern_tunnel::node::Stream;
use postern_turn::stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Messages queued for one relay before more are dropped (as a full UDP
/// send buffer would drop them).
const QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RelayStreams {
    connections: HashMap<SocketAddr, (Stream, mpsc::Sender<Vec<u8>>)>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    received: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    tls: Arc<rustls::ClientConfig>,
}

impl RelayStreams {
    /// Streams whose TLS trusts `tls` (the portal connection's roots).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        let (incoming, received) = mpsc::channel(QUEUE);
        RelayStreams {
            connections: HashMap::new(),
            incoming,
            received,
            tls,
        }
    }

    /// Whether `server` is reached over a stream now.
    pub fn has(&self, server: SocketAddr) -> bool {
        !self.connections.is_empty()
            && self
                .connections
                .get(&server)
                .is_some_and(|(_, queue)| !queue.is_closed())
    }

    /// Sends `message` to `server` over a stream of kind `how` (`None`:
    /// the one it has), connecting first if there is none or it is of
    /// another kind; false when it was dropped.
    pub fn send(&mut self, server: SocketAddr, how: Option<&Stream>, message: &[u8]) -> bool {
        if let Some((kind, queue)) = self.connections.get(&server)
            && how.is_none_or(|how| how == kind)
        {
            match queue.try_send(message.to_vec()) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let Some(how) = how
            .cloned()
            .or_else(|| self.connections.get(&server).map(|(k, _)| k.clone()))
        else {
            return false;
        };
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let sent = queue.try_send(message.to_vec()).is_ok();
        // A connection of another kind ends with its sender.
        self.connections.insert(server, (how.clone(), queue));
        let tls = Arc::clone(&self.tls);
        tokio::spawn(carry(server, how, tls, outgoing, self.incoming.clone()));
        sent
    }

    /// Forgets the stream to `server` (the node reaches it over UDP again):
    /// its connection ends with the sender.
    pub fn close(&mut self, server: SocketAddr) {
        if self.connections.remove(&server).is_some() {
            tracing::info!(%server, "back to UDP for the relay");
        }
    }

    /// The next message from a relay.
    pub async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.received.recv().await
    }
}

/// One relay's connection: opened, then written and read until either
/// side ends.
async fn carry(
    server: SocketAddr,
    how: Stream,
    tls: Arc<rustls::ClientConfig>,
    outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let (address, label) = match &how {
        Stream::Tcp => (server, "TCP"),
        Stream::Tls { address, .. } => (*address, "TLS"),
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%server, %address, %error, "cannot reach the relay over {label}");
            return;
        }
        Err(_) => {
            tracing::info!(%server, %address, "no {label} connection to the relay within 5 s");
            return;
        }
    };
    match how {
        Stream::Tcp => {
            tracing::info!(%server, "TURN over TCP: connected to the relay");
            exchange(server, tcp, outgoing, incoming).await;
        }
        Stream::Tls { name, .. } => {
            let Ok(name) = ServerName::try_from(name.clone()) else {
                tracing::warn!(%server, %name, "the relay's TLS name is not a host name or address");
                return;
            };
            let handshake = TlsConnector::from(tls).connect(name, tcp);
            match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => {
                    tracing::info!(%server, %address, "TURN over TLS: connected to the relay");
                    exchange(server, stream, outgoing, incoming).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%server, %address, %error, "TLS with the relay failed")
                }
                Err(_) => {
                    tracing::info!(%server, %address, "no TLS handshake with the relay within 5 s")
                }
            }
        }
    }
    tracing::info!(%server, "the stream to the relay ended");
}

/// Writes and reads messages until either side ends.
async fn exchange<S: AsyncRead + AsyncWrite>(
    server: SocketAddr,
    stream: S,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = async {
        let mut framed = Vec::new();
        while let Some(message) = outgoing.recv().await {
            framed.clear();
            stream::push_frame(&mut framed, &message);
            // Whatever else waits goes in the same write.
            while let Ok(message) = outgoing.try_recv() {
                stream::push_frame(&mut framed, &message);
            }
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
    };
    let reading = async {
        let mut buffer = Vec::with_capacity(2 * stream::MAX_FRAME);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buffer.extend_from_slice(&chunk[..n]);
            let mut offset = 0;
            loop {
                match stream::next_frame(&buffer[offset..]) {
                    Ok(Some((message, taken))) => {
                        if incoming.send((server, message.to_vec())).await.is_err() {
                            return;
                        }
                        offset += taken;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::info!(%server, %error, "the relay's stream broke");
                        return;
                    }
                }
            }
            buffer.drain(..offset);
        }
    };
    tokio::select! {
        () = writing => {}
        () = reading => {}
    }
}

/// A TCP connection that takes the host's path, never the tunnel's routes
/// (marked as the UDP socket is: `route::FWMARK`).
async fn connect(server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(error) = setsockopt(&socket, sockopt::Mark, &postern_sys::route::FWMARK) {
        tracing::debug!(%error, "cannot mark the relay's TCP socket");
    }
    socket.set_nodelay(true)?;
    socket.connect(server).await
}

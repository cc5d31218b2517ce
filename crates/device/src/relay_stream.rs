//! TURN over TCP to the relays, for networks that drop UDP: the node
//! decides a relay is reached over a stream (its transmits say so), this
//! opens the connection on the first message and carries the messages
//! both ways, cut and padded as RFC 8656 says (`postern_turn::stream`).
//! Messages from a relay come out of [`RelayStreams::recv`] as its
//! datagrams would, with the relay's address as their source. A broken
//! connection is forgotten; the next message opens a new one (the node's
//! TURN client allocates again when its requests go unanswered).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use postern_turn::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Messages queued for one relay before more are dropped (as a full UDP
/// send buffer would drop them).
const QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RelayStreams {
    connections: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    received: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl Default for RelayStreams {
    fn default() -> Self {
        let (incoming, received) = mpsc::channel(QUEUE);
        RelayStreams {
            connections: HashMap::new(),
            incoming,
            received,
        }
    }
}

impl RelayStreams {
    /// Whether `server` is reached over a stream now.
    pub fn has(&self, server: SocketAddr) -> bool {
        !self.connections.is_empty()
            && self
                .connections
                .get(&server)
                .is_some_and(|queue| !queue.is_closed())
    }

    /// Sends `message` to `server` over its stream, connecting first if
    /// there is none; false when it was dropped.
    pub fn send(&mut self, server: SocketAddr, message: &[u8]) -> bool {
        if let Some(queue) = self.connections.get(&server) {
            match queue.try_send(message.to_vec()) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.connections.remove(&server);
                }
            }
        }
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let sent = queue.try_send(message.to_vec()).is_ok();
        self.connections.insert(server, queue);
        tokio::spawn(carry(server, outgoing, self.incoming.clone()));
        sent
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
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(server)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%server, %error, "cannot reach the relay over TCP");
            return;
        }
        Err(_) => {
            tracing::info!(%server, "no TCP connection to the relay within 5 s");
            return;
        }
    };
    tracing::info!(%server, "TURN over TCP: connected to the relay");
    let (mut reader, mut writer) = stream.into_split();
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
    tracing::info!(%server, "TURN over TCP: the connection to the relay ended");
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

//! A test WebSocket peer playing a client, gateway or relay against a real
//! portal listening on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestApp;

impl TestApp {
    /// Serves the portal (API and channels) on a loopback port.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = self.state.clone();
        tokio::spawn(async move {
            postern_portal::serve::serve(listener, state, std::future::pending())
                .await
                .unwrap();
        });
        addr
    }

    /// [`serve`](Self::serve) over TLS with `tls`'s certificate.
    pub async fn serve_tls(&self, tls: Arc<postern_portal::serve::TlsCert>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = self.state.clone();
        tokio::spawn(async move {
            postern_portal::serve::serve_with(listener, state, Some(tls), std::future::pending())
                .await
                .unwrap();
        });
        addr
    }
}

/// What a peer's WebSocket runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Peer {
    socket: WebSocketStream<Box<dyn Io>>,
    pub public_key: String,
}

/// A random-looking but valid 32-byte key, base64.
pub fn key(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

impl Peer {
    /// Connects; `Err(status)` if the portal refused the handshake.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        token: &str,
        device_id: &str,
        public_key: &str,
    ) -> Result<Peer, u16> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let url = format!("ws://{addr}{path}");
        Peer::connect_over(Box::new(tcp), &url, token, device_id, public_key).await
    }

    /// [`connect`](Self::connect) over TLS (wss://) to `server_name` at
    /// `addr`, trusting what `tls` trusts; panics if the TLS handshake fails.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
        token: &str,
        device_id: &str,
        public_key: &str,
    ) -> Result<Peer, u16> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let url = format!("wss://{server_name}:{}{path}", addr.port());
        Peer::connect_over(Box::new(stream), &url, token, device_id, public_key).await
    }

    /// Connects over TCP with `query` as the whole query string;
    /// `Err((status, body))` if the portal refused the handshake.
    pub async fn connect_query(
        addr: SocketAddr,
        path: &str,
        token: &str,
        query: &str,
    ) -> Result<Peer, (u16, String)> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let url = format!("ws://{addr}{path}?{query}");
        Peer::connect_url(Box::new(tcp), &url, token, "").await
    }

    /// [`connect`](Self::connect), telling a busy portal's refusal apart:
    /// `Err(Refusal)` with the status and the `Retry-After` seconds it sent.
    pub async fn connect_or_busy(
        addr: SocketAddr,
        path: &str,
        token: &str,
        device_id: &str,
        public_key: &str,
    ) -> Result<Peer, Refusal> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let url = format!(
            "ws://{addr}{path}?device_id={device_id}&public_key={}&name={device_id}&os=Linux",
            urlencode(public_key)
        );
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::client_async(request, Box::new(tcp) as Box<dyn Io>).await {
            Ok((socket, _)) => Ok(Peer {
                socket,
                public_key: public_key.to_string(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Refusal {
                status: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            }),
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    async fn connect_over(
        stream: Box<dyn Io>,
        base: &str,
        token: &str,
        device_id: &str,
        public_key: &str,
    ) -> Result<Peer, u16> {
        let url = format!(
            "{base}?device_id={device_id}&public_key={}&name={device_id}&os=Linux",
            urlencode(public_key)
        );
        Peer::connect_url(stream, &url, token, public_key)
            .await
            .map_err(|(status, _)| status)
    }

    async fn connect_url(
        stream: Box<dyn Io>,
        url: &str,
        token: &str,
        public_key: &str,
    ) -> Result<Peer, (u16, String)> {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((socket, _)) => Ok(Peer {
                socket,
                public_key: public_key.to_string(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                Err((
                    response.status().as_u16(),
                    String::from_utf8_lossy(body).into_owned(),
                ))
            }
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.socket
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message, within `wait`; `None` on timeout; panics if
    /// the socket closed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    /// The next message; it must arrive within 5 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("no message within 5 s")
    }

    /// Skips messages until one of `kind` arrives (within 5 s).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("no {kind} within 5 s"));
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Whether the portal closes the socket within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A refused handshake.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    pub body: String,
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

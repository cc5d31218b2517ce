//! The relay daemon over real UDP sockets on loopback: a revocation from the
//! portal ends a device's relayed path at once, other devices go on.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_relay::{Relay, RelayConfig};
use postern_turn::client::{Client, ClientEvent};
use postern_turn::credentials::{rest_password, rest_username};

const SECRET: &[u8] = b"revoke-secret";
const LISTEN: &str = "127.0.0.1:24778";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A device: its socket to the relay, its TURN client and a UDP peer with
/// a bound channel.
struct Device {
    socket: UdpSocket,
    client: Client,
    peer: UdpSocket,
}

impl Device {
    fn connect(id: &str) -> Device {
        let server: SocketAddr = LISTEN.parse().unwrap();
        let username = rest_username(unix_now() + 600, id);
        let password = rest_password(SECRET, &username);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let client = Client::new(server, &username, &password, 5, Instant::now());
        let mut device = Device {
            socket,
            client,
            peer,
        };
        let peer_addr = device.peer.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "{id}: no channel within 10 s");
            device.step();
            match device.client.poll_event() {
                Some(ClientEvent::Allocated { .. }) => {
                    device.client.bind_channel(peer_addr, Instant::now());
                }
                Some(ClientEvent::ChannelBound { .. }) => return device,
                Some(other) => panic!("{id}: {other:?}"),
                None => {}
            }
        }
    }

    fn step(&mut self) {
        let server: SocketAddr = LISTEN.parse().unwrap();
        while let Some(datagram) = self.client.poll_transmit() {
            self.socket.send_to(&datagram, server).unwrap();
        }
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
            let _ = self.client.handle_packet(&buf[..n], Instant::now());
        }
        self.client.handle_timeout(Instant::now());
    }

    /// Whether a datagram sent through the relay reaches the peer.
    fn reaches_peer(&mut self) -> bool {
        let server: SocketAddr = LISTEN.parse().unwrap();
        let peer = self.peer.local_addr().unwrap();
        let mut frame = Vec::new();
        assert!(self.client.encode_to_peer(peer, b"hello", &mut frame));
        self.socket.send_to(&frame, server).unwrap();
        let mut buf = [0u8; 64];
        matches!(self.peer.recv_from(&mut buf), Ok((5, _)))
    }
}

#[test]
fn a_revoked_device_stops_relaying_at_once() {
    let stop = Arc::new(AtomicBool::new(false));
    let relay = Relay::start(
        &RelayConfig {
            listen: LISTEN.parse().unwrap(),
            public_ipv4: Some("127.0.0.1".parse().unwrap()),
            public_ipv6: None,
            ports: 24800..=24899,
            realm: "postern".into(),
            auth_secret: SECRET.to_vec(),
            workers: 2,
            max_allocations_per_user: 10,
            max_bps_per_allocation: 0,
            allow_loopback_peers: true,
            allow_peers: Vec::new(),
            tls: None,
        },
        Arc::clone(&stop),
    )
    .unwrap();
    let mut revoked = Device::connect("device-1");
    let mut other = Device::connect("device-2");
    assert!(revoked.reaches_peer());
    assert!(other.reaches_peer());

    relay.revoke(&["device-1".to_string()], unix_now() + 600);
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay.metrics.allocations() != 1 {
        assert!(Instant::now() < deadline, "the allocation is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!revoked.reaches_peer(), "relayed after the revocation");
    assert!(other.reaches_peer(), "other devices go on");

    stop.store(true, Ordering::Relaxed);
    relay.join();
}

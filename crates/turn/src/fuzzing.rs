//! One entry point that pushes untrusted bytes through every parser and both
//! state machines, shared by the `cargo fuzz` target (crates/turn/fuzz) and
//! the test that replays its seed corpus on stable Rust.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::channel;
use crate::client::Client;
use crate::server::{Now, PEER_HEADROOM, PEER_TAILROOM, RelaySockets, Server, ServerConfig};
use crate::stun::{Message, attr};

struct NoSockets;

impl RelaySockets for NoSockets {
    fn open(&mut self, _ip: std::net::IpAddr, _port: u16) -> bool {
        true
    }
    fn close(&mut self, _port: u16) {}
}

/// Feeds `data` to the STUN and ChannelData parsers, the relay server (as a
/// client datagram and as peer data) and the TURN client. Must never panic.
pub fn fuzz_one(data: &[u8]) {
    if let Ok(message) = Message::parse(data) {
        let _ = message.verify_integrity(b"key");
        let _ = message.verify_fingerprint();
        let _ = message.error_code();
        let _ = message.unknown_required(&[]);
        let _ = message.get_u32(attr::LIFETIME);
        let _ = message.get_str(attr::USERNAME);
        let _ = message.get_address(attr::MAPPED_ADDRESS);
        let _ = message.xor_addresses(attr::XOR_PEER_ADDRESS).count();
    }
    let _ = channel::parse(data);

    let start = Instant::now();
    let now = Now {
        instant: start,
        unix_secs: 1_800_000_000,
    };
    let mut server = Server::new(
        ServerConfig::new("fuzz", b"secret", Some(Ipv4Addr::LOCALHOST)),
        [7; 32],
    );
    let client_addr: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let _ = server.handle_client(now, client_addr, data, &mut NoSockets);
    let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
    let _ = server.handle_peer(
        start,
        50_000,
        client_addr,
        &mut buf,
        PEER_HEADROOM,
        data.len(),
    );
    server.handle_timeout(start + Duration::from_secs(3600), &mut NoSockets);

    let mut client = Client::new(([127, 0, 0, 1], 3478).into(), "1:u", "p", 1, start);
    let _ = client.handle_packet(data, start);
    client.handle_timeout(start + Duration::from_secs(1));
}

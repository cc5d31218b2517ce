//! A TURN user with valid credentials tries to reach what the relay must
//! keep out of reach: the relay host itself (its addresses, listening port
//! and relayed ports), loopback, the cloud metadata service and private
//! networks, in IPv4 and IPv4-mapped IPv6 form.

use super::*;

/// The relay of these tests: 198.18.0.3 and 2001:db8::3, listening on
/// port 3478, relayed ports 50000-50099.
fn relay() -> ServerConfig {
    let mut config = config();
    config.relay_ipv6 = Some("2001:db8::3".parse().unwrap());
    config.peers.listen_port = 3478;
    config
}

fn class_of(reply: &[u8]) -> Class {
    Message::parse(reply).unwrap().class()
}

/// CreatePermission for `peer`'s address, then ChannelBind to `peer`: the
/// two answers' error codes (0 for success).
fn permit_and_bind(h: &mut Harness, from: SocketAddr, peer: SocketAddr, tid: u8) -> (u16, u16) {
    let permission = signed(h, from, method::CREATE_PERMISSION, [tid; 12], |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    let permission = error_of(&h.send(from, &permission).unwrap());
    let bind = signed(h, from, method::CHANNEL_BIND, [tid ^ 0x80; 12], |w| {
        w.u32(
            attr::CHANNEL_NUMBER,
            u32::from(0x4000 + u16::from(tid)) << 16,
        )
        .xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    let bind = error_of(&h.send(from, &bind).unwrap());
    (permission, bind)
}

/// An IPv6 allocation for `from` (REQUESTED-ADDRESS-FAMILY), so that
/// IPv6 peers (and IPv4-mapped ones) can be asked for.
fn allocate_ipv6(h: &mut Harness, from: SocketAddr) {
    let request = signed(h, from, method::ALLOCATE, [0x66; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(class_of(&h.send(from, &request).unwrap()), Class::Success);
}

/// Whether a Send indication to `peer` is relayed.
fn relays_send(h: &mut Harness, from: SocketAddr, peer: SocketAddr) -> bool {
    let now = h.now();
    let send = send_indication(peer, b"x");
    matches!(
        h.server.handle_client(now, from, &send, &mut h.sockets),
        ClientAction::Relay { .. }
    )
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut send = Vec::new();
    MessageWriter::new(&mut send, method::SEND, Class::Indication, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data);
    send
}

#[test]
fn the_relay_host_its_loopback_metadata_and_private_networks_are_refused() {
    let mut h = Harness::new(relay());
    let client = allocated(&mut h, alice());
    let own_relayed = client.relayed_address().unwrap();
    let mut tid = 1;
    for peer in [
        // The relay itself: its listening port, another allocation's
        // relayed port (a relay-to-self loop), and any other service.
        "198.18.0.3:3478",
        &SocketAddr::new(own_relayed.ip(), 50001).to_string(),
        &own_relayed.to_string(),
        "198.18.0.3:22",
        "127.0.0.1:22",
        "127.0.0.53:53",
        "169.254.169.254:80",
        "169.254.169.253:53",
        "10.0.0.5:161",
        "172.16.0.1:11211",
        "192.168.1.1:123",
        "100.64.0.1:53",
        "0.0.0.0:22",
        "255.255.255.255:9",
        "224.0.0.251:5353",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(
            permit_and_bind(&mut h, alice(), peer, tid),
            (code::FORBIDDEN, code::FORBIDDEN),
            "{peer}"
        );
        tid += 1;
        // No permission came of it: a Send indication goes nowhere.
        assert!(!relays_send(&mut h, alice(), peer), "{peer}");
    }
    // Public peers still work.
    assert_eq!(permit_and_bind(&mut h, alice(), peer(), tid), (0, 0));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn ipv4_mapped_and_nat64_forms_are_judged_as_ipv4() {
    let mut h = Harness::new(relay());
    allocate_ipv6(&mut h, alice());
    let mut tid = 1;
    for peer in [
        "[::ffff:127.0.0.1]:22",
        "[::ffff:169.254.169.254]:80",
        "[::ffff:10.0.0.5]:161",
        "[::ffff:198.18.0.3]:3478",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b::a00:5]:161",
        "[::1]:22",
        "[fe80::1]:22",
        "[fd00::5]:22",
        "[2001:db8::3]:50001",
        "[::]:22",
        "[::10.0.0.5]:22",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(
            permit_and_bind(&mut h, alice(), peer, tid),
            (code::FORBIDDEN, code::FORBIDDEN),
            "{peer}"
        );
        tid += 1;
    }
    let public: SocketAddr = "[2001:db8::20]:51820".parse().unwrap();
    assert_eq!(permit_and_bind(&mut h, alice(), public, tid), (0, 0));
}

#[test]
fn allow_peer_opens_a_private_network_and_nothing_else() {
    let private: SocketAddr = "10.0.0.5:161".parse().unwrap();
    // Refused by default, Send indications included.
    let mut h = Harness::new(relay());
    allocated(&mut h, alice());
    assert_eq!(
        permit_and_bind(&mut h, alice(), private, 1),
        (code::FORBIDDEN, code::FORBIDDEN)
    );
    assert!(!relays_send(&mut h, alice(), private));
    assert_eq!(h.drops(DropReason::ForbiddenPeer), 1);

    // --allow-peer 10.0.0.0/8.
    let mut config = relay();
    config.peers.allowed = vec!["10.0.0.0/8".parse().unwrap()];
    let mut h = Harness::new(config);
    let client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    assert_eq!(permit_and_bind(&mut h, alice(), private, 1), (0, 0));
    let now = h.now();
    assert_eq!(
        h.server.handle_client(
            now,
            alice(),
            &send_indication(private, b"get"),
            &mut h.sockets
        ),
        ClientAction::Relay {
            port,
            peer: private,
            payload: b"get"
        }
    );
    for other in ["192.168.1.1:1", "169.254.169.254:80", "127.0.0.1:22"] {
        let other: SocketAddr = other.parse().unwrap();
        assert_eq!(
            permit_and_bind(&mut h, alice(), other, 2),
            (code::FORBIDDEN, code::FORBIDDEN),
            "{other}"
        );
    }
}

#[test]
fn relaying_to_itself_needs_the_exact_address_and_never_reaches_the_listening_port() {
    let mut config = relay();
    config.peers.allowed = vec!["198.18.0.3/32".parse().unwrap()];
    let mut h = Harness::new(config);
    let client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    // Two allocations on this relay may talk (a relayed-relayed pair)...
    let other_allocation: SocketAddr = "198.18.0.3:50001".parse().unwrap();
    assert_eq!(
        permit_and_bind(&mut h, alice(), other_allocation, 1),
        (0, 0)
    );
    // ...but nothing goes to the listening port, bound or sent.
    let listening: SocketAddr = "198.18.0.3:3478".parse().unwrap();
    assert_eq!(
        permit_and_bind(&mut h, alice(), listening, 2),
        (0, code::FORBIDDEN)
    );
    assert!(!relays_send(&mut h, alice(), listening));
    assert_eq!(h.drops(DropReason::ForbiddenPeer), 1);
    let now = h.now();
    assert_eq!(
        h.server.handle_client(
            now,
            alice(),
            &send_indication(other_allocation, b"ok"),
            &mut h.sockets
        ),
        ClientAction::Relay {
            port,
            peer: other_allocation,
            payload: b"ok"
        }
    );
}

/// The answers a spoofed source gets without credentials, by size: a
/// Binding success and a 401 challenge to an Allocate. Neither carries
/// SOFTWARE any more (it told an attacker the version and added 24 bytes).
#[test]
fn answers_to_unauthenticated_requests_stay_small() {
    let sizes = |config: ServerConfig| {
        let mut h = Harness::new(config);
        let mut binding = Vec::new();
        MessageWriter::new(&mut binding, method::BINDING, Class::Request, [1; 12]);
        let mut allocate = Vec::new();
        MessageWriter::new(&mut allocate, method::ALLOCATE, Class::Request, [2; 12])
            .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let binding_reply = h.send(alice(), &binding).unwrap();
        let challenge = h.send(alice(), &allocate).unwrap();
        assert_eq!(error_of(&challenge), code::UNAUTHORIZED);
        let software = |reply: &[u8]| Message::parse(reply).unwrap().get(attr::SOFTWARE).is_some();
        (
            (binding.len(), binding_reply.len(), software(&binding_reply)),
            (allocate.len(), challenge.len(), software(&challenge)),
        )
    };
    let (binding, challenge) = sizes(relay());
    println!("binding {binding:?}, 401 {challenge:?} (request, answer, SOFTWARE)");
    // 20-byte request, 32-byte answer: header and XOR-MAPPED-ADDRESS (1.6x;
    // 56 bytes, 2.8x, with SOFTWARE).
    assert_eq!(binding, (20, 32, false));
    // 28-byte Allocate, 88-byte 401: ERROR-CODE, REALM and a 32-byte NONCE
    // (3.1x; 112 bytes, 4x, with SOFTWARE).
    assert_eq!(challenge, (28, 88, false));
    // Whoever wants SOFTWARE back can have it.
    let mut config = relay();
    config.software = Some("postern-relay 0.1.0".into());
    assert_eq!(sizes(config), ((20, 56, true), (28, 112, true)));
}

/// `--max-bps` holds each way on its own budget: 100 Mbit/s (a 1.25 MB
/// burst) toward the peer and as much back (one shared budget before: a
/// client's upload starved its own download).
#[test]
fn the_rate_limit_holds_in_each_direction() {
    let mut config = relay();
    config.max_bps_per_allocation = 100_000_000;
    let mut h = Harness::new(config);
    let mut client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    client.bind_channel(peer(), h.now().instant);
    h.exchange(&mut client, alice());
    let mut frame = Vec::new();
    client.encode_to_peer(peer(), &[0u8; 1000], &mut frame);
    // 2 MB at once toward the peer: the burst passes, the rest is dropped.
    let now = h.now();
    let relayed = (0..2000)
        .filter(|_| {
            matches!(
                h.server.handle_client(now, alice(), &frame, &mut h.sockets),
                ClientAction::Relay { .. }
            )
        })
        .count();
    assert_eq!(relayed, 1250, "12.5 MB/s for a tenth of a second");
    // The way back has its own budget.
    let back = (0..1300)
        .filter(|_| from_peer(&mut h, &mut client, port, peer(), &[1u8; 1000]).is_some())
        .count();
    assert_eq!(back, 1250);
    // A second later there is room again.
    h.advance(Duration::from_secs(1));
    let now = h.now();
    assert!(matches!(
        h.server.handle_client(now, alice(), &frame, &mut h.sockets),
        ClientAction::Relay { .. }
    ));
}

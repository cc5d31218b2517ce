//! The server core driven by the client core (and by hand-made requests for
//! the error paths), entirely in memory with a controlled clock.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::client::{Client, ClientEvent};
use crate::credentials::{long_term_key, rest_password, rest_username};
use crate::stun::{Message, MessageWriter, attr, code};

const SECRET: &[u8] = b"relay-secret";
const REALM: &str = "postern";
const UNIX0: u64 = 1_800_000_000;

#[derive(Default)]
struct Sockets {
    open: HashSet<u16>,
    refuse: HashSet<u16>,
    closed: Vec<u16>,
}

impl RelaySockets for Sockets {
    fn open(&mut self, _ip: IpAddr, port: u16) -> bool {
        !self.refuse.contains(&port) && self.open.insert(port)
    }
    fn close(&mut self, port: u16) {
        self.open.remove(&port);
        self.closed.push(port);
    }
}

struct Harness {
    server: Server,
    sockets: Sockets,
    start: Instant,
    elapsed: Duration,
}

fn config() -> ServerConfig {
    let mut config = ServerConfig::new(REALM, SECRET, Some(Ipv4Addr::new(198, 18, 0, 3)));
    config.ports = 50000..=50099;
    config
}

impl Harness {
    fn new(config: ServerConfig) -> Self {
        Harness {
            server: Server::new(config, [42; 32]),
            sockets: Sockets::default(),
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + self.elapsed,
            unix_secs: UNIX0 + self.elapsed.as_secs(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now().instant;
        self.server.handle_timeout(now, &mut self.sockets);
    }

    /// Runs the client's requests through the server until both are quiet.
    fn exchange(&mut self, client: &mut Client, from: SocketAddr) {
        for _ in 0..20 {
            let Some(request) = client.poll_transmit() else {
                return;
            };
            let now = self.now();
            if let ClientAction::Reply(reply) =
                self.server
                    .handle_client(now, from, &request, &mut self.sockets)
            {
                assert!(client.handle_packet(&reply, now.instant).is_none());
            }
        }
        panic!("the exchange did not settle");
    }

    fn send(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        let now = self.now();
        match self
            .server
            .handle_client(now, from, bytes, &mut self.sockets)
        {
            ClientAction::Reply(reply) => Some(reply),
            _ => None,
        }
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.server.stats().drops[reason as usize]
    }
}

fn alice() -> SocketAddr {
    "198.18.0.10:40000".parse().unwrap()
}

fn peer() -> SocketAddr {
    "198.18.0.20:51820".parse().unwrap()
}

fn credentials(valid_for: i64, id: &str) -> (String, String) {
    let username = rest_username((UNIX0 as i64 + valid_for) as u64, id);
    let password = rest_password(SECRET, &username);
    (username, password)
}

fn allocated(harness: &mut Harness, from: SocketAddr) -> Client {
    let (username, password) = credentials(3600, "alice");
    let mut client = Client::new(
        harness
            .server
            .config()
            .relay_ipv4
            .map(|ip| SocketAddr::new(ip.into(), 3478))
            .unwrap(),
        &username,
        &password,
        7,
        harness.now().instant,
    );
    harness.exchange(&mut client, from);
    match client.poll_event() {
        Some(ClientEvent::Allocated { relayed, mapped }) => {
            assert_eq!(mapped, from, "XOR-MAPPED-ADDRESS is the client as seen");
            assert_eq!(relayed.ip(), IpAddr::from([198, 18, 0, 3]));
            assert!((50000..=50099).contains(&relayed.port()));
            assert!(harness.sockets.open.contains(&relayed.port()));
        }
        other => panic!("expected an allocation, got {other:?}"),
    }
    client
}

/// Sends peer data to the relayed port and returns what the client decodes.
fn from_peer(
    harness: &mut Harness,
    client: &mut Client,
    port: u16,
    peer: SocketAddr,
    data: &[u8],
) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
    let now = harness.now().instant;
    match harness
        .server
        .handle_peer(now, port, peer, &mut buf, PEER_HEADROOM, data.len())
    {
        PeerAction::ToClient { client: to, range } => {
            assert_eq!(to, alice());
            client
                .handle_packet(&buf[range], now)
                .map(|(p, d)| (p, d.to_vec()))
        }
        PeerAction::Drop => None,
    }
}

#[test]
fn channel_data_flows_both_ways() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    let now = h.now().instant;
    client.bind_channel(peer(), now);
    h.exchange(&mut client, alice());
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::ChannelBound { .. })
    ));

    let mut frame = Vec::new();
    assert!(client.encode_to_peer(peer(), b"hello peer", &mut frame));
    assert_eq!(frame.len(), 4 + 10, "ChannelData framing once bound");
    let now = h.now();
    let action = h.server.handle_client(now, alice(), &frame, &mut h.sockets);
    assert_eq!(
        action,
        ClientAction::Relay {
            port,
            peer: peer(),
            payload: b"hello peer"
        }
    );

    let back = from_peer(&mut h, &mut client, port, peer(), b"hello client");
    assert_eq!(back, Some((peer(), b"hello client".to_vec())));
    assert_eq!(h.server.stats().to_peer_packets, 1);
    assert_eq!(h.server.stats().to_client_packets, 1);
}

/// Permissions are renewed each on its own time, soonest first (a gateway's
/// allocation holds one per relayed client, and its timer is polled after
/// every turn): the timer names the first renewal due, and running it
/// renews that permission alone.
#[test]
fn permissions_are_renewed_one_at_a_time_soonest_first() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    let (first, second) = (
        IpAddr::from([198, 18, 0, 20]),
        IpAddr::from([198, 18, 0, 21]),
    );
    client.create_permission(first, h.now().instant);
    h.exchange(&mut client, alice());
    h.advance(Duration::from_secs(100));
    client.create_permission(second, h.now().instant);
    h.exchange(&mut client, alice());
    while client.poll_event().is_some() {}
    // A minute before the first lapses (the allocation's refresh is later).
    let renew = h.start + PERMISSION_LIFETIME - Duration::from_secs(60);
    assert_eq!(client.poll_timeout(), Some(renew));
    h.advance(renew - h.now().instant);
    client.handle_timeout(renew);
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| client.poll_transmit()).collect();
    assert_eq!(sent.len(), 1, "one renewal");
    let request = Message::parse(&sent[0]).unwrap();
    assert_eq!(request.method(), method::CREATE_PERMISSION);
    assert_eq!(
        request
            .get_xor_address(attr::XOR_PEER_ADDRESS)
            .flatten()
            .map(|a| a.ip()),
        Some(first)
    );
    let reply = h.send(alice(), &sent[0]).unwrap();
    assert!(client.handle_packet(&reply, renew).is_none());
    // Next: the second permission's turn.
    assert_eq!(
        client.poll_timeout(),
        Some(h.start + Duration::from_secs(100) + PERMISSION_LIFETIME - Duration::from_secs(60))
    );
}

#[test]
fn a_channel_alone_keeps_data_flowing_past_the_permission_lifetime() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    client.bind_channel(peer(), h.now().instant);
    h.exchange(&mut client, alice());
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::ChannelBound { .. })
    ));
    // The binding installed a 300 s permission; the client must rebind
    // before it lapses, not just before the 600 s binding does.
    let mut frame = Vec::new();
    assert!(client.encode_to_peer(peer(), b"data", &mut frame));
    for _ in 0..40 {
        h.advance(Duration::from_secs(30));
        client.handle_timeout(h.now().instant);
        h.exchange(&mut client, alice());
        let now = h.now();
        assert!(
            matches!(
                h.server.handle_client(now, alice(), &frame, &mut h.sockets),
                ClientAction::Relay { .. }
            ),
            "at {:?}",
            h.elapsed
        );
    }
}

#[test]
fn send_and_data_indications_work_with_a_permission_only() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    let mut frame = Vec::new();
    assert!(
        !client.encode_to_peer(peer(), b"x", &mut frame),
        "no permission yet"
    );
    let now = h.now().instant;
    client.create_permission(peer().ip(), now);
    h.exchange(&mut client, alice());
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::PermissionCreated(peer().ip()))
    );
    assert!(client.encode_to_peer(peer(), b"odd-length!", &mut frame));
    let now = h.now();
    assert_eq!(
        h.server.handle_client(now, alice(), &frame, &mut h.sockets),
        ClientAction::Relay {
            port,
            peer: peer(),
            payload: b"odd-length!"
        }
    );
    // Any port of a permitted IP may answer, framed as a Data indication.
    let other_port: SocketAddr = "198.18.0.20:9999".parse().unwrap();
    assert_eq!(
        from_peer(&mut h, &mut client, port, other_port, b"abc"),
        Some((other_port, b"abc".to_vec()))
    );
}

#[test]
fn traffic_without_permission_is_dropped_both_ways() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    assert_eq!(
        from_peer(&mut h, &mut client, port, peer(), b"sneaky"),
        None
    );
    assert_eq!(h.drops(DropReason::NoPermission), 1);
    let mut send = Vec::new();
    MessageWriter::new(&mut send, method::SEND, Class::Indication, [1; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer())
        .attr(attr::DATA, b"x");
    assert_eq!(h.send(alice(), &send), None);
    assert_eq!(h.drops(DropReason::NoPermission), 2);
    // ChannelData on an unbound channel, and from a client without allocation.
    assert_eq!(h.send(alice(), &[0x40, 0x00, 0x00, 0x01, 0xff]), None);
    assert_eq!(h.drops(DropReason::NoChannel), 1);
    assert_eq!(
        h.send("198.18.0.99:1".parse().unwrap(), &[0x40, 0x00, 0x00, 0x00]),
        None
    );
    assert_eq!(h.drops(DropReason::NoAllocation), 1);
}

#[test]
fn wrong_secret_and_expired_credentials_are_refused() {
    let mut h = Harness::new(config());
    let server = "198.18.0.3:3478".parse().unwrap();
    let (username, _) = credentials(3600, "alice");
    let mut wrong = Client::new(server, &username, "not-the-password", 1, h.now().instant);
    h.exchange(&mut wrong, alice());
    assert!(matches!(
        wrong.poll_event(),
        Some(ClientEvent::Failed { code: 401, .. })
    ));

    let (username, password) = credentials(-1, "late");
    let mut expired = Client::new(server, &username, &password, 2, h.now().instant);
    h.exchange(&mut expired, "198.18.0.10:40001".parse().unwrap());
    assert!(matches!(
        expired.poll_event(),
        Some(ClientEvent::Failed { code: 401, .. })
    ));
    assert_eq!(h.server.allocation_count(), 0);
}

/// A signed request with a fresh nonce, for the hand-made error cases.
fn signed(
    h: &mut Harness,
    from: SocketAddr,
    method: u16,
    tid: [u8; 12],
    build: impl Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    signed_as(h, "alice", from, method, tid, build)
}

/// [`signed`] with the TURN REST credentials of `user`.
fn signed_as(
    h: &mut Harness,
    user: &str,
    from: SocketAddr,
    method: u16,
    tid: [u8; 12],
    build: impl Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    let mut probe = Vec::new();
    MessageWriter::new(&mut probe, method, Class::Request, [0xEE; 12]);
    let challenge = h.send(from, &probe).expect("challenge");
    let challenge = Message::parse(&challenge).unwrap();
    assert_eq!(
        challenge.error_code().map(|(c, _)| c),
        Some(code::UNAUTHORIZED)
    );
    let nonce = challenge.get_str(attr::NONCE).unwrap().to_string();
    let (username, password) = credentials(3600, user);
    let key = long_term_key(&username, REALM, &password);
    let mut bytes = Vec::new();
    let mut writer = MessageWriter::new(&mut bytes, method, Class::Request, tid);
    build(&mut writer);
    writer
        .attr(attr::USERNAME, username.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity_sha1(&key);
    bytes
}

fn error_of(reply: &[u8]) -> u16 {
    Message::parse(reply)
        .unwrap()
        .error_code()
        .map(|(c, _)| c)
        .unwrap_or(0)
}

#[test]
fn request_errors_use_the_rfc_codes() {
    let mut h = Harness::new(config());
    let udp = |w: &mut MessageWriter<'_>| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    // 420 names the unknown comprehension-required attribute; optional ones pass.
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], |w| {
        udp(w);
        w.attr(0x7777, b"?").attr(0x8777, b"fine");
    });
    let reply = h.send(alice(), &request).unwrap();
    let message = Message::parse(&reply).unwrap();
    assert_eq!(
        message.error_code().map(|(c, _)| c),
        Some(code::UNKNOWN_ATTRIBUTE)
    );
    assert_eq!(
        message.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x77, 0x77][..])
    );
    // DONT-FRAGMENT is not supported, so it is unknown too.
    let request = signed(&mut h, alice(), method::ALLOCATE, [2; 12], |w| {
        udp(w);
        w.attr(attr::DONT_FRAGMENT, b"");
    });
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::UNKNOWN_ATTRIBUTE
    );
    // Transport and family.
    let request = signed(&mut h, alice(), method::ALLOCATE, [3; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::UNSUPPORTED_TRANSPORT
    );
    let request = signed(&mut h, alice(), method::ALLOCATE, [4; 12], |w| {
        udp(w);
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::ADDRESS_FAMILY_NOT_SUPPORTED
    );
    let request = signed(&mut h, alice(), method::ALLOCATE, [5; 12], |_| {});
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::BAD_REQUEST,
        "no REQUESTED-TRANSPORT"
    );
    // Requests that need an allocation.
    let request = signed(&mut h, alice(), method::CREATE_PERMISSION, [6; 12], |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer());
    });
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::ALLOCATION_MISMATCH
    );
    // A tampered request.
    let mut request = signed(&mut h, alice(), method::ALLOCATE, [7; 12], udp);
    let last = request.len() - 1;
    request[last] ^= 0xFF;
    assert_eq!(
        error_of(&h.send(alice(), &request).unwrap()),
        code::UNAUTHORIZED
    );
    // Unknown method.
    let mut bytes = Vec::new();
    MessageWriter::new(&mut bytes, 0x0FF, Class::Request, [8; 12]);
    assert_eq!(
        error_of(&h.send(alice(), &bytes).unwrap()),
        code::BAD_REQUEST
    );
    // A made-up nonce is stale/invalid: 438 with a fresh one.
    let mut bytes = Vec::new();
    let (username, password) = credentials(3600, "alice");
    MessageWriter::new(&mut bytes, method::ALLOCATE, Class::Request, [9; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, username.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, b"0123456789abcdef0123456789abcdef")
        .integrity_sha1(&long_term_key(&username, REALM, &password));
    let reply = h.send(alice(), &bytes).unwrap();
    assert_eq!(error_of(&reply), code::STALE_NONCE);
    assert!(Message::parse(&reply).unwrap().get(attr::NONCE).is_some());
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn allocate_retransmits_get_the_same_answer_and_others_mismatch() {
    let mut h = Harness::new(config());
    let udp = |w: &mut MessageWriter<'_>| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], udp);
    let first = h.send(alice(), &request).unwrap();
    assert_eq!(Message::parse(&first).unwrap().class(), Class::Success);
    assert_eq!(
        h.send(alice(), &request).unwrap(),
        first,
        "a retransmission"
    );
    let again = signed(&mut h, alice(), method::ALLOCATE, [2; 12], udp);
    assert_eq!(
        error_of(&h.send(alice(), &again).unwrap()),
        code::ALLOCATION_MISMATCH
    );
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn permissions_and_channels_are_checked() {
    let mut h = Harness::new(config());
    allocated(&mut h, alice());
    let bind = |number: u16, peer: SocketAddr| {
        move |w: &mut MessageWriter<'_>| {
            w.u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        }
    };
    let ok = signed(
        &mut h,
        alice(),
        method::CHANNEL_BIND,
        [1; 12],
        bind(0x4000, peer()),
    );
    assert_eq!(
        Message::parse(&h.send(alice(), &ok).unwrap())
            .unwrap()
            .class(),
        Class::Success
    );
    let other: SocketAddr = "198.18.0.21:1".parse().unwrap();
    for (tid, number, peer, expected) in [
        (2, 0x4000, other, code::BAD_REQUEST), // channel taken by another peer
        (3, 0x4001, peer(), code::BAD_REQUEST), // peer already on another channel
        (4, 0x3FFF, other, code::BAD_REQUEST), // out of range
        (
            5,
            0x4002,
            "[2001:db8::1]:5".parse().unwrap(),
            code::PEER_ADDRESS_FAMILY_MISMATCH,
        ),
        (6, 0x4003, "127.0.0.1:22".parse().unwrap(), code::FORBIDDEN),
    ] {
        let request = signed(
            &mut h,
            alice(),
            method::CHANNEL_BIND,
            [tid; 12],
            bind(number, peer),
        );
        assert_eq!(
            error_of(&h.send(alice(), &request).unwrap()),
            expected,
            "case {tid}"
        );
    }
    let rebind = signed(
        &mut h,
        alice(),
        method::CHANNEL_BIND,
        [7; 12],
        bind(0x4000, peer()),
    );
    assert_eq!(
        Message::parse(&h.send(alice(), &rebind).unwrap())
            .unwrap()
            .class(),
        Class::Success,
        "refresh"
    );
    let none = signed(&mut h, alice(), method::CREATE_PERMISSION, [8; 12], |_| {});
    assert_eq!(
        error_of(&h.send(alice(), &none).unwrap()),
        code::BAD_REQUEST,
        "no peer address"
    );
}

#[test]
fn loopback_peers_are_allowed_only_when_configured() {
    let mut config = config();
    config.peers.allow_loopback = true;
    let mut h = Harness::new(config);
    allocated(&mut h, alice());
    let request = signed(&mut h, alice(), method::CREATE_PERMISSION, [1; 12], |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:9".parse().unwrap());
    });
    assert_eq!(
        Message::parse(&h.send(alice(), &request).unwrap())
            .unwrap()
            .class(),
        Class::Success
    );
}

#[test]
fn quotas_and_port_exhaustion() {
    let mut config = config();
    config.max_allocations_per_user = 2;
    config.ports = 50000..=50002;
    let mut h = Harness::new(config);
    h.sockets.refuse.insert(50001); // in use by someone else
    allocated(&mut h, "198.18.0.10:1".parse().unwrap());
    allocated(&mut h, "198.18.0.10:2".parse().unwrap());
    let (username, password) = credentials(3600, "alice");
    let server = "198.18.0.3:3478".parse().unwrap();
    let mut third = Client::new(server, &username, &password, 3, h.now().instant);
    h.exchange(&mut third, "198.18.0.10:3".parse().unwrap());
    assert!(matches!(
        third.poll_event(),
        Some(ClientEvent::Failed { code: 486, .. })
    ));
    assert!(!h.sockets.open.contains(&50001));

    let (username, password) = credentials(3600, "bob");
    let mut fourth = Client::new(server, &username, &password, 4, h.now().instant);
    h.exchange(&mut fourth, "198.18.0.10:4".parse().unwrap());
    assert!(
        matches!(
            fourth.poll_event(),
            Some(ClientEvent::Failed { code: 508, .. })
        ),
        "the only free port cannot be bound"
    );
}

#[test]
fn allocations_expire_and_can_be_released() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    let port = client.relayed_address().unwrap().port();
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0, "600 s default lifetime");
    assert_eq!(h.sockets.closed, vec![port]);
    assert_eq!(from_peer(&mut h, &mut client, port, peer(), b"late"), None);

    let bob: SocketAddr = "198.18.0.11:1".parse().unwrap();
    let mut client = allocated(&mut h, bob);
    client.deallocate(h.now().instant);
    h.exchange(&mut client, bob);
    assert_eq!(client.poll_event(), Some(ClientEvent::Deallocated));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn the_client_refreshes_through_a_stale_nonce() {
    let mut h = Harness::new(config());
    let mut client = allocated(&mut h, alice());
    // The first refresh (540 s) still has a valid nonce; the second (1080 s)
    // meets a stale one (nonces live 600 s), gets 438 and retries. Without
    // that retry the allocation would be gone at 1140 s.
    for _ in 0..40 {
        h.advance(Duration::from_secs(30));
        client.handle_timeout(h.now().instant);
        h.exchange(&mut client, alice());
    }
    assert!(client.is_allocated());
    assert_eq!(h.server.allocation_count(), 1, "refreshed, not expired");
    assert!(client.poll_event().is_none(), "no failure event");
}

#[test]
fn binding_requests_reflect_the_source() {
    let mut h = Harness::new(config());
    let mut request = Vec::new();
    MessageWriter::new(&mut request, method::BINDING, Class::Request, [3; 12]).fingerprint();
    let reply = h.send(alice(), &request).unwrap();
    let message = Message::parse(&reply).unwrap();
    assert_eq!(message.class(), Class::Success);
    assert_eq!(
        message.get_xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(Some(alice()))
    );
    assert_eq!(
        message.verify_fingerprint(),
        Some(true),
        "fingerprint echoed"
    );
}

#[test]
fn the_rate_limit_drops_excess() {
    let mut config = config();
    config.max_bps_per_allocation = 8 * 100_000; // 100 kB/s, 64 KiB burst
    let mut h = Harness::new(config);
    let mut client = allocated(&mut h, alice());
    client.bind_channel(peer(), h.now().instant);
    h.exchange(&mut client, alice());
    let mut frame = Vec::new();
    client.encode_to_peer(peer(), &[0u8; 1000], &mut frame);
    let relayed = (0..100)
        .filter(|_| h.send(alice(), &frame).is_none() && h.drops(DropReason::RateLimited) == 0)
        .count();
    assert!(h.drops(DropReason::RateLimited) > 0);
    assert!(
        (60..=66).contains(&(h.server.stats().to_peer_packets as usize)),
        "{relayed}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hostile_datagrams_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let mut h = Harness::new(config());
            let mut client = allocated(&mut h, alice());
            client.bind_channel(peer(), h.now().instant);
            h.exchange(&mut client, alice());
            let port = client.relayed_address().unwrap().port();
            for packet in &packets {
                let _ = h.send(alice(), packet);
                let _ = client.handle_packet(packet, h.now().instant);
                let mut buf = vec![0u8; PEER_HEADROOM + packet.len() + PEER_TAILROOM];
                let now = h.now().instant;
                let _ = h.server.handle_peer(now, port, peer(), &mut buf, PEER_HEADROOM, packet.len());
            }
            // STUN-framed garbage reaches the request handlers.
            for packet in &packets {
                let mut bytes = Vec::new();
                MessageWriter::new(&mut bytes, u16::from(packet.first().copied().unwrap_or(3)) & 0xF, Class::Request, [1; 12])
                    .attr(u16::from_be_bytes([packet.get(1).copied().unwrap_or(0), packet.get(2).copied().unwrap_or(0)]), packet);
                let _ = h.send(alice(), &bytes);
            }
        }
    }
}

#[test]
fn even_port_with_reservation_holds_the_next_port() {
    let mut h = Harness::new(config());
    let even = |reserve: bool| {
        move |w: &mut MessageWriter<'_>| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::EVEN_PORT, &[if reserve { 0x80 } else { 0 }, 0, 0, 0]);
        }
    };
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], even(true));
    let reply = h.send(alice(), &request).unwrap();
    let message = Message::parse(&reply).unwrap();
    let relayed = message
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relayed.port() % 2, 0, "EVEN-PORT gives an even port");
    let token = message
        .get(attr::RESERVATION_TOKEN)
        .expect("a reservation token")
        .to_vec();

    // A second client claims the reserved port with the token.
    let bob: SocketAddr = "198.18.0.11:7".parse().unwrap();
    let claim = signed(&mut h, bob, method::ALLOCATE, [2; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    let reply = h.send(bob, &claim).unwrap();
    let claimed = Message::parse(&reply)
        .unwrap()
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(claimed.port(), relayed.port() + 1);

    // A token works once; EVEN-PORT with a token is contradictory.
    let carol: SocketAddr = "198.18.0.12:7".parse().unwrap();
    let again = signed(&mut h, carol, method::ALLOCATE, [3; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        error_of(&h.send(carol, &again).unwrap()),
        code::INSUFFICIENT_CAPACITY
    );
    let both = signed(&mut h, carol, method::ALLOCATE, [4; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(error_of(&h.send(carol, &both).unwrap()), code::BAD_REQUEST);
    let plain_even = signed(&mut h, carol, method::ALLOCATE, [5; 12], even(false));
    let reply = h.send(carol, &plain_even).unwrap();
    let message = Message::parse(&reply).unwrap();
    assert_eq!(
        message
            .get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
            .port()
            % 2,
        0
    );
    assert!(message.get(attr::RESERVATION_TOKEN).is_none());
}

/// An IPv6 allocation's reservation gives the second allocation an IPv6
/// relayed address too (its request carries no family, RFC 8656 section
/// 7.2, and the default would be IPv4), also on a relay without IPv4; a
/// family next to a token is a contradiction.
#[test]
fn a_reserved_port_keeps_the_family_of_the_allocation_that_reserved_it() {
    let mut config = config();
    config.relay_ipv4 = None;
    config.relay_ipv6 = Some("2001:2::3".parse().unwrap());
    let mut h = Harness::new(config);
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    let bytes = h.send(alice(), &request).unwrap();
    let message = Message::parse(&bytes).unwrap();
    let rtp = message
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!(rtp.is_ipv6(), "{rtp}");
    let token = message.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    let with_family = signed(&mut h, bob_socket(), method::ALLOCATE, [2; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        error_of(&h.send(bob_socket(), &with_family).unwrap()),
        code::BAD_REQUEST
    );
    let claim = signed(&mut h, bob_socket(), method::ALLOCATE, [3; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    let bytes = h.send(bob_socket(), &claim).unwrap();
    let reply = Message::parse(&bytes).unwrap();
    assert_eq!(reply.class(), Class::Success, "{:?}", error_of(&bytes));
    let rtcp = reply
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(rtcp, SocketAddr::new(rtp.ip(), rtp.port() + 1));
}

/// A client's two sockets hash to two shards of the relay (SO_REUSEPORT):
/// the second shard redeems the first's reservation and owns the port.
#[test]
fn a_reservation_made_on_one_shard_is_redeemed_on_another() {
    let reservations = std::sync::Arc::new(Reservations::default());
    let shard = |n: u16| {
        let mut config = config();
        config.shard = n;
        config.shards = 2;
        config.reservations = std::sync::Arc::clone(&reservations);
        Harness::new(config)
    };
    let (mut first, mut second) = (shard(0), shard(1));
    let request = signed(&mut first, alice(), method::ALLOCATE, [1; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    let bytes = first.send(alice(), &request).unwrap();
    let message = Message::parse(&bytes).unwrap();
    let rtp = message
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let token = message.get(attr::RESERVATION_TOKEN).unwrap().to_vec();

    // Another user cannot take the port held for this one.
    let mallory: SocketAddr = "198.18.0.66:1".parse().unwrap();
    let stolen = signed_as(
        &mut second,
        "mallory",
        mallory,
        method::ALLOCATE,
        [9; 12],
        |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::RESERVATION_TOKEN, &token);
        },
    );
    assert_eq!(
        error_of(&second.send(mallory, &stolen).unwrap()),
        code::INSUFFICIENT_CAPACITY
    );
    let rtcp_socket: SocketAddr = "198.18.0.10:40001".parse().unwrap();
    let claim = signed(&mut second, rtcp_socket, method::ALLOCATE, [2; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    let bytes = second.send(rtcp_socket, &claim).unwrap();
    let reply = Message::parse(&bytes).unwrap();
    assert_eq!(reply.class(), Class::Success, "not 508 on the other shard");
    let rtcp = reply
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(rtcp.port(), rtp.port() + 1);
    // Redeemed: the owner's expiry does not take the port back, and the
    // token works once.
    first.advance(Duration::from_secs(31));
    assert!(reservations.next_expiry(0).is_none());
    let again = signed(&mut first, bob_socket(), method::ALLOCATE, [3; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        error_of(&first.send(bob_socket(), &again).unwrap()),
        code::INSUFFICIENT_CAPACITY
    );
}

fn bob_socket() -> SocketAddr {
    "198.18.0.11:9".parse().unwrap()
}

#[test]
fn unclaimed_reservations_return_their_port_after_30_seconds() {
    let mut config = config();
    config.ports = 50000..=50001;
    let mut h = Harness::new(config);
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    assert_eq!(
        Message::parse(&h.send(alice(), &request).unwrap())
            .unwrap()
            .class(),
        Class::Success
    );
    let (username, password) = credentials(3600, "bob");
    let server = "198.18.0.3:3478".parse().unwrap();
    let bob: SocketAddr = "198.18.0.11:1".parse().unwrap();
    let mut early = Client::new(server, &username, &password, 5, h.now().instant);
    h.exchange(&mut early, bob);
    assert!(
        matches!(
            early.poll_event(),
            Some(ClientEvent::Failed { code: 508, .. })
        ),
        "50001 is reserved"
    );
    h.advance(Duration::from_secs(31));
    let carol: SocketAddr = "198.18.0.12:1".parse().unwrap();
    let mut late = Client::new(server, &username, &password, 6, h.now().instant);
    h.exchange(&mut late, carol);
    assert!(
        matches!(late.poll_event(), Some(ClientEvent::Allocated { relayed, .. }) if relayed.port() == 50001)
    );
}

#[test]
fn shards_split_the_port_range_by_pairs() {
    let mut ports = Vec::new();
    for shard in 0..3 {
        let mut config = config();
        config.shard = shard;
        config.shards = 3;
        let server = Server::new(config, [1; 32]);
        ports.extend(server.free_ports.iter().copied());
        assert!(
            server
                .free_ports
                .iter()
                .all(|p| server.free_ports.contains(&(p ^ 1))),
            "whole pairs per shard"
        );
    }
    ports.sort_unstable();
    assert_eq!(
        ports,
        (50000..=50099).collect::<Vec<_>>(),
        "every port in exactly one shard"
    );
}

#[test]
fn ipv6_allocations_when_asked_and_configured() {
    let mut config = config();
    config.relay_ipv6 = Some("2001:db8::3".parse().unwrap());
    let mut h = Harness::new(config);
    let request = signed(&mut h, alice(), method::ALLOCATE, [1; 12], |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    let reply = h.send(alice(), &request).unwrap();
    let relayed = Message::parse(&reply)
        .unwrap()
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(
        relayed.ip(),
        "2001:db8::3".parse::<IpAddr>().unwrap(),
        "an IPv4 client may relay over IPv6"
    );
    // Peers must be of the allocation's family.
    let v4_peer = signed(&mut h, alice(), method::CREATE_PERMISSION, [2; 12], |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer());
    });
    assert_eq!(
        error_of(&h.send(alice(), &v4_peer).unwrap()),
        code::PEER_ADDRESS_FAMILY_MISMATCH
    );
    let v6_peer = signed(&mut h, alice(), method::CREATE_PERMISSION, [3; 12], |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, "[2001:db8::20]:5".parse().unwrap());
    });
    assert_eq!(
        Message::parse(&h.send(alice(), &v6_peer).unwrap())
            .unwrap()
            .class(),
        Class::Success
    );
    // A refresh asking for the other family is a mismatch.
    let refresh = signed(&mut h, alice(), method::REFRESH, [4; 12], |w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    });
    assert_eq!(
        error_of(&h.send(alice(), &refresh).unwrap()),
        code::PEER_ADDRESS_FAMILY_MISMATCH
    );
}

#[test]
fn a_client_recovers_an_allocation_whose_answer_was_lost() {
    let mut h = Harness::new(config());
    // The first client's allocation exists on the server, but pretend its
    // answer never arrived and the client gave up.
    let first = allocated(&mut h, alice());
    let orphan = first.relayed_address().unwrap();
    drop(first);
    let (username, password) = credentials(3600, "alice");
    let server = "198.18.0.3:3478".parse().unwrap();
    let mut second = Client::new(server, &username, &password, 9, h.now().instant);
    h.exchange(&mut second, alice());
    match second.poll_event() {
        Some(ClientEvent::Allocated { relayed, .. }) => {
            assert_eq!(h.server.allocation_count(), 1, "the orphan was released");
            assert!(!h.sockets.open.contains(&orphan.port()) || relayed == orphan);
        }
        other => panic!("expected a fresh allocation after the 437, got {other:?}"),
    }
}

mod attacker;
mod renewal;

/// A client counts only answers to its own requests as the server hearing
/// it: an answer meant for an earlier client (the same device before it
/// switched transport) is not one.
#[test]
fn a_client_recognises_only_answers_to_its_own_requests() {
    let mut h = Harness::new(config());
    let (username, password) = credentials(3600, "alice");
    let server = SocketAddr::new(Ipv4Addr::new(198, 18, 0, 3).into(), 3478);
    let mut earlier = Client::new(server, &username, &password, 1, h.now().instant);
    let mut current = Client::new(server, &username, &password, 2, h.now().instant);
    let request = earlier.poll_transmit().unwrap();
    let reply = h.send(alice(), &request).expect("the server answers");
    assert!(earlier.answers(&reply));
    assert!(!current.answers(&reply), "another client's transaction");
    let request = current.poll_transmit().unwrap();
    let reply = h.send(alice(), &request).expect("the server answers");
    assert!(current.answers(&reply));
    assert!(!current.answers(b"not stun at all, just bytes"));
}

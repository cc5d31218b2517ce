#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Two WireGuard peers on an in-memory link: the handshake with the pair's
//! preshared key, data both ways, refusal of wrong keys, liveness.

use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use postern_tunnel::wireguard::{
    Action, HANDSHAKE_RETRY, KEEPALIVE, LIVENESS_TIMEOUT, PeerError, WireguardPeer, public_key,
};
use proptest::prelude::*;

const CLIENT_SECRET: [u8; 32] = [1; 32];
const GATEWAY_SECRET: [u8; 32] = [2; 32];
const PSK: [u8; 32] = [9; 32];

fn pair(client_psk: [u8; 32], gateway_psk: [u8; 32]) -> (WireguardPeer, WireguardPeer) {
    (
        WireguardPeer::new(CLIENT_SECRET, public_key(GATEWAY_SECRET), client_psk, 1),
        WireguardPeer::new(GATEWAY_SECRET, public_key(CLIENT_SECRET), gateway_psk, 2),
    )
}

/// An IPv4/UDP packet with a recognizable payload.
fn ip_packet(tag: u8) -> Vec<u8> {
    let mut packet = vec![0u8; 60];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&60u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[100, 64, 0, 1]);
    packet[16..20].copy_from_slice(&[10, 0, 0, 1]);
    packet[28..].fill(tag);
    packet
}

/// Delivers `datagram` to `to`, and everything it answers back and forth,
/// until both sides are quiet; returns what reached each tunnel.
fn exchange(
    from: &mut WireguardPeer,
    to: &mut WireguardPeer,
    datagram: Vec<u8>,
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut buffer = vec![0u8; 2048];
    let mut tunnels = (Vec::new(), Vec::new());
    // (datagram, towards `to`?)
    let mut queue = vec![(datagram, true)];
    while let Some((datagram, towards_to)) = queue.pop() {
        let peer = if towards_to { &mut *to } else { &mut *from };
        let mut action = match peer.receive(None, &datagram, now, &mut buffer) {
            Ok(action) => action,
            Err(_) => continue,
        };
        loop {
            match action {
                Action::Nothing => break,
                Action::Network(n) => queue.push((buffer[..n].to_vec(), !towards_to)),
                Action::Tunnel(n) => {
                    let received = buffer[..n].to_vec();
                    if towards_to {
                        tunnels.1.push(received)
                    } else {
                        tunnels.0.push(received)
                    }
                    break;
                }
            }
            action = peer.flush(&mut buffer).unwrap();
        }
    }
    tunnels
}

/// A gateway under load answers a handshake with a cookie (its node checks
/// every handshake against the load first). The client repeats the
/// handshake, cookie included, after HANDSHAKE_RETRY on the caller's clock,
/// not after boringtun's own 5 s on the system clock: after a gateway
/// restart thousands of clients come back at once.
#[test]
fn a_handshake_answered_with_a_cookie_is_repeated_after_a_second() {
    let now = Instant::now();
    let (mut client, mut gateway) = pair(PSK, PSK);
    let client_ip = "198.18.0.2".parse().unwrap();
    let gateway_ip = "198.51.100.1".parse().unwrap();
    // No handshake a second without a cookie: under load from the first.
    let load = RateLimiter::new(&PublicKey::from(&StaticSecret::from(GATEWAY_SECRET)), 0);
    let (mut buffer, mut reply) = (vec![0u8; 2048], vec![0u8; 2048]);
    let Action::Network(n) = client.send(&ip_packet(3), now, &mut buffer).unwrap() else {
        panic!()
    };
    let Err(TunnResult::WriteToNetwork(cookie)) =
        load.verify_packet(Some(client_ip), &buffer[..n], &mut reply)
    else {
        panic!("no cookie")
    };
    let cookie = cookie.to_vec();
    assert_eq!(
        client.receive(Some(gateway_ip), &cookie, now, &mut buffer),
        Ok(Action::Nothing)
    );
    assert_eq!(
        client.tick(now + HANDSHAKE_RETRY / 2, &mut buffer),
        Ok(Action::Nothing)
    );
    let Action::Network(n) = client.tick(now + HANDSHAKE_RETRY, &mut buffer).unwrap() else {
        panic!("no new handshake after the cookie")
    };
    assert!(
        load.verify_packet(Some(client_ip), &buffer[..n], &mut reply)
            .is_ok(),
        "the new handshake carries the cookie"
    );
    let (_, at_gateway) = exchange(&mut client, &mut gateway, buffer[..n].to_vec(), now);
    assert_eq!(at_gateway, vec![ip_packet(3)], "the queued packet follows");
}

/// A client answered with a cookie has no session yet: woken after the
/// keepalive interval, it sends nothing (a keepalive would only be queued
/// by boringtun), and its next deadline is ahead of it, not at or before
/// the time it ran (which would have the device loop wake it at once,
/// again and again).
#[test]
fn after_a_cookie_no_keepalive_is_due_until_the_session() {
    let now = Instant::now();
    let (mut client, _) = pair(PSK, PSK);
    let client_ip = "198.18.0.2".parse().unwrap();
    let gateway_ip = "198.51.100.1".parse().unwrap();
    let load = RateLimiter::new(&PublicKey::from(&StaticSecret::from(GATEWAY_SECRET)), 0);
    let (mut buffer, mut reply) = (vec![0u8; 2048], vec![0u8; 2048]);
    let Action::Network(n) = client.send(&[], now, &mut buffer).unwrap() else {
        panic!()
    };
    let Err(TunnResult::WriteToNetwork(cookie)) =
        load.verify_packet(Some(client_ip), &buffer[..n], &mut reply)
    else {
        panic!("no cookie")
    };
    let cookie = cookie.to_vec();
    client
        .receive(Some(gateway_ip), &cookie, now, &mut buffer)
        .unwrap();
    // Anyone who saw the initiation can forge a cookie: not the peer heard.
    assert_eq!(client.last_received(), None);
    assert!(!client.is_alive(now));
    let later = now + Duration::from_millis(500);
    assert_eq!(client.tick(later, &mut buffer), Ok(Action::Nothing));
    assert!(client.next_tick(later) > later, "due again at once");
    assert_eq!(client.tick(later, &mut buffer), Ok(Action::Nothing));
}

/// The responder has no current session until the initiator's first data
/// packet: meanwhile its timers send nothing (no keepalive, no handshake
/// of its own) and are not due again at once; then keepalives run from
/// the handshake response.
#[test]
fn a_responder_sends_no_keepalive_before_the_initiators_first_packet() {
    let now = Instant::now();
    let (mut client, mut gateway) = pair(PSK, PSK);
    let mut buffer = vec![0u8; 2048];
    let Action::Network(n) = client.send(&[], now, &mut buffer).unwrap() else {
        panic!()
    };
    let initiation = buffer[..n].to_vec();
    let Action::Network(n) = gateway
        .receive(None, &initiation, now, &mut buffer)
        .unwrap()
    else {
        panic!("no response")
    };
    let response = buffer[..n].to_vec();
    assert!(!gateway.has_session());
    for ms in [0, 300, 500, 900] {
        let at = now + Duration::from_millis(ms);
        assert_eq!(
            gateway.tick(at, &mut buffer),
            Ok(Action::Nothing),
            "{ms} ms"
        );
        assert!(gateway.next_tick(at) > at, "due again at once at {ms} ms");
    }
    let confirmed = now + Duration::from_millis(900);
    let Action::Network(n) = client
        .receive(None, &response, confirmed, &mut buffer)
        .unwrap()
    else {
        panic!("no confirmation")
    };
    let confirmation = buffer[..n].to_vec();
    gateway
        .receive(None, &confirmation, confirmed, &mut buffer)
        .unwrap();
    assert!(gateway.has_session());
    assert_eq!(gateway.next_tick(confirmed), now + KEEPALIVE);
    assert_eq!(
        gateway.tick(confirmed, &mut buffer),
        Ok(Action::Network(32))
    );
    assert_eq!(gateway.next_tick(confirmed), confirmed + KEEPALIVE);
}

#[test]
fn the_handshake_uses_the_preshared_key_and_data_flows_both_ways() {
    let now = Instant::now();
    let (mut client, mut gateway) = pair(PSK, PSK);
    let mut buffer = vec![0u8; 2048];
    // Before a session the packet waits and a handshake goes out.
    let Action::Network(n) = client.send(&ip_packet(7), now, &mut buffer).unwrap() else {
        panic!()
    };
    assert_eq!(n, 148, "a handshake initiation");
    let (_, at_gateway) = exchange(&mut client, &mut gateway, buffer[..n].to_vec(), now);
    assert_eq!(
        at_gateway,
        vec![ip_packet(7)],
        "the queued packet follows the handshake"
    );
    // And back.
    let Action::Network(n) = gateway.send(&ip_packet(8), now, &mut buffer).unwrap() else {
        panic!()
    };
    assert_eq!(n, 60 + 32, "a data packet: payload plus 32 bytes");
    let (_, at_client) = exchange(&mut gateway, &mut client, buffer[..n].to_vec(), now);
    assert_eq!(at_client, vec![ip_packet(8)]);
    let mut plain = vec![0u8; 2048];
    let Action::Network(n) = gateway.send(&ip_packet(9), now, &mut buffer).unwrap() else {
        panic!()
    };
    let Action::Tunnel(m) = client.receive(None, &buffer[..n], now, &mut plain).unwrap() else {
        panic!()
    };
    assert_eq!(&plain[..m], &ip_packet(9)[..]);
    assert!(client.is_alive(now) && gateway.is_alive(now));
    let (sent, received) = client.traffic();
    assert!(sent > 0 && received >= 120, "{sent} {received}");
}

#[test]
fn a_different_preshared_key_or_peer_key_gets_no_session() {
    let now = Instant::now();
    let (mut client, mut gateway) = pair(PSK, [10; 32]);
    let mut buffer = vec![0u8; 2048];
    let Action::Network(n) = client.send(&ip_packet(7), now, &mut buffer).unwrap() else {
        panic!()
    };
    let (_, at_gateway) = exchange(&mut client, &mut gateway, buffer[..n].to_vec(), now);
    assert!(
        at_gateway.is_empty(),
        "nothing gets through with a wrong preshared key"
    );

    // A gateway expecting another client refuses the handshake outright.
    let mut stranger = WireguardPeer::new([3; 32], public_key(GATEWAY_SECRET), PSK, 3);
    let mut gateway = WireguardPeer::new(GATEWAY_SECRET, public_key(CLIENT_SECRET), PSK, 2);
    let Action::Network(n) = stranger.send(&ip_packet(7), now, &mut buffer).unwrap() else {
        panic!()
    };
    let mut out = vec![0u8; 2048];
    assert!(matches!(
        gateway.receive(None, &buffer[..n], now, &mut out),
        Err(PeerError::Refused(_))
    ));
    assert_eq!(
        gateway.last_received(),
        None,
        "a refused handshake is not a sign of life"
    );
}

#[test]
fn silence_marks_a_peer_dead_within_two_seconds_and_keepalives_prevent_it() {
    let start = Instant::now();
    let (mut client, mut gateway) = pair(PSK, PSK);
    let mut buffer = vec![0u8; 2048];
    let Action::Network(n) = client.send(&ip_packet(1), start, &mut buffer).unwrap() else {
        panic!()
    };
    exchange(&mut client, &mut gateway, buffer[..n].to_vec(), start);
    assert!(client.is_alive(start));
    // Nothing more arrives: dead once the liveness timeout has passed.
    assert!(client.is_alive(start + LIVENESS_TIMEOUT - Duration::from_millis(1)));
    assert!(!client.is_alive(start + LIVENESS_TIMEOUT));
    // With both sides ticking every 100 ms (simulated), keepalives keep both
    // alive for a minute; each side sends one per keepalive interval.
    let mut out = vec![0u8; 2048];
    let mut keepalives = 0;
    for step in 1..=600 {
        let now = start + Duration::from_millis(100 * step);
        if let Ok(Action::Network(n)) = client.tick(now, &mut buffer) {
            keepalives += 1;
            let _ = gateway.receive(None, &buffer[..n], now, &mut out);
        }
        if let Ok(Action::Network(n)) = gateway.tick(now, &mut buffer) {
            keepalives += 1;
            let _ = client.receive(None, &buffer[..n], now, &mut out);
        }
        assert!(
            client.is_alive(now) && gateway.is_alive(now),
            "dead at {step}"
        );
    }
    let expected = 2 * 60_000 / KEEPALIVE.as_millis();
    assert!(
        (expected * 85 / 100..=expected * 115 / 100).contains(&(keepalives as u128)),
        "{keepalives} keepalives in 60 s for two sides, expected about {expected}"
    );
    // The gateway goes quiet: the client notices within two seconds.
    let quiet = start + Duration::from_secs(60);
    let mut noticed = None;
    for step in 1..=40 {
        let now = quiet + Duration::from_millis(100 * step);
        let _ = client.tick(now, &mut buffer);
        if !client.is_alive(now) {
            noticed = Some(now - quiet);
            break;
        }
    }
    let noticed = noticed.expect("the silent gateway is noticed");
    assert!(
        noticed <= LIVENESS_TIMEOUT + Duration::from_millis(100),
        "{noticed:?}"
    );
}

#[test]
fn small_buffers_are_refused_not_overrun() {
    let (mut client, _) = pair(PSK, PSK);
    let mut tiny = vec![0u8; 100];
    assert_eq!(
        client.send(&ip_packet(1), Instant::now(), &mut tiny),
        Err(PeerError::BufferTooSmall)
    );
    assert_eq!(
        client.tick(Instant::now(), &mut tiny),
        Err(PeerError::BufferTooSmall)
    );
}

proptest! {
    /// Hostile datagrams are refused without panics or state damage: a real
    /// handshake still works afterwards.
    #[test]
    fn garbage_datagrams_are_refused(garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
        let now = Instant::now();
        let (mut client, mut gateway) = pair(PSK, PSK);
        let mut out = vec![0u8; 2048];
        for datagram in &garbage {
            let _ = gateway.receive(None, datagram, now, &mut out);
        }
        let mut buffer = vec![0u8; 2048];
        let Action::Network(n) = client.send(&ip_packet(5), now, &mut buffer).unwrap() else { panic!() };
        let (_, at_gateway) = exchange(&mut client, &mut gateway, buffer[..n].to_vec(), now);
        prop_assert_eq!(at_gateway, vec![ip_packet(5)]);
    }
}

#[test]
fn a_lost_handshake_is_repeated_after_a_second_of_our_clock() {
    let start = Instant::now();
    let (mut client, mut gateway) = pair(PSK, PSK);
    let mut buffer = vec![0u8; 2048];
    let Action::Network(n) = client.send(&ip_packet(1), start, &mut buffer).unwrap() else {
        panic!()
    };
    assert_eq!(
        (n, buffer[0]),
        (148, 1),
        "an initiation, which the network loses"
    );
    assert_eq!(
        client.tick(start + Duration::from_millis(900), &mut buffer),
        Ok(Action::Nothing)
    );
    let Ok(Action::Network(n)) = client.tick(start + Duration::from_millis(1000), &mut buffer)
    else {
        panic!("no retry after a second")
    };
    assert_eq!((n, buffer[0]), (148, 1), "a fresh initiation");
    let (_, at_gateway) = exchange(
        &mut client,
        &mut gateway,
        buffer[..n].to_vec(),
        start + Duration::from_secs(1),
    );
    assert_eq!(
        at_gateway,
        vec![ip_packet(1)],
        "the queued packet follows the retried handshake"
    );
}

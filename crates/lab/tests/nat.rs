//! NAT routers behave like real home routers: address rewriting, mapping
//! behaviour per RFC 4787, filtering of unsolicited traffic, hole punching.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use postern_lab::NatKind;
use postern_lab::probe::{observed_address, punch};
use support::*;

#[test]
fn cone_nat_rewrites_the_source_to_the_router_address() {
    let lab = two_homes(NatKind::Cone, NatKind::Cone);
    let reflector = reflector(&lab.server, &format!("{SERVER}:3478"));
    let socket = socket_in(&lab.alice, "0.0.0.0:40000");

    let seen = observed_address(&socket, reflector.addr).expect("server answers alice");
    assert_eq!(
        seen.ip(),
        ip("198.18.0.1"),
        "UDP source is nat-alice's WAN address"
    );
    assert_eq!(
        seen.port(),
        40000,
        "a cone NAT preserves the port when it is free"
    );

    // TCP too: the accepted peer is the router, not 192.168.1.10.
    let listener = lab
        .server
        .enter(|| TcpListener::bind((ip(SERVER), 8080)))
        .unwrap()
        .unwrap();
    let target = SocketAddr::new(ip(SERVER), 8080);
    let _client = lab
        .alice
        .enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .unwrap()
        .expect("alice connects to the server over TCP");
    let (_stream, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), ip("198.18.0.1"));
}

#[test]
fn unsolicited_traffic_does_not_cross_a_nat() {
    let lab = two_homes(NatKind::Cone, NatKind::Cone);
    let reflector = reflector(&lab.server, &format!("{SERVER}:3478"));
    let bob = socket_in(&lab.bob, "0.0.0.0:41000");
    let alice = socket_in(&lab.alice, "0.0.0.0:40000");

    // Bob opens a mapping by talking to the server; the server's answer gets
    // back in through it (the positive control).
    let bob_public = observed_address(&bob, reflector.addr).expect("server answers bob");
    assert_eq!(bob_public.ip(), ip("198.18.0.2"));

    // Alice knows bob's mapped address but bob never sent to her: dropped.
    for _ in 0..5 {
        alice.send_to(b"knock", bob_public).unwrap();
    }
    // Even a route straight to bob's LAN does not help: nat-bob's forward
    // filter drops new inbound connections.
    lab.nat_a
        .host
        .add_route("192.168.2.0/24", ip("198.18.0.2"))
        .unwrap();
    for _ in 0..5 {
        alice.send_to(b"knock", "192.168.2.10:41000").unwrap();
    }
    let seen = senders_within(&bob, Duration::from_millis(500));
    assert!(
        seen.is_empty(),
        "bob received unsolicited packets from {seen:?}"
    );

    // Nor can the outside reach a LAN host over TCP.
    let target: SocketAddr = "192.168.2.10:22".parse().unwrap();
    let attempt = lab
        .server
        .enter(|| TcpStream::connect_timeout(&target, Duration::from_millis(500)))
        .unwrap();
    assert!(
        attempt.is_err(),
        "a TCP connection from outside reached bob's LAN"
    );
}

/// Both peers learn their public addresses from the server, then send to each
/// other at once: the outgoing packets open the way for the incoming ones.
fn punch_through(lab: &TwoHomes) -> bool {
    let reflector = reflector(&lab.server, &format!("{SERVER}:3478"));
    let alice = socket_in(&lab.alice, "0.0.0.0:40000");
    let bob = socket_in(&lab.bob, "0.0.0.0:41000");
    let alice_public = observed_address(&alice, reflector.addr).expect("alice public");
    let bob_public = observed_address(&bob, reflector.addr).expect("bob public");
    punch(&alice, alice_public, &bob, bob_public)
}

#[test]
fn hole_punching_works_through_two_cone_nats() {
    let lab = two_homes(NatKind::Cone, NatKind::Cone);
    assert!(
        punch_through(&lab),
        "simultaneous open through two cone NATs failed"
    );
}

#[test]
fn hole_punching_fails_against_a_symmetric_nat() {
    let lab = two_homes(NatKind::Cone, NatKind::Symmetric);
    assert!(
        !punch_through(&lab),
        "punched through a symmetric NAT: the lab NAT is too lenient"
    );
}

#[test]
fn symmetric_nat_maps_each_destination_to_its_own_port_and_cone_keeps_one() {
    let lab = two_homes(NatKind::Cone, NatKind::Symmetric);
    let first = reflector(&lab.server, &format!("{SERVER}:3478"));
    let second = reflector(&lab.server, &format!("{SERVER}:3479"));

    let alice = socket_in(&lab.alice, "0.0.0.0:40000");
    let cone_1 = observed_address(&alice, first.addr).unwrap();
    let cone_2 = observed_address(&alice, second.addr).unwrap();
    assert_eq!(
        cone_1, cone_2,
        "a cone NAT must keep one mapping for one socket"
    );

    let bob = socket_in(&lab.bob, "0.0.0.0:41000");
    let sym_1 = observed_address(&bob, first.addr).unwrap();
    let sym_2 = observed_address(&bob, second.addr).unwrap();
    assert_eq!(sym_1.ip(), sym_2.ip());
    assert_ne!(
        sym_1.port(),
        sym_2.port(),
        "a symmetric NAT must give each destination its own port"
    );
    // And the mapping is stable per destination.
    assert_eq!(observed_address(&bob, first.addr).unwrap(), sym_1);
}

//! The topology most NAT tests share, and small helpers around the probes.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use postern_lab::probe::{self, Reflector};
use postern_lab::{Host, Lab, NatKind, Router};

/// The public server every topology has.
pub const SERVER: &str = "198.18.0.10";

pub fn lab() -> Lab {
    Lab::new()
        .expect("the lab needs root with iproute2, nftables and iptables installed (see .ci/run)")
}

pub fn reflector(host: &Host, addr: &str) -> Reflector {
    Reflector::start(host, addr.parse().expect("address")).expect("reflector")
}

pub fn socket_in(host: &Host, bind: &str) -> UdpSocket {
    probe::udp_socket(host, bind.parse().expect("bind address")).expect("socket")
}

/// Receives on `socket` until `wait` passes; returns the senders seen.
pub fn senders_within(socket: &UdpSocket, wait: Duration) -> Vec<SocketAddr> {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            seen.push(from);
        }
    }
    seen
}

/// An "internet" (198.18.0.0/24) with a server and two homes, each a host
/// behind its own NAT router:
/// - alice 192.168.1.10 behind `nat_a` (WAN 198.18.0.1),
/// - bob   192.168.2.10 behind `nat_b` (WAN 198.18.0.2).
pub struct TwoHomes {
    pub lab: Lab,
    pub server: Host,
    pub nat_a: Router,
    pub alice: Host,
    pub nat_b: Router,
    pub bob: Host,
}

pub fn two_homes(kind_a: NatKind, kind_b: NatKind) -> TwoHomes {
    let lab = lab();
    let internet = lab.add_switch("internet").expect("switch");
    let server = lab.add_host("server").expect("host");
    lab.connect(&server, &internet, &[&format!("{SERVER}/24")])
        .expect("connect server");
    let mut homes = Vec::new();
    for (i, (kind, user)) in [(kind_a, "alice"), (kind_b, "bob")].into_iter().enumerate() {
        let n = i + 1;
        let lan = lab.add_switch(&format!("lan-{user}")).expect("switch");
        let nat = lab
            .add_nat_router(
                &format!("nat-{user}"),
                &internet,
                &format!("198.18.0.{n}/24"),
                &lan,
                &format!("192.168.{n}.1/24"),
                kind,
            )
            .expect("router");
        let host = lab.add_host(user).expect("host");
        lab.connect(&host, &lan, &[&format!("192.168.{n}.10/24")])
            .expect("connect");
        host.set_default_route(nat.lan.ipv4().expect("lan v4"))
            .expect("route");
        homes.push((nat, host));
    }
    let (nat_b, bob) = homes.pop().expect("bob");
    let (nat_a, alice) = homes.pop().expect("alice");
    TwoHomes {
        lab,
        server,
        nat_a,
        alice,
        nat_b,
        bob,
    }
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

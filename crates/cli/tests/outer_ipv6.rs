#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Issue 20: IPv6 outer paths. The lab's internet gets IPv6 (2001:2::/48,
//! routed to each site without translation, behind the site routers'
//! stateful firewalls); devices bind one dual-stack socket and gather a
//! host candidate (and a relayed one) in each family they have.

use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions, Ipv6Internet};

fn start(ipv6: Ipv6Internet) -> Demo {
    let options = DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6,
    };
    Demo::start(options).unwrap_or_else(|e| panic!("the lab did not start: {e}"))
}

/// The first byte through access on the first packet, the time to the
/// direct path, then 4 MiB intact on it.
fn first_byte_then_direct(demo: &Demo) -> (Duration, Duration) {
    let started = Instant::now();
    demo.download(1024, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no first byte: {e}\n{}", demo.logs()));
    let first_byte = started.elapsed();
    demo.wait_for_path("direct", Duration::from_secs(5))
        .unwrap_or_else(|path| panic!("still {path}\n{}", demo.logs()));
    let direct = started.elapsed();
    demo.download(4 << 20, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("4 MiB on the direct path: {e}\n{}", demo.logs()));
    (first_byte, direct)
}

/// Both sites dual-stack (IPv4 behind NAT, IPv6 routed): the direct IPv6
/// pair wins, no NAT in its way.
#[test]
fn a_dual_stack_pair_goes_direct_over_ipv6() {
    let demo = start(Ipv6Internet::DualStack);
    let (first_byte, direct) = first_byte_then_direct(&demo);
    let peer = demo.path_detail("peer");
    println!(
        "dual-stack: first byte {} ms, direct in {} ms, to {peer}",
        first_byte.as_millis(),
        direct.as_millis()
    );
    assert!(
        peer.starts_with("[2001:2:20::11]:"),
        "the gateway's IPv6 address, not its IPv4 NAT: {peer}\n{}",
        demo.client_status().unwrap()
    );
}

/// An IPv6-only office: the gateway has no IPv4 route out and reaches the
/// portal (`https://[2001:2::2]:8080`) and the relay over IPv6; the
/// dual-stack client meets it directly over IPv6.
#[test]
fn an_ipv6_only_site_is_reached_directly() {
    let demo = start(Ipv6Internet::OfficeOnlyIpv6);
    let (first_byte, direct) = first_byte_then_direct(&demo);
    let peer = demo.path_detail("peer");
    println!(
        "IPv6-only office: first byte {} ms, direct in {} ms, to {peer}",
        first_byte.as_millis(),
        direct.as_millis()
    );
    assert!(peer.starts_with("[2001:2:20::11]:"), "{peer}");
    // The gateway gathered no IPv4 candidate: it has no IPv4 route out.
    let log = demo.gateway_processes[0].as_ref().unwrap().stderr();
    let start = log
        .lines()
        .find(|l| l.contains("gateway starting"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        start.contains("2001:2:20::11") && !start.contains("10.0.1."),
        "{start}"
    );
}

/// The IPv6-only office where the office router lets nothing from the
/// client's networks in, directly: the relay carries the tunnel over IPv6
/// (allocations made over IPv6 ask for an IPv6 relayed address; IPv4 ones,
/// the TURN default, would be useless to the gateway).
#[test]
fn an_ipv6_only_site_behind_a_closed_firewall_is_reached_through_the_relay() {
    let demo = start(Ipv6Internet::OfficeOnlyIpv6);
    demo.net
        .nat_office
        .host
        .nft(
            "table ip6 plab_closed {
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    ip6 saddr 2001:2:10::/64 drop
  }
}
",
        )
        .unwrap();
    let started = Instant::now();
    demo.download(4 << 20, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("4 MiB through the relay: {e}\n{}", demo.logs()));
    let took = started.elapsed();
    let (path, relay) = (demo.path(), demo.path_detail("relay"));
    println!(
        "IPv6-only office, closed: 4 MiB in {} ms, {path} through {relay}",
        took.as_millis()
    );
    assert_eq!(path, "relayed", "{}", demo.client_status().unwrap());
    assert!(
        relay.starts_with("[2001:2::3]:"),
        "through the relay's IPv6 address: {relay}"
    );
}

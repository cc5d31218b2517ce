#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! IPv6 inside the tunnel, end to end (issue 25). The lab's LANs are
//! dual-stack: the office on fd10::/64 (the web host is fd10::3 and
//! fd10::80), the laptop's home on fd20::/64, as on real networks; the
//! tunnel itself runs over IPv4. The demo offers the IPv6 resource
//! `fd10::3` and the DNS resource whose name has A and AAAA records.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::{DNS_NAME, Demo, WEB_V6};

const MIB: u64 = 1 << 20;

fn demo() -> Demo {
    support::demo(NatKind::Cone, NatKind::Cone, 1)
}

fn ip(demo: &Demo, args: &[&str]) -> String {
    demo.net
        .client
        .run("ip", args)
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

/// The `src` of `ip route get` for `destination` from the client.
fn route_source(demo: &Demo, destination: &str) -> IpAddr {
    let family = if destination.contains(':') {
        "-6"
    } else {
        "-4"
    };
    let route = ip(demo, &[family, "route", "get", destination]);
    assert!(route.contains("dev postern0"), "{route}");
    let mut words = route.split_whitespace();
    words
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no src in {route}"))
}

/// The client's tunnel addresses as the portal assigned them.
fn tunnel_addresses(demo: &Demo) -> (IpAddr, IpAddr) {
    let body = demo.api_ok("GET", "/api/v1/clients", None).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let client = &listed["data"][0];
    (
        client["ipv4"].as_str().unwrap().parse().unwrap(),
        client["ipv6"].as_str().unwrap().parse().unwrap(),
    )
}

#[test]
fn an_ipv6_resource_is_reached_from_the_tunnel_address_and_downloads_intact() {
    let demo = demo();
    let web: SocketAddr = WEB_V6.parse().unwrap();
    let took = demo
        .download_from(web, 8 * MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("8 MiB from {web} in {took:?}");
    // Every route names its source: the tunnel address of its family, not
    // the DNS stub's sentinel on the same interface, nor the home LAN's
    // fd20::10.
    let (v4, v6) = tunnel_addresses(&demo);
    assert_eq!(route_source(&demo, "fd10::3"), v6);
    assert_eq!(route_source(&demo, "10.0.1.80"), v4);
    // The sentinel is there to receive only: deprecated, never a source.
    let addresses = ip(&demo, &["-6", "-o", "addr", "show", "dev", "postern0"]);
    let sentinel = addresses
        .lines()
        .find(|l| l.contains("fd7e:5057:6e00:8000:100:100:111:1"))
        .unwrap_or_else(|| panic!("no sentinel: {addresses}"));
    assert!(sentinel.contains("deprecated"), "{sentinel}");
}

#[test]
fn an_ipv6_port_outside_the_filter_is_refused_at_once() {
    let demo = demo();
    // Something listens on 22, so only the filter can refuse it.
    let _ssh = demo
        .net
        .web
        .enter(|| std::net::TcpListener::bind("[fd10::3]:22"))
        .unwrap()
        .unwrap();
    let web: SocketAddr = WEB_V6.parse().unwrap();
    demo.download_from(web, 1024, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let ssh: SocketAddr = "[fd10::3]:22".parse().unwrap();
    let started = Instant::now();
    let refused = demo
        .net
        .client
        .enter(move || std::net::TcpStream::connect_timeout(&ssh, Duration::from_secs(3)))
        .unwrap();
    let after = started.elapsed();
    println!("port 22 over IPv6: {refused:?} in {after:?}");
    assert!(refused.is_err(), "port 22 must be refused");
    assert!(
        after < Duration::from_secs(1),
        "refused at once by ICMPv6, not timed out: {after:?}"
    );
}

#[test]
fn a_dns_resource_answers_aaaa_with_proxies_that_reach_the_office_over_ipv6() {
    let demo = demo();
    let v6 = demo
        .net
        .client
        .run("dig", &["+short", "+time=2", DNS_NAME, "AAAA"])
        .unwrap();
    let proxies: Vec<std::net::Ipv6Addr> = v6.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(proxies.len(), 4, "{v6}");
    let proxy = SocketAddr::from((proxies[0], 80));
    let took = demo
        .download_from(proxy, 4 * MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("4 MiB by name over IPv6 ({proxy}) in {took:?}");
}

#[test]
fn an_ipv6_cidr_resource_reaches_every_host_of_the_office_prefix() {
    let demo = demo();
    demo.add_resource(
        "Office LAN (IPv6)",
        "cidr",
        "fd10::/64",
        postern_lab::demo::WEB_FILTERS,
    )
    .unwrap();
    let web: SocketAddr = "[fd10::80]:80".parse().unwrap();
    let started = Instant::now();
    let took = loop {
        match demo.download_from(web, 2 * MIB, Duration::from_secs(5)) {
            Ok(took) => break took,
            Err(error) if started.elapsed() > Duration::from_secs(10) => {
                panic!("{error}\n{}", demo.logs())
            }
            // The client learns of the new resource a moment later.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    println!("2 MiB from {web} through the CIDR resource in {took:?}");
    let (_, v6) = tunnel_addresses(&demo);
    assert_eq!(route_source(&demo, "fd10::80"), v6);
}

/// Echo over IPv6 (the filter allows ICMP) with 1400-byte payloads, above
/// the tunnel's 1280-byte MTU: the client's kernel fragments the requests,
/// the gateway's kernel tells the web host "packet too big" for the
/// replies, and the web host fragments them from then on.
#[test]
fn large_ipv6_echoes_cross_the_tunnel_with_path_mtu_discovery() {
    let demo = demo();
    demo.download_from(WEB_V6.parse().unwrap(), 1024, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let small = demo
        .net
        .client
        .run("ping", &["-6", "-c", "2", "-W", "2", "fd10::3"])
        .unwrap_or_else(|e| panic!("small echo: {e}\n{}", demo.logs()));
    assert!(small.contains(" 0% packet loss"), "{small}");
    let output = demo
        .net
        .client
        .command("ping")
        .args([
            "-6", "-c", "4", "-i", "0.3", "-W", "2", "-s", "1400", "fd10::3",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    let received: u32 = text
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received")?.parse().ok())
        .unwrap_or(0);
    assert!(
        received >= 2,
        "large echoes answered: {text}\n{}",
        demo.logs()
    );
    let learnt = demo
        .net
        .web
        .run("ip", &["-6", "route", "get", "fd10::11"])
        .unwrap();
    assert!(
        learnt.contains("mtu 1280"),
        "the web host learnt the path MTU: {learnt}"
    );
}

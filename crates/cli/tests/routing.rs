#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Client routing that never breaks its host (issue 27), in the lab. Home
//! and office both use 192.168.1.0/24 (the most common router default) and
//! the office's is a resource. The client's routes live in a table of its
//! own behind policy rules: the host's main table is never touched, the
//! home router and the home DNS server stay on the LAN, the rest of the
//! prefix goes through the tunnel (or stays local with
//! `--local-networks-win`), and after a clean stop and after kill -9 plus
//! a restart and a stop, the routing tables and rules are byte for byte
//! what they were.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, WEB_FILTERS};
use postern_lab::{Host, NatKind};

/// The office host on the overlapping prefix.
const OFFICE_HOST: &str = "192.168.1.77";
/// The home's DNS server (on the home LAN, the client's upstream).
const HOME_DNS: &str = "192.168.1.53";
const HOME_ROUTER: &str = "192.168.1.1";

fn demo() -> Demo {
    support::demo(NatKind::Cone, NatKind::Cone, 1)
}

/// Routing state as `ip` prints it: every table and the rules, both
/// families.
fn routing(host: &Host) -> String {
    [
        host.run("ip", &["-4", "route", "show", "table", "all"]),
        host.run("ip", &["-6", "route", "show", "table", "all"]),
        host.run("ip", &["-4", "rule"]),
        host.run("ip", &["-6", "rule"]),
    ]
    .map(|out| out.unwrap())
    .join("\n")
}

/// The device `ip route get` picks for `destination` on the client.
fn device_for(demo: &Demo, destination: &str) -> String {
    let route = demo
        .net
        .client
        .run("ip", &["route", "get", destination])
        .unwrap();
    let mut words = route.split_whitespace();
    words
        .find(|w| *w == "dev")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no dev in {route}"))
        .to_string()
}

/// `(resource, local, winner)` of each overlap in the client's status.
fn overlaps(demo: &Demo) -> Vec<(String, String, String)> {
    let status: serde_json::Value = serde_json::from_str(&demo.client_status().unwrap()).unwrap();
    status["overlaps"]
        .as_array()
        .unwrap_or_else(|| panic!("no overlaps in {status}"))
        .iter()
        .map(|o| {
            let field = |key: &str| o[key].as_str().unwrap().to_string();
            (field("resource"), field("local"), field("winner"))
        })
        .collect()
}

fn pings(host: &Host, destination: &str) -> bool {
    host.run("ping", &["-c", "1", "-W", "1", destination])
        .is_ok()
}

/// The office gets a host on 192.168.1.0/24 (the gateway on-link with it),
/// the home a DNS server on its own 192.168.1.0/24.
fn overlapping_networks(demo: &Demo) -> postern_lab::dns::DnsServer {
    let gateway = &demo.net.gateways[0];
    gateway
        .ip(&["addr", "add", "192.168.1.5/24", "dev", "eth0"])
        .unwrap();
    demo.net
        .web
        .ip(&["addr", "add", &format!("{OFFICE_HOST}/24"), "dev", "eth0"])
        .unwrap();
    let home_dns = demo.net.lab.add_host("home-dns").unwrap();
    demo.net
        .lab
        .connect(&home_dns, &demo.net.home, &[&format!("{HOME_DNS}/24")])
        .unwrap();
    postern_lab::dns::DnsServer::start(
        &home_dns,
        format!("{HOME_DNS}:53").parse().unwrap(),
        &[("printer.home.test", "192.168.1.20".parse().unwrap())],
    )
    .unwrap()
}

fn until_download(demo: &Demo, from: SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        match demo.download_from(from, 1 << 20, Duration::from_secs(3)) {
            Ok(took) => return took,
            Err(error) if started.elapsed() > Duration::from_secs(10) => {
                panic!("{error}\n{}", demo.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn an_office_resource_on_the_home_prefix_leaves_the_hosts_path_and_tables_intact() {
    let mut demo = demo();
    let _home_dns = overlapping_networks(&demo);
    demo.add_resource("Office LAN", "cidr", "192.168.1.0/24", WEB_FILTERS)
        .unwrap();
    demo.stop_client().unwrap();
    let before = routing(&demo.net.client);

    let upstream = format!("--dns-upstream={HOME_DNS}");
    demo.start_client(&[&upstream]).unwrap();
    let office: SocketAddr = format!("{OFFICE_HOST}:80").parse().unwrap();
    let took = until_download(&demo, office);
    println!("1 MiB from the office's {OFFICE_HOST} through the tunnel in {took:?}");
    // The host's own path stays on the LAN.
    assert_eq!(device_for(&demo, HOME_ROUTER), "eth0");
    assert_eq!(device_for(&demo, HOME_DNS), "eth0");
    assert!(
        pings(&demo.net.client, HOME_ROUTER),
        "the home router answers"
    );
    let printer = demo
        .net
        .client
        .run(
            "dig",
            &[
                "+short",
                "+time=2",
                &format!("@{HOME_DNS}"),
                "printer.home.test",
            ],
        )
        .unwrap();
    assert_eq!(
        printer.trim(),
        "192.168.1.20",
        "the home DNS server answers"
    );
    assert_eq!(
        device_for(&demo, "192.168.1.20"),
        "postern0",
        "the rest: the tunnel"
    );
    // The main table is the host's: nothing of ours in it.
    let main = demo
        .net
        .client
        .run("ip", &["route", "show", "table", "main"])
        .unwrap();
    assert!(!main.contains("postern0"), "{main}");
    assert_eq!(
        overlaps(&demo),
        vec![(
            "192.168.1.0/24".to_string(),
            "192.168.1.0/24".to_string(),
            "tunnel".to_string()
        )]
    );

    // A clean stop leaves the tables and rules as they were.
    demo.stop_client().unwrap();
    assert_eq!(routing(&demo.net.client), before, "after a clean stop");
    assert!(pings(&demo.net.client, HOME_ROUTER));

    // Killed, its rules and throw routes stay; the next run removes them.
    demo.start_client(&[&upstream]).unwrap();
    until_download(&demo, office);
    demo.kill_client().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        routing(&demo.net.client),
        before,
        "kill -9 leaves its rules"
    );
    demo.start_client(&[&upstream]).unwrap();
    until_download(&demo, office);
    demo.stop_client().unwrap();
    assert_eq!(
        routing(&demo.net.client),
        before,
        "after kill -9, a restart and a stop"
    );
}

#[test]
fn with_local_networks_winning_the_overlap_stays_on_the_lan() {
    let mut demo = demo();
    let _home_dns = overlapping_networks(&demo);
    demo.add_resource("Office LAN", "cidr", "192.168.1.0/24", WEB_FILTERS)
        .unwrap();
    demo.stop_client().unwrap();
    demo.start_client(&["--local-networks-win"]).unwrap();
    // The rest of the resources still go through the tunnel.
    demo.download(1 << 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(device_for(&demo, OFFICE_HOST), "eth0");
    assert_eq!(device_for(&demo, "192.168.1.20"), "eth0");
    assert_eq!(
        overlaps(&demo),
        vec![(
            "192.168.1.0/24".to_string(),
            "192.168.1.0/24".to_string(),
            "local".to_string()
        )]
    );
}

#[test]
fn resources_equal_to_inside_and_around_the_home_prefix_route_as_decided() {
    let demo = demo();
    // Inside: only the /26 goes through the tunnel.
    demo.add_resource("Office quarter", "cidr", "192.168.1.64/26", WEB_FILTERS)
        .unwrap();
    // Around: the /16 goes through the tunnel, the home's own path stays.
    demo.add_resource("Office campus", "cidr", "192.168.0.0/16", WEB_FILTERS)
        .unwrap();
    let started = Instant::now();
    while device_for(&demo, "192.168.200.1") != "postern0" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no route for the /16"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(device_for(&demo, "192.168.1.77"), "postern0");
    assert_eq!(device_for(&demo, "192.168.1.20"), "postern0");
    assert_eq!(
        device_for(&demo, HOME_ROUTER),
        "eth0",
        "the default gateway stays"
    );
    assert_eq!(device_for(&demo, "198.18.0.2"), "eth0", "the portal stays");
    let mut found: Vec<String> = overlaps(&demo).into_iter().map(|o| o.0).collect();
    found.sort();
    assert_eq!(found, ["192.168.0.0/16", "192.168.1.64/26"]);
}

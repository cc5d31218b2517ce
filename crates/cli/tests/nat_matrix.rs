#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Issue 20: the NAT kinds a deployment meets, every pair of them between
//! the client's network and the gateway's, with real Linux NAT routers and
//! an ISP's router between each site and the internet. Every pair
//! connects; the path is direct wherever theory allows it and relayed
//! otherwise; the time to the first byte (access on the first packet,
//! ICE, the WireGuard handshake and the download) and to the direct path
//! is printed for each cell.
//!
//! Theory: a direct path needs one side's checks to pass the other side's
//! NAT. A port-restricted NAT (plain, with an open WAN, doubled behind a
//! carrier's) lets in only the address and port its host sent to; a
//! symmetric NAT maps each destination to a fresh port nobody can predict.
//! So a symmetric NAT goes direct only with an open or full-cone peer
//! (which takes its checks from any port, and whose answers then pass the
//! symmetric NAT's mapping for them), and two symmetric NATs never do;
//! every other pair goes direct once both sides have sent (the openers and
//! the held checks of `postern-tunnel`'s node make the first packet at each
//! router an outgoing one, which open-WAN routers need).

mod support;

use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions};

const KINDS: [(NatKind, &str); 6] = [
    (NatKind::Routed, "open"),
    (NatKind::FullCone, "full cone"),
    (NatKind::Cone, "port-restricted"),
    (NatKind::ConeOpenWan, "port-restr., open WAN"),
    (NatKind::Symmetric, "symmetric"),
    (NatKind::Double, "double NAT"),
];

fn expect_direct(home: NatKind, office: NatKind) -> bool {
    let takes_any_port = |kind| matches!(kind, NatKind::Routed | NatKind::FullCone);
    match (home, office) {
        (NatKind::Symmetric, other) | (other, NatKind::Symmetric) => takes_any_port(other),
        _ => true,
    }
}

struct Cell {
    path: String,
    first_byte: Duration,
    direct_after: Option<Duration>,
}

fn start(home: NatKind, office: NatKind, client_in_office: bool) -> Demo {
    let options = DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: home,
        office_nat: office,
        gateways: 1,
        client_in_office,
        ipv6: Default::default(),
    };
    Demo::start(options).unwrap_or_else(|e| panic!("the lab did not start: {e}"))
}

/// The first download (1 KiB, through access on the first packet), then
/// the path once it settled.
fn measure(demo: &Demo, direct_expected: bool) -> Cell {
    let started = Instant::now();
    demo.download(1024, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no first byte: {e}\n{}", demo.logs()));
    let first_byte = started.elapsed();
    let settled = if direct_expected {
        demo.wait_for_path("direct", Duration::from_secs(5))
    } else {
        // Relayed: it must stay so (a "direct" that cannot work would be a
        // bug in the status, or in the theory).
        std::thread::sleep(Duration::from_secs(2));
        Err(demo.path())
    };
    let (path, direct_after) = match settled {
        Ok(_) => ("direct".to_string(), Some(started.elapsed())),
        Err(path) => (path, None),
    };
    // The path carries data, whichever it is.
    demo.download(256 * 1024, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("on the {path} path: {e}\n{}", demo.logs()));
    Cell {
        path,
        first_byte,
        direct_after,
    }
}

fn show(cell: &Cell) -> String {
    let direct = cell
        .direct_after
        .map(|d| format!("direct in {} ms", d.as_millis()))
        .unwrap_or_else(|| cell.path.clone());
    format!("{} ms to first byte, {direct}", cell.first_byte.as_millis())
}

#[test]
fn every_pair_of_nat_kinds_connects_directly_where_theory_allows() {
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (home, home_name) in KINDS {
        for (office, office_name) in KINDS {
            let demo = start(home, office, false);
            let expected = expect_direct(home, office);
            let cell = measure(&demo, expected);
            let want = if expected { "direct" } else { "relayed" };
            let line = format!(
                "client {home_name:>22} | gateway {office_name:>22} | {}",
                show(&cell)
            );
            println!("{line}");
            if cell.path != want {
                failures.push(format!("{line} (expected {want})\n{}", demo.logs()));
            }
            table.push(line);
        }
    }
    println!("\nNAT matrix:\n{}", table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Both behind the office's NAT (hairpin): the host candidates win, the
/// NAT never sees the traffic.
#[test]
fn a_client_behind_the_gateways_own_nat_goes_direct_on_the_lan() {
    let mut failures = Vec::new();
    let demo = start(NatKind::Cone, NatKind::Cone, true);
    let cell = measure(&demo, true);
    let status = demo.client_status().unwrap();
    assert!(
        status.contains("\"peer\": \"10.0.1.11:"),
        "the path is the gateway's host address: {status}"
    );
    let line = format!(
        "client and gateway behind one port-restricted NAT        | {}",
        show(&cell)
    );
    println!("{line}");
    if cell.path != "direct" {
        failures.push(format!("{line} (expected direct)\n{}", demo.logs()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Drops UDP (and `blocked` TCP ports) at the home router, restarts the
/// client, downloads; the client's log and how long the first 1 MiB took.
fn without_udp(blocked: &[u16]) -> (Demo, String) {
    let mut demo = start(NatKind::Cone, NatKind::Cone, false);
    demo.stop_client().unwrap();
    demo.net.nat_home.block_udp().unwrap();
    for port in blocked {
        demo.net.nat_home.block_tcp_port(*port).unwrap();
    }
    demo.start_client(&[]).unwrap();
    let started = Instant::now();
    demo.download(1 << 20, Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("no download without UDP: {e}\n{}", demo.logs()));
    println!(
        "without UDP (TCP {blocked:?} blocked too): 1 MiB after {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(demo.path(), "relayed");
    let log = demo.client_process.as_ref().unwrap().stderr();
    (demo, log)
}

/// A network that lets only TCP out (UDP dropped at the home router): the
/// client reaches the relay over TLS on 443 (TURN over TLS, the relay's
/// certificate checked against the portal's CA), and the download runs
/// relayed through it.
#[test]
fn a_client_whose_network_drops_udp_downloads_over_turn_tls() {
    let (demo, log) = without_udp(&[]);
    assert!(
        log.contains("TURN over TLS: connected to the relay"),
        "{log}"
    );
    // And it carries more than a first packet.
    let took = demo.download(16 << 20, Duration::from_secs(60)).unwrap();
    println!(
        "16 MiB over TURN/TLS in {} ms ({:.0} Mbit/s)",
        took.as_millis(),
        134.217_728 / took.as_secs_f64()
    );
}

/// A laptop that leaves the UDP-blocking network for a cafe that lets UDP
/// out goes back to UDP for the relay, and direct to the gateway.
#[test]
fn a_client_that_leaves_a_udp_blocking_network_goes_back_to_udp() {
    let (demo, _) = without_udp(&[]);
    let cafe = demo.add_cafe(NatKind::Cone).unwrap();
    demo.move_client_to(&cafe).unwrap();
    let took = demo
        .wait_for_path("direct", Duration::from_secs(20))
        .unwrap_or_else(|path| panic!("still {path}\n{}", demo.logs()));
    println!("direct {} ms after the move to the cafe", took.as_millis());
    let log = demo.client_process.as_ref().unwrap().stderr();
    assert!(log.contains("back to UDP for the relay"), "{log}");
    demo.download(1 << 20, Duration::from_secs(10)).unwrap();
}

/// The same where 443 is closed too: TURN over TCP on the relay's port.
#[test]
fn a_client_whose_network_drops_udp_and_443_downloads_over_turn_tcp() {
    let (demo, log) = without_udp(&[443]);
    assert!(
        log.contains("TURN over TCP: connected to the relay"),
        "{log}"
    );
    let took = demo.download(16 << 20, Duration::from_secs(60)).unwrap();
    println!(
        "16 MiB over TURN/TCP in {} ms ({:.0} Mbit/s)",
        took.as_millis(),
        134.217_728 / took.as_secs_f64()
    );
}

/// Relays by measured round trip: with the first relay far away (40 ms
/// more each way) and a second one near, a relayed path (symmetric NATs on
/// both sides) goes through the near one, whatever order the portal lists
/// them in; when the near one dies, the far one takes over.
#[test]
fn the_nearest_relay_carries_a_relayed_path_and_the_other_takes_over() {
    let mut demo = start(NatKind::Symmetric, NatKind::Symmetric, false);
    demo.stop_client().unwrap();
    demo.delay_relay(Duration::from_millis(40)).unwrap();
    demo.add_relay("198.18.0.5", Duration::ZERO).unwrap();
    // The gateway hears of the second relay and allocates on it.
    std::thread::sleep(Duration::from_secs(2));
    demo.start_client(&[]).unwrap();
    demo.download(1 << 20, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let relay_of = |demo: &Demo| -> String {
        let status: serde_json::Value =
            serde_json::from_str(&demo.client_status().unwrap()).unwrap();
        status["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|r| r["relay"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let near = relay_of(&demo);
    println!("relayed through {near}");
    // Our relay server, or the gateway's allocation on it (a path from our
    // own socket to the gateway's relayed candidate): the near relay's IP.
    assert!(
        near.starts_with("198.18.0.5:"),
        "{}",
        demo.client_status().unwrap()
    );
    // The near relay dies: the far one carries on.
    let relay_2 = demo.processes.last_mut().unwrap();
    relay_2.kill().unwrap();
    let started = Instant::now();
    loop {
        if demo.download(64 * 1024, Duration::from_secs(2)).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no path after the near relay died\n{}",
            demo.logs()
        );
    }
    println!(
        "through the far relay {} ms after the near one died",
        started.elapsed().as_millis()
    );
    let far = relay_of(&demo);
    assert!(far.starts_with("198.18.0.3:"), "{far}");
}

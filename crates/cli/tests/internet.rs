#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Issue 19, SPEC 7.4: the internet resource. A "public" host on the
//! internet segment (outside both sites) tells whom it sees: the office
//! NAT's address while the internet resource is on, the home NAT's when it
//! is off or the host is excluded. The portal and the relay stay on the
//! host's own path, so does the client's own LAN, and turning the internet
//! resource off puts the routing table back byte for byte.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, DemoOptions};
use postern_lab::{Host, NatKind};

/// The public host's "whoami" service: answers each connection with the
/// peer address it saw.
const WHOAMI: &str = "198.18.0.40:7070";
const PUBLIC: &str = "198.18.0.40";
/// The sites' NATs as the internet sees them.
const OFFICE_NAT: &str = "198.18.20.2";
const HOME_NAT: &str = "198.18.10.2";

fn whoami_server(host: &Host) {
    let host = host.clone();
    std::thread::spawn(move || {
        let _ = host.enter(|| {
            let listener = TcpListener::bind(WHOAMI).unwrap();
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let peer = stream.peer_addr().map(|p| p.ip().to_string());
                let _ = stream.write_all(peer.unwrap_or_default().as_bytes());
            }
        });
    });
}

/// Whom the public host sees when the client connects (retried while
/// access is being set up).
fn seen_from_client(demo: &Demo) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = demo
            .net
            .client
            .enter(|| -> std::io::Result<String> {
                let address: SocketAddr = WHOAMI.parse().unwrap();
                let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
                stream.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            })
            .unwrap();
        match seen {
            Ok(text) if !text.is_empty() => return text,
            _ if Instant::now() > deadline => {
                panic!("the public host never answered\n{}", demo.logs())
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The device a packet to `to` leaves the client by.
fn route_device(demo: &Demo, to: &str) -> String {
    let route = demo.net.client.ip(&["route", "get", to]).unwrap();
    route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn routing_state(demo: &Demo) -> String {
    let mut state = String::new();
    for family in ["-4", "-6"] {
        state += &demo.net.client.ip(&[family, "rule", "show"]).unwrap();
        state += &demo
            .net
            .client
            .ip(&[family, "route", "show", "table", "all"])
            .unwrap();
    }
    state
}

fn internet(demo: &Demo, state: &str) -> String {
    let state_dir = demo.data_dir().join("client");
    demo.net
        .client
        .run(
            demo.options.postern.to_str().unwrap(),
            &[
                "client",
                "internet",
                state,
                "--state-dir",
                state_dir.to_str().unwrap(),
                "--status-socket",
                demo.status_socket().to_str().unwrap(),
            ],
        )
        .unwrap()
}

fn wait_for_internet(demo: &Demo, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&demo.client_status().unwrap()).unwrap();
        if status["internet"] == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "internet never {expected}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_internet_resource_carries_everything_but_the_local_network_and_its_exclusions() {
    let demo = Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })
    .unwrap_or_else(|e| panic!("the lab did not start: {e}"));
    // A host of its own on the internet segment (not the client's DNS
    // server, which stays on the host's path like any resolver it uses).
    let public = demo.net.lab.add_host("public").unwrap();
    demo.net
        .lab
        .connect(&public, &demo.net.internet, &[&format!("{PUBLIC}/24")])
        .unwrap();
    demo.net.route_to_sites(&public).unwrap();
    whoami_server(&public);
    assert_eq!(seen_from_client(&demo), HOME_NAT, "before: the home NAT");
    let before = routing_state(&demo);

    let (resource, _) = demo.add_resource("Internet", "internet", "", "[]").unwrap();
    wait_for_internet(&demo, "on");
    assert_eq!(route_device(&demo, PUBLIC), "postern0");
    let started = Instant::now();
    assert_eq!(seen_from_client(&demo), OFFICE_NAT, "through the office");
    println!(
        "the public host saw the office NAT {} ms after the first connection",
        started.elapsed().as_millis()
    );
    // The portal, the relay, the home router and the home LAN stay local.
    for local in ["198.18.0.2", "198.18.0.3", "192.168.1.1", "192.168.1.77"] {
        assert_ne!(route_device(&demo, local), "postern0", "{local}");
    }
    let home_router: IpAddr = "192.168.1.1".parse().unwrap();
    let reply = demo
        .net
        .client
        .run("ping", &["-c1", "-W2", &home_router.to_string()]);
    assert!(reply.is_ok(), "the home router answers: {reply:?}");
    // Still connected to the portal: it stayed on the host's path.
    assert!(
        demo.client_status()
            .unwrap()
            .contains("\"connected\": true")
    );
    // Names are resolved at the office now: the office's resolver knows
    // internal.corp.test, the client's own (public) one does not.
    let dig = |name: &str| {
        demo.net
            .client
            .run("dig", &["+short", "+time=3", "@100.100.111.1", name, "A"])
            .unwrap()
    };
    assert_eq!(dig("internal.corp.test").trim(), "10.0.1.80");

    // Excluded: the host's own path again.
    demo.api_ok(
        "PATCH",
        &format!("/api/v1/resources/{resource}"),
        Some(r#"{"exclusions":["198.18.0.40/32"]}"#),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while route_device(&demo, PUBLIC) == "postern0" {
        assert!(Instant::now() < deadline, "the exclusion never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen_from_client(&demo), HOME_NAT, "excluded");
    demo.api_ok(
        "PATCH",
        &format!("/api/v1/resources/{resource}"),
        Some(r#"{"exclusions":[]}"#),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while route_device(&demo, PUBLIC) != "postern0" {
        assert!(Instant::now() < deadline, "the exclusion never went");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen_from_client(&demo), OFFICE_NAT);

    // Off: the home NAT again, and the routing table as it was.
    let said = internet(&demo, "off");
    assert!(said.contains("internet resource: off"), "{said}");
    assert_eq!(seen_from_client(&demo), HOME_NAT, "turned off");
    assert_eq!(
        dig("internal.corp.test").trim(),
        "",
        "the public resolver again"
    );
    assert_eq!(routing_state(&demo), before, "the routing table as before");
    // Remembered: a restarted client keeps it off; on again, through the
    // office.
    let mut demo = demo;
    demo.stop_client().unwrap();
    demo.start_client(&[]).unwrap();
    wait_for_internet(&demo, "off");
    let said = internet(&demo, "on");
    assert!(said.contains("internet resource: on"), "{said}");
    assert_eq!(seen_from_client(&demo), OFFICE_NAT);
}

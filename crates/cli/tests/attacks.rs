#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The kernel parts of enforcement, played from the attacker's side in the
//! lab (real `postern` processes in network namespaces): a host behind the
//! gateway reaching for a client, a neighbour on the client's LAN asking
//! its DNS stub, a gateway that stops or dies. The tunnel's own rules are
//! played in `crates/tunnel/tests/enforcement.rs` on the simulated network.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use postern_lab::demo::{Demo, DemoOptions, WEB, WEB_V6};
use postern_lab::{Host, NatKind};

fn demo(gateways: usize) -> Demo {
    demo_behind(NatKind::Cone, gateways)
}

fn demo_behind(nat: NatKind, gateways: usize) -> Demo {
    match Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: nat,
        office_nat: nat,
        gateways,
        client_in_office: false,
        ipv6: Default::default(),
    }) {
        Ok(demo) => demo,
        Err(error) => panic!("the lab did not start: {error}"),
    }
}

/// A small download through the tunnel, retried for a while (the client
/// may be moving to a restarted gateway).
fn download(demo: &Demo) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match demo.download(1024, Duration::from_secs(2)) {
            Ok(_) => return,
            Err(error) if std::time::Instant::now() > deadline => {
                panic!("{error}\n{}", demo.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The client's status document.
fn status(demo: &Demo) -> serde_json::Value {
    let text = demo.client_status().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The value of one sample in Prometheus text (0 when absent: a counter
/// with no events yet is not printed).
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).map(str::trim))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn gateway_metrics(demo: &Demo) -> String {
    demo.scrape(&demo.net.gateways[0], "10.0.1.11:9100")
        .unwrap()
}

/// The nftables tables in `host`.
fn tables(host: &Host) -> String {
    host.run("nft", &["list", "tables"]).unwrap()
}

fn sysctl(host: &Host, key: &str) -> String {
    host.run("sysctl", &["-n", key]).unwrap().trim().to_string()
}

/// A TCP connection from `host` to `to`, and whether the listener saw it.
fn tcp_reaches(host: &Host, to: SocketAddr, listener: &TcpListener) -> bool {
    let connected = host
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        .unwrap();
    let accepted = listener.accept().is_ok();
    connected.is_ok() || accepted
}

/// Datagrams from `host` to `to`, and whether `socket` got one.
fn udp_reaches(host: &Host, to: SocketAddr, socket: &UdpSocket) -> bool {
    host.enter(move || {
        let sender = match to {
            SocketAddr::V4(_) => UdpSocket::bind("0.0.0.0:0")?,
            SocketAddr::V6(_) => UdpSocket::bind("[::]:0")?,
        };
        for _ in 0..5 {
            sender.send_to(b"knock knock", to)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok::<_, std::io::Error>(())
    })
    .unwrap()
    .unwrap();
    let mut buffer = [0u8; 64];
    socket.recv_from(&mut buffer).is_ok()
}

/// A host behind the gateway that routes the clients' range (`range`,
/// of the family of `family`) to the gateway (`via`) tries to open TCP and
/// UDP toward the client's tunnel address of that family; `resource` is
/// the web server's address of that family.
fn host_behind_the_gateway_cannot_reach_the_client(
    family: &str,
    range: &str,
    via: &str,
    resource: &str,
) {
    let demo = demo(1);
    download(&demo);
    let tunnel: IpAddr = status(&demo)["addresses"][family]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no tunnel address in {}", status(&demo)));
    // A service on the laptop, listening on every address of both
    // families (as most do).
    let (listener, datagrams) = demo
        .net
        .client
        .enter(|| {
            let listener = TcpListener::bind("[::]:8080")?;
            listener.set_nonblocking(true)?;
            let datagrams = UdpSocket::bind("[::]:8081")?;
            datagrams.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok::<_, std::io::Error>((listener, datagrams))
        })
        .unwrap()
        .unwrap();
    // The resource host routes the clients' range to the gateway.
    let web = &demo.net.web;
    web.add_route(range, via.parse().unwrap()).unwrap();
    let tcp = SocketAddr::new(tunnel, 8080);
    let udp = SocketAddr::new(tunnel, 8081);

    let unsolicited = |demo: &Demo| {
        metric(
            &gateway_metrics(demo),
            "postern_packets_dropped_total{role=\"gateway\",reason=\"unsolicited\"}",
        )
    };

    // The gateway's forward filter stops it in the kernel: the tunnel never
    // sees these packets.
    let before = unsolicited(&demo);
    assert!(!tcp_reaches(web, tcp, &listener), "TCP reached the client");
    assert!(!udp_reaches(web, udp, &datagrams), "UDP reached the client");
    assert_eq!(
        unsolicited(&demo),
        before,
        "the kernel let them through to the tunnel"
    );

    // Its firewall flushed (as `nft flush ruleset` or a firewall manager
    // does): the tunnel still delivers only what the client opened.
    let table = tables(&demo.net.gateways[0])
        .lines()
        .find_map(|line| line.strip_prefix("table inet postern_").map(str::to_string))
        .unwrap_or_else(|| panic!("no postern table on the gateway"));
    demo.net.gateways[0]
        .nft(&format!("delete table inet postern_{table}\n"))
        .unwrap();
    assert!(!tcp_reaches(web, tcp, &listener), "TCP reached the client");
    assert!(!udp_reaches(web, udp, &datagrams), "UDP reached the client");
    let after = unsolicited(&demo);
    assert!(
        after > before,
        "the tunnel did not count the unsolicited packets ({before} -> {after})"
    );
    // What the client opened still flows (the host routes this family's
    // replies to the gateway itself now that nothing masquerades them).
    let resource: SocketAddr = resource.parse().unwrap();
    demo.download_from(resource, 1024, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
}

#[test]
fn a_host_behind_the_gateway_cannot_open_connections_to_the_client() {
    host_behind_the_gateway_cannot_reach_the_client("ipv4", "100.64.0.0/11", "10.0.1.11", WEB);
}

#[test]
fn a_host_behind_the_gateway_cannot_open_connections_to_the_client_over_ipv6() {
    host_behind_the_gateway_cannot_reach_the_client(
        "ipv6",
        "fd7e:5057:6e00::/48",
        "fd10::11",
        WEB_V6,
    );
}

#[test]
fn a_neighbour_on_the_clients_lan_gets_no_answer_from_its_dns_stub() {
    let demo = demo(1);
    download(&demo);
    let neighbour = demo.net.lab.add_host("neighbour").unwrap();
    demo.net
        .lab
        .connect(&neighbour, &demo.net.home, &["192.168.1.20/24"])
        .unwrap();
    // The neighbour routes the stub's address to the laptop.
    neighbour
        .add_route("100.100.111.1/32", "192.168.1.10".parse().unwrap())
        .unwrap();
    let question = [
        "@100.100.111.1",
        "web.apps.corp.test",
        "+time=1",
        "+tries=1",
        "+short",
    ];
    let asked = |host: &Host| host.run("dig", &question);
    // The laptop itself is answered.
    let answer = asked(&demo.net.client).unwrap();
    assert!(
        !answer.trim().is_empty(),
        "the stub did not answer its host"
    );
    assert!(
        asked(&neighbour).is_err(),
        "the neighbour got an answer from the client's stub"
    );
    // The guard is what stops it: without its table the neighbour is
    // answered (so the lab above really routes to the stub).
    let table = tables(&demo.net.client)
        .lines()
        .find_map(|line| line.strip_prefix("table inet ").map(str::to_string))
        .filter(|name| name.ends_with("_stub"))
        .unwrap_or_else(|| panic!("no stub table on the client"));
    demo.net
        .client
        .nft(&format!("delete table inet {table}\n"))
        .unwrap();
    assert!(
        asked(&neighbour).is_ok(),
        "without the guard the neighbour should be answered: the test routes nothing"
    );
}

#[test]
fn the_gateway_puts_forwarding_back_and_removes_its_table_when_it_stops() {
    let mut demo = demo(1);
    download(&demo);
    let host = demo.net.gateways[0].clone();
    // Killed, it cannot clean up; what it left is replaced at the next start.
    demo.kill_gateway(0).unwrap();
    assert!(tables(&host).contains("postern_"), "{}", tables(&host));
    host.sysctl("net.ipv4.ip_forward", "0").unwrap();
    host.sysctl("net.ipv6.conf.all.forwarding", "0").unwrap();
    let restarted = demo.spawn_gateway(0).unwrap();
    demo.gateway_processes[0] = Some(restarted);
    demo.wait_for_gateways(1, Duration::from_secs(20)).unwrap();
    download(&demo);
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&host, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        tables(&host).matches("postern_").count(),
        1,
        "{}",
        tables(&host)
    );
    demo.stop_gateway(0).unwrap();
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&host, "net.ipv6.conf.all.forwarding"), "0");
    assert!(!tables(&host).contains("postern_"), "{}", tables(&host));
}

/// Clients the gateway holds an authorization for, from its metrics.
fn authorized_clients(demo: &Demo) -> u64 {
    let text = gateway_metrics(demo);
    let sample = "postern_authorized_clients{role=\"gateway\"}";
    assert!(text.contains(sample), "no {sample} in:\n{text}");
    metric(&text, sample)
}

/// How long until the gateway holds no authorization (at most `limit`).
fn until_gateway_forgets(demo: &Demo, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if authorized_clients(demo) == 0 {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn delete_policy(demo: &Demo) {
    demo.api_ok(
        "DELETE",
        &format!("/api/v1/policies/{}", demo.setup.policy_id),
        None,
    )
    .unwrap();
}

#[test]
fn after_a_portal_restart_a_deleted_policy_still_reaches_the_gateway() {
    let mut demo = demo(1);
    download(&demo);
    assert_eq!(authorized_clients(&demo), 1);
    demo.kill_portal().unwrap();
    demo.restart_portal().unwrap();
    // The restarted portal knows the grant from its store: while the
    // devices reconnect the client's access goes on without a break (each
    // download must work at its first try), and the gateway keeps it.
    let reconnecting = std::time::Instant::now();
    while reconnecting.elapsed() < Duration::from_secs(4) {
        demo.download(1024, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("a break in access: {e}\n{}", demo.logs()));
        std::thread::sleep(Duration::from_millis(50));
    }
    demo.wait_for_gateways(1, Duration::from_secs(20)).unwrap();
    assert_eq!(authorized_clients(&demo), 1, "{}", demo.logs());
    delete_policy(&demo);
    let gone = until_gateway_forgets(&demo, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the gateway kept the authorization\n{}", demo.logs()));
    println!("the gateway dropped the authorization {gone:?} after the policy was deleted");
    assert!(gone < Duration::from_secs(1), "{gone:?}");
}

#[test]
fn a_revocation_lost_on_a_dead_channel_is_applied_when_the_gateway_reconnects() {
    let demo = demo(1);
    download(&demo);
    assert_eq!(authorized_clients(&demo), 1);
    let gateway = &demo.net.gateways[0];
    // The gateway's channel goes silent both ways (a NAT dropped its
    // mapping, a link died): nothing the portal sends arrives.
    gateway
        .nft(
            "table inet cut {\n  chain output {\n    type filter hook output priority filter; policy accept;\n    ip daddr 198.18.0.2 tcp dport 8080 drop\n  }\n  chain input {\n    type filter hook input priority filter; policy accept;\n    ip saddr 198.18.0.2 tcp sport 8080 drop\n  }\n}\n",
        )
        .unwrap();
    delete_policy(&demo);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        authorized_clients(&demo),
        1,
        "the revocation crossed a cut channel: this test no longer tests reconnection"
    );
    // When the gateway gives up on the dead channel, the way opens again.
    let process = demo.gateway_processes[0].as_ref().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !process.stderr().contains("portal connection lost") {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never noticed\n{}",
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway.nft("delete table inet cut\n").unwrap();
    let gone = until_gateway_forgets(&demo, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the gateway kept the authorization\n{}", demo.logs()));
    println!("the gateway dropped the authorization {gone:?} after its channel came back");
}

/// Live allocations on the relay, from its metrics.
fn relay_allocations(demo: &Demo) -> u64 {
    let text = demo.scrape(&demo.net.relay, "198.18.0.3:9100").unwrap();
    let sample = "postern_relay_allocations ";
    assert!(text.contains(sample), "no {sample} in:\n{text}");
    metric(&text, sample.trim_end())
}

#[test]
fn a_deleted_client_that_keeps_its_relay_allocation_is_cut_off_by_the_relay() {
    // Symmetric NATs on both sides: the only path is through the relay.
    let demo = demo_behind(NatKind::Symmetric, 1);
    download(&demo);
    if let Err(path) = demo.wait_for_path("relayed", Duration::from_secs(10)) {
        panic!("the path is {path}, not relayed\n{}", demo.logs());
    }
    let before = relay_allocations(&demo);
    assert!(before >= 1, "no allocation on the relay");
    // The client turns malicious: it ignores what the portal says and holds
    // on to its allocation (a stopped process releases nothing).
    let client = demo.client_process.as_ref().unwrap();
    client.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    let clients = demo.api_ok("GET", "/api/v1/clients", None).unwrap();
    let clients: serde_json::Value = serde_json::from_str(&clients).unwrap();
    let id = clients["data"][0]["id"].as_str().unwrap().to_string();
    demo.api_ok("DELETE", &format!("/api/v1/clients/{id}"), None)
        .unwrap();
    let deleted = std::time::Instant::now();
    let mut after = before;
    while deleted.elapsed() < Duration::from_secs(5) && after >= before {
        std::thread::sleep(Duration::from_millis(20));
        after = relay_allocations(&demo);
    }
    let took = deleted.elapsed();
    client.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        after < before,
        "the relay still serves the deleted client ({after} allocations)\n{}",
        demo.logs()
    );
    println!(
        "the relay ended the deleted client's allocation {took:?} after the deletion ({before} -> {after})"
    );
}

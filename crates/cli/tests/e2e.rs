#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! End to end in the lab (issue 6): real `postern` processes in network
//! namespaces behind NAT routers, configured through the REST API. Each
//! test builds its own lab and removes it (also when it fails).

use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, DemoOptions};
use postern_lab::{Impairment, NatKind};

const MIB: u64 = 1 << 20;

fn demo(home: NatKind, office: NatKind, gateways: usize) -> Demo {
    match Demo::start(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: home,
        office_nat: office,
        gateways,
        client_in_office: false,
        ipv6: Default::default(),
    }) {
        Ok(demo) => demo,
        Err(error) => panic!("the lab did not start: {error}"),
    }
}

fn download(demo: &Demo, size: u64) -> Duration {
    demo.download(size, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()))
}

/// The path once it settled on `expected` (within 10 s), else the last one:
/// ICE may nominate the relayed pair first and move to the direct one when
/// its checks come through.
fn path_of(demo: &Demo, expected: &str) -> String {
    match demo.wait_for_path(expected, Duration::from_secs(10)) {
        Ok(_) => expected.to_string(),
        Err(path) => path,
    }
}

fn assert_quiet_logs(demo: &Demo) {
    let problems = demo.problems();
    assert!(
        problems.is_empty(),
        "WARN/ERROR lines:\n{}",
        problems.join("\n")
    );
}

/// Polls small downloads until one works; how long that took.
fn until_downloads_work(demo: &Demo, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if demo.download(1024, Duration::from_millis(300)).is_ok() {
            return Some(started.elapsed());
        }
    }
    None
}

fn mbit_per_s(size: u64, took: Duration) -> f64 {
    size as f64 * 8.0 / took.as_secs_f64() / 1e6
}

#[test]
fn cone_nats_give_a_direct_path_and_16_mib_arrive_intact() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    let took = download(&demo, 16 * MIB);
    println!(
        "16 MiB direct in {took:?} ({:.0} Mbit/s)",
        mbit_per_s(16 * MIB, took)
    );
    assert_eq!(path_of(&demo, "direct"), "direct");
    assert_quiet_logs(&demo);
    // Every daemon serves its counters; they saw the download. The loops
    // publish on their timer tick.
    std::thread::sleep(Duration::from_millis(300));
    let client = demo.scrape(&demo.net.client, "192.168.1.10:9100").unwrap();
    let written = metric(
        &client,
        "postern_tun_bytes_total{role=\"client\",direction=\"written\"}",
    );
    assert!(
        written >= 16 * MIB,
        "client wrote {written} bytes to its TUN:\n{client}"
    );
    assert_eq!(
        metric(&client, "postern_portal_connected{role=\"client\"}"),
        1
    );
    let gateway = demo
        .scrape(&demo.net.gateways[0], "10.0.1.11:9100")
        .unwrap();
    assert_eq!(
        metric(&gateway, "postern_authorized_clients{role=\"gateway\"}"),
        1,
        "{gateway}"
    );
    let portal = demo.scrape(&demo.net.portal, "198.18.0.2:9100").unwrap();
    assert!(
        metric(
            &portal,
            "postern_portal_access_requests_total{outcome=\"granted\"}"
        ) >= 1,
        "{portal}"
    );
    assert_eq!(
        metric(&portal, "postern_portal_online{party=\"gateway\"}"),
        1,
        "{portal}"
    );
    let relay = demo.scrape(&demo.net.relay, "198.18.0.3:9100").unwrap();
    assert!(relay.contains("postern_relay_"), "{relay}");
}

/// The value of one sample in Prometheus text.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).map(str::trim))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

#[test]
fn symmetric_nats_on_both_sides_go_through_the_relay() {
    let demo = demo(NatKind::Symmetric, NatKind::Symmetric, 1);
    let took = download(&demo, 16 * MIB);
    println!(
        "16 MiB relayed in {took:?} ({:.0} Mbit/s)",
        mbit_per_s(16 * MIB, took)
    );
    assert_eq!(path_of(&demo, "relayed"), "relayed");
    assert_quiet_logs(&demo);
}

#[test]
fn five_percent_loss_still_delivers_intact() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    for interface in [&demo.net.nat_home.wan, &demo.net.nat_home.lan] {
        demo.net
            .lab
            .impair(interface, Impairment::loss(5.0))
            .unwrap();
    }
    let took = download(&demo, 16 * MIB);
    println!("16 MiB through 5% loss in {took:?}");
    assert_quiet_logs(&demo);
}

#[test]
fn the_filter_lets_port_80_through_but_not_22() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    // Something listens on 22, so only the filter can refuse it.
    let _ssh = demo
        .net
        .web
        .enter(|| std::net::TcpListener::bind("10.0.1.80:22"))
        .unwrap()
        .unwrap();
    download(&demo, 1024);
    let started = Instant::now();
    let refused = demo.connect(22, Duration::from_secs(3));
    assert!(refused.is_err(), "port 22 must be refused");
    println!("port 22 refused in {:?}: {:?}", started.elapsed(), refused);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not timed out"
    );
    demo.connect(80, Duration::from_secs(3)).unwrap();
    assert_quiet_logs(&demo);
}

#[test]
fn deleting_the_policy_blocks_traffic_within_a_second() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    download(&demo, 1024);
    assert_quiet_logs(&demo);
    let deleted = Instant::now();
    demo.api_ok(
        "DELETE",
        &format!("/api/v1/policies/{}", demo.setup.policy_id),
        None,
    )
    .unwrap();
    let mut blocked = None;
    while deleted.elapsed() < Duration::from_secs(5) {
        // Once revoked, the SYN leaves by the host's default route and
        // dies unanswered (as private addresses do on the internet): a
        // short connect timeout keeps the measure close to the block.
        if demo.connect(80, Duration::from_millis(50)).is_err() {
            blocked = Some(deleted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let blocked = blocked.expect("traffic still flows 5 s after the policy was deleted");
    println!("blocked {blocked:?} after the policy was deleted");
    assert!(blocked < Duration::from_secs(1), "{blocked:?}");
    // And it stays blocked.
    std::thread::sleep(Duration::from_millis(500));
    assert!(demo.connect(80, Duration::from_millis(500)).is_err());
}

#[test]
fn a_second_client_without_a_policy_gets_nothing() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    let other = demo.add_client("intruder", false).unwrap();
    let web: std::net::SocketAddr = "10.0.1.80:80".parse().unwrap();
    // Not even a route: the resource is not its to see.
    std::thread::sleep(Duration::from_secs(1));
    let reached = other
        .host
        .enter(move || std::net::TcpStream::connect_timeout(&web, Duration::from_secs(2)))
        .unwrap();
    assert!(
        reached.is_err(),
        "a client without a policy reached the web server"
    );
    download(&demo, 1024);
}

#[test]
fn a_killed_gateway_hands_over_to_the_second_within_two_seconds() {
    let mut demo = demo(NatKind::Cone, NatKind::Cone, 2);
    download(&demo, MIB);
    let serving = demo.serving_gateway().unwrap();
    demo.kill_gateway(serving).unwrap();
    let resumed = until_downloads_work(&demo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("never resumed\n{}", demo.logs()));
    println!(
        "downloads work again {resumed:?} after gateway-{} was killed",
        serving + 1
    );
    assert_ne!(demo.serving_gateway().unwrap(), serving);
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
}

#[test]
fn a_gateway_stopped_with_sigterm_sends_its_clients_on_at_once() {
    let mut demo = demo(NatKind::Cone, NatKind::Cone, 2);
    download(&demo, MIB);
    let serving = demo.serving_gateway().unwrap();
    let stopped = std::time::Instant::now();
    let log = demo.stop_gateway(serving).unwrap();
    assert!(log.contains("clients_told=1"), "{log}");
    let resumed = until_downloads_work(&demo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("never resumed\n{}", demo.logs()));
    let total = stopped.elapsed();
    println!(
        "downloads work again {resumed:?} after gateway-{} said goodbye ({total:?} from SIGTERM)",
        serving + 1
    );
    assert_ne!(demo.serving_gateway().unwrap(), serving);
    assert!(
        total < Duration::from_millis(600),
        "{total:?}: the goodbye did not hand over at once"
    );
    assert_quiet_logs(&demo);
}

#[test]
fn an_established_flow_survives_the_portal_going_away_and_new_access_resumes_when_it_returns() {
    let mut demo = demo(NatKind::Cone, NatKind::Cone, 1);
    download(&demo, MIB);
    demo.kill_portal().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    download(&demo, 4 * MIB);
    // The portal returns; the daemons reconnect on their own.
    demo.restart_portal().unwrap();
    demo.wait_for_gateways(1, Duration::from_secs(20)).unwrap();
    // A new authorization: the policy goes and comes back.
    demo.api_ok(
        "DELETE",
        &format!("/api/v1/policies/{}", demo.setup.policy_id),
        None,
    )
    .unwrap();
    let gone = Instant::now();
    while demo.connect(80, Duration::from_millis(200)).is_ok() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "access outlived its policy\n{}",
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    demo.api_ok(
        "POST",
        "/api/v1/policies",
        Some(&format!(
            r#"{{"group_id":"{}","resource_id":"{}"}}"#,
            demo.setup.group_id, demo.setup.resource_id
        )),
    )
    .unwrap();
    let resumed = until_downloads_work(&demo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no new access after the portal came back\n{}", demo.logs()));
    println!("a new authorization {resumed:?} after the policy came back");
}

#[test]
fn a_client_that_changes_address_keeps_working() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    download(&demo, MIB);
    demo.roam_client("192.168.1.77/24").unwrap();
    let resumed = until_downloads_work(&demo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("never resumed after roaming\n{}", demo.logs()));
    println!("traffic resumed {resumed:?} after the client changed address");
    download(&demo, 4 * MIB);
    assert_quiet_logs(&demo);
}

#[test]
fn postern_demo_check_verifies_the_scenario() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["demo", "--check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("[ ok ]").count(), 7, "{stdout}");
    assert!(stdout.contains("from the IPv6 resource"), "{stdout}");
    assert!(stdout.contains("path between client and gateway: direct"));
}

/// `dig` in the client's host, through its resolv.conf (the stub's now).
fn dig(demo: &Demo, args: &[&str]) -> String {
    demo.net
        .client
        .run("dig", args)
        .unwrap_or_else(|e| panic!("dig {args:?}: {e}\n{}", demo.logs()))
}

#[test]
fn dns_resource_names_resolve_to_proxies_that_reach_the_office() {
    use postern_lab::demo::DNS_NAME;
    let mut demo = demo(NatKind::Cone, NatKind::Cone, 1);
    let resolv_conf = demo.client_resolv_conf_path();
    // The client took the host's resolv.conf over (the original: the home
    // network's resolver).
    let taken = std::fs::read_to_string(&resolv_conf).unwrap();
    assert!(taken.contains("nameserver 100.100.111.1"), "{taken}");
    assert!(
        taken.contains("search corp.test"),
        "the account's search domain: {taken}"
    );
    let v4: Vec<String> = dig(&demo, &["+short", "+time=2", DNS_NAME, "A"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(v4.len(), 4, "four proxy addresses: {v4:?}");
    for line in &v4 {
        let ip: std::net::Ipv4Addr = line.parse().unwrap();
        assert!(postern_model::plan::DNS_PROXY_V4.contains(&ip), "{ip}");
    }
    let v6 = dig(&demo, &["+short", "+time=2", DNS_NAME, "AAAA"]);
    assert_eq!(v6.lines().count(), 4, "{v6}");
    assert!(
        v6.lines().all(|l| l.starts_with("fd7e:5057:6e00:8000:")),
        "{v6}"
    );
    // Stable while the client runs.
    let again: Vec<String> = dig(&demo, &["+short", "+time=2", DNS_NAME, "A"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(again, v4);
    // The real address never reached the client; the proxy reaches the web
    // server through the gateway, which resolved the name itself.
    assert!(!dig(&demo, &["+short", DNS_NAME, "A"]).contains("10.0.1.80"));
    let proxy: std::net::SocketAddr = format!("{}:80", v4[0]).parse().unwrap();
    let took = demo
        .download_from(proxy, 4 * MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("4 MiB by name in {took:?}");
    assert!(
        demo.office_dns
            .queries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // A name that is not a resource goes to the resolver the client had.
    assert_eq!(
        dig(&demo, &["+short", "+time=2", "portal.demo.test", "A"]).trim(),
        "198.18.0.2"
    );
    // `*` is one label: a deeper name is not the resource's, and goes there too.
    let deeper = dig(&demo, &["+time=2", "deep.web.apps.corp.test", "A"]);
    assert!(deeper.contains("status: NXDOMAIN"), "{deeper}");
    // Other questions about a resource name are answered by the gateway's
    // resolver through the tunnel, never by the client's upstream.
    use std::sync::atomic::Ordering::Relaxed;
    let (office_before, public_before) = (
        demo.office_dns.queries.load(Relaxed),
        demo.public_dns.queries.load(Relaxed),
    );
    let mx = dig(&demo, &["+time=3", DNS_NAME, "MX"]);
    assert!(mx.contains("status: NOERROR"), "{mx}");
    assert!(
        demo.office_dns.queries.load(Relaxed) > office_before,
        "the office resolver answered"
    );
    assert_eq!(
        demo.public_dns.queries.load(Relaxed),
        public_before,
        "the name did not leak"
    );
    // Firefox's canary: NXDOMAIN.
    let canary = dig(&demo, &["+time=2", "use-application-dns.net", "A"]);
    assert!(canary.contains("status: NXDOMAIN"), "{canary}");
    // Stopping the client puts resolv.conf back byte for byte.
    demo.stop_client().unwrap();
    assert_eq!(
        std::fs::read_to_string(&resolv_conf).unwrap(),
        "# the home network's resolver\nnameserver 198.18.0.4\n"
    );
    assert_quiet_logs(&demo);
}

/// Four proxy addresses for `name`, or why not.
fn proxies_of(demo: &Demo, name: &str) -> Vec<std::net::Ipv4Addr> {
    dig(demo, &["+short", "+time=2", name, "A"])
        .lines()
        .filter_map(|line| line.parse().ok())
        .filter(|ip| postern_model::plan::DNS_PROXY_V4.contains(ip))
        .collect()
}

#[test]
fn question_mark_and_double_star_patterns_resolve_as_specified() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    for pattern in ["db?.corp.test", "**.internal.corp.test"] {
        demo.add_resource(
            pattern,
            "dns",
            pattern,
            r#"[{"protocol":"tcp","ports":"80"}]"#,
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while demo.client_status().unwrap().matches("\"access\"").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "the client never got the new resources"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `?` is exactly one character.
    assert_eq!(proxies_of(&demo, "db1.corp.test").len(), 4);
    let two = dig(&demo, &["+time=2", "db12.corp.test", "A"]);
    assert!(two.contains("status: NXDOMAIN"), "db12 is not db?: {two}");
    // `**` is zero or more labels.
    assert_eq!(proxies_of(&demo, "internal.corp.test").len(), 4);
    let deep = proxies_of(&demo, "a.b.internal.corp.test");
    assert_eq!(deep.len(), 4);
    // And the deep name reaches the office by its proxy.
    demo.download_from((deep[1], 80).into(), MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    assert_quiet_logs(&demo);
}

#[test]
fn with_systemd_resolved_the_link_gets_the_stub_and_the_resource_domains() {
    let demo = demo(NatKind::Cone, NatKind::Cone, 1);
    // A stand-in for resolvectl that records what it is told.
    let dir = demo.data_dir().join("resolved");
    std::fs::create_dir_all(&dir).unwrap();
    let calls = dir.join("calls");
    let fake = dir.join("resolvectl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut other = demo.add_client_with("resolved", true, Some(&fake)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .contains("domain ")
    {
        assert!(
            Instant::now() < deadline,
            "resolvectl was never told the domains\n{}",
            other.process.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let told = std::fs::read_to_string(&calls).unwrap();
    assert!(
        told.starts_with("dns postern0 100.100.111.1 fd7e:5057:6e00:8000:100:100:111:1\ndefault-route postern0 false\n"),
        "{told}"
    );
    assert!(told.contains("domain postern0 ~apps.corp.test"), "{told}");
    // No file was touched.
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        before
    );
    // The stub answers through the link (dig asks the sentinel directly here).
    let answer = other
        .host
        .run(
            "dig",
            &[
                "+short",
                "+time=2",
                "@100.100.111.1",
                postern_lab::demo::DNS_NAME,
                "A",
            ],
        )
        .unwrap();
    assert_eq!(answer.lines().count(), 4, "{answer}");
    other
        .process
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    other.process.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        std::fs::read_to_string(&calls)
            .unwrap()
            .ends_with("revert postern0\n"),
        "the link's settings are reverted at exit"
    );
}

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The gateway on hosts whose own firewall drops forwarded packets (issue
//! 26), with Debian's iptables in both backends: FORWARD's policy DROP (as
//! Docker sets it), and Docker's `DOCKER-USER` chain. The gateway lets its
//! tunnel's traffic through with two narrow rules, the host's other
//! forwarding stays blocked, and after the gateway stops the ruleset is
//! byte for byte what it was. With `--no-firewall-changes` it says what
//! blocks forwarding and what to add, in one line.

mod support;

use std::time::{Duration, Instant};

use postern_lab::demo::Demo;
use postern_lab::{Host, NatKind};

fn demo() -> Demo {
    support::demo(NatKind::Cone, NatKind::Cone, 1)
}

/// Everything the firewall holds, as its tools print it (without the
/// packet counters, which traffic moves).
fn ruleset(host: &Host, binary: &str) -> String {
    format!(
        "{}\n{}",
        host.run(binary, &["-w", "-S"]).unwrap(),
        host.run("nft", &["-s", "list", "ruleset"]).unwrap()
    )
}

fn until_download(demo: &Demo, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match demo.download(1 << 20, Duration::from_secs(3)) {
            Ok(took) => return Ok(took),
            Err(error) if started.elapsed() > limit => return Err(error.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Another office host that routes the internet through the gateway:
/// whether its ping to the portal gets through (the host's own
/// forwarding, which must stay as blocked as it was).
fn lan_host_forwards_through_gateway(demo: &Demo) -> bool {
    let web = &demo.net.web;
    web.ip(&["route", "replace", "198.18.0.2/32", "via", "10.0.1.11"])
        .unwrap();
    let through = web
        .run("ping", &["-c", "2", "-W", "1", "198.18.0.2"])
        .is_ok();
    web.ip(&["route", "del", "198.18.0.2/32"]).unwrap();
    through
}

/// `setup` (iptables commands on the gateway host) before the gateway
/// starts; the download, the blocked LAN host, the exact cleanup.
fn gateway_behind(binary: &str, setup: &[&[&str]], chain: &str) {
    let mut demo = demo();
    demo.stop_gateway(0).unwrap();
    let gateway = demo.net.gateways[0].clone();
    for command in setup {
        gateway.run(binary, command).unwrap();
    }
    let before = ruleset(&gateway, binary);
    assert!(
        !lan_host_forwards_through_gateway(&demo),
        "the host's firewall drops forwarding to begin with"
    );
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    let took = until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("1 MiB through a gateway behind `{binary}` in {took:?}");
    let during = gateway.run(binary, &["-w", "-S", chain]).unwrap();
    assert_eq!(
        during.matches("postern-postern0").count(),
        2,
        "two rules in {chain}: {during}"
    );
    assert!(
        !lan_host_forwards_through_gateway(&demo),
        "the host's other forwarding stays blocked"
    );
    demo.stop_gateway(0).unwrap();
    assert_eq!(
        ruleset(&gateway, binary),
        before,
        "after the gateway stopped"
    );

    // Killed, its rules stay; the next start replaces them, not adds.
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    demo.kill_gateway(0).unwrap();
    assert_ne!(
        ruleset(&gateway, binary),
        before,
        "kill -9 leaves the rules"
    );
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let again = gateway.run(binary, &["-w", "-S", chain]).unwrap();
    assert_eq!(again.matches("postern-postern0").count(), 2, "{again}");
    demo.stop_gateway(0).unwrap();
    assert_eq!(
        ruleset(&gateway, binary),
        before,
        "after kill -9, a restart and a stop"
    );
}

#[test]
fn a_gateway_whose_host_drops_forwarding_with_iptables_nft_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-nft",
        &[&["-w", "-P", "FORWARD", "DROP"]],
        "FORWARD",
    );
}

#[test]
fn a_gateway_whose_host_drops_forwarding_with_iptables_legacy_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-legacy",
        &[&["-w", "-P", "FORWARD", "DROP"]],
        "FORWARD",
    );
}

#[test]
fn on_a_docker_host_the_rules_go_into_docker_user() {
    gateway_behind(
        "iptables-nft",
        &[
            &["-w", "-N", "DOCKER-USER"],
            &["-w", "-A", "DOCKER-USER", "-j", "RETURN"],
            &["-w", "-A", "FORWARD", "-j", "DOCKER-USER"],
            &["-w", "-P", "FORWARD", "DROP"],
        ],
        "DOCKER-USER",
    );
}

#[test]
fn with_no_firewall_changes_the_gateway_says_what_blocks_forwarding() {
    let mut demo = demo();
    demo.stop_gateway(0).unwrap();
    let gateway = demo.net.gateways[0].clone();
    gateway
        .run("iptables-nft", &["-w", "-P", "FORWARD", "DROP"])
        .unwrap();
    let before = gateway.run("iptables-nft", &["-w", "-S"]).unwrap();
    demo.gateway_processes[0] = Some(
        demo.spawn_gateway_with(0, &["--no-firewall-changes"])
            .unwrap(),
    );
    demo.wait_for_gateways(1, Duration::from_secs(20)).unwrap();
    // The line comes when the tunnel interface is set up (at the portal's
    // init).
    let started = Instant::now();
    let line = loop {
        let log = demo.gateway_processes[0].as_ref().unwrap().stderr();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("drops what this gateway forwards"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no diagnosis:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("FORWARD policy is DROP"), "{line}");
    // `postern gateway check` says the same, changing nothing.
    let check = gateway
        .run(env!("CARGO_BIN_EXE_postern"), &["gateway", "check"])
        .unwrap();
    assert!(
        check.contains("blocked by iptables (nf_tables) (its FORWARD policy is DROP)"),
        "{check}"
    );
    assert!(
        check.contains(
            "iptables-nft -I FORWARD 1 -o postern0 -m conntrack --ctstate RELATED,ESTABLISHED"
        ),
        "{check}"
    );
    // And it does: without the rules nothing gets through.
    assert!(
        until_download(&demo, Duration::from_secs(5)).is_err(),
        "the host's firewall really drops the tunnel's traffic"
    );
    assert!(
        line.contains("iptables-nft -I FORWARD 1 -i postern0"),
        "the rule to add: {line}"
    );
    assert_eq!(
        gateway.run("iptables-nft", &["-w", "-S"]).unwrap(),
        before,
        "the host's firewall is left alone"
    );
}

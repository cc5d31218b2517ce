#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The gateway on hosts whose own firewall drops forwarded packets (issue
//! 26), with the firewalls from Debian's packages: iptables in both
//! backends with FORWARD's policy DROP (as Docker sets it), Docker's
//! `DOCKER-USER` chain, a plain nftables table, ufw with "deny routed",
//! firewalld in its default zone. The gateway lets its tunnel's traffic
//! through with the narrowest change each knows, the host's other
//! forwarding stays blocked, and after the gateway stops the ruleset is
//! byte for byte what it was (also after a kill -9 and a restart). With
//! `--no-firewall-changes` it says what blocks forwarding and what to add,
//! in one line. And the client, on a host that refuses incoming
//! connections: it works where replies pass, and says so clearly where
//! they do not.

mod support;

use std::time::{Duration, Instant};

use postern_lab::demo::Demo;
use postern_lab::{Firewalld, Host, NatKind};

fn demo() -> Demo {
    support::demo(NatKind::Cone, NatKind::Cone, 1)
}

/// Everything the firewall holds, as its tools print it (without the
/// packet counters, which traffic moves), and firewalld's zones if it runs.
fn ruleset(host: &Host, binary: &str) -> String {
    let nft = host.run("nft", &["-s", "list", "ruleset"]).unwrap();
    let zones = host.run("firewall-cmd", &["--list-all-zones"]);
    format!(
        "{}\n{}\n{}",
        host.run(binary, &["-w", "-S"]).unwrap(),
        if zones.is_ok() {
            without_trusted_chains(&nft)
        } else {
            nft
        },
        zones.unwrap_or_default()
    )
}

/// firewalld builds a zone's chains when the zone is first used and keeps
/// them, unreachable, once nothing is bound to it: what decides a packet's
/// fate is the zones' dispatch chains (kept in the comparison) and the
/// bindings (`--list-all-zones`), not those leftovers of firewalld's own.
fn without_trusted_chains(ruleset: &str) -> String {
    let mut kept = String::new();
    let mut skipping = false;
    for line in ruleset.lines() {
        if line.trim_start().starts_with("chain ") {
            skipping = line.contains("_trusted");
        }
        if !skipping && !line.trim().is_empty() {
            kept.push_str(line);
            kept.push('\n');
        }
        if skipping && line.trim() == "}" {
            skipping = false;
        }
    }
    kept
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
/// whether its TCP connection to the portal gets through (the host's own
/// forwarding, which must stay as blocked as it was). TCP, not ping: ufw
/// forwards echo requests by design.
fn lan_host_forwards_through_gateway(demo: &Demo) -> bool {
    let web = &demo.net.web;
    web.ip(&["route", "replace", "198.18.0.2/32", "via", "10.0.1.11"])
        .unwrap();
    let through = web
        .run(
            "timeout",
            &["2", "bash", "-c", "echo > /dev/tcp/198.18.0.2/8080"],
        )
        .is_ok();
    web.ip(&["route", "del", "198.18.0.2/32"]).unwrap();
    through
}

/// The ruleset without the gateway's own table (its masquerade and forward
/// filter, there while it runs).
fn without_own_table(ruleset: &str) -> String {
    let mut kept = String::new();
    let mut skipping = false;
    for line in ruleset.lines() {
        if line.starts_with("table inet postern_") {
            skipping = true;
        }
        if !skipping {
            kept.push_str(line);
            kept.push('\n');
        }
        if skipping && line == "}" {
            skipping = false;
        }
    }
    kept
}

/// Lines in one listing and not the other, for a readable failure.
fn difference(left: &str, right: &str) -> String {
    let only = |a: &str, b: &str| -> Vec<String> {
        a.lines()
            .filter(|line| !b.lines().any(|other| other == *line))
            .map(str::to_string)
            .collect()
    };
    format!(
        "only now: {:#?}\nonly before: {:#?}",
        only(left, right),
        only(right, left)
    )
}

/// What a firewall setup keeps running while the test runs (firewalld).
type Running = Option<Firewalld>;

/// `setup` makes the gateway host's firewall before the gateway starts;
/// `opened` tells the gateway's change in it. Then: the download, the
/// blocked LAN host, the exact cleanup, after a stop and after a kill -9.
fn gateway_behind(binary: &str, setup: impl Fn(&Host) -> Running, opened: impl Fn(&Host) -> bool) {
    let mut demo = demo();
    demo.stop_gateway(0).unwrap();
    let gateway = demo.net.gateways[0].clone();
    let _running = setup(&gateway);
    // Forwarding on, as the gateway will set it: the firewall alone blocks.
    gateway.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let before = ruleset(&gateway, binary);
    assert!(
        !lan_host_forwards_through_gateway(&demo),
        "the host's firewall drops forwarding to begin with"
    );
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    let took = until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("1 MiB through a gateway behind {binary} in {took:?}");
    assert!(opened(&gateway), "{}", ruleset(&gateway, binary));
    assert!(
        !lan_host_forwards_through_gateway(&demo),
        "the host's other forwarding stays blocked"
    );
    demo.stop_gateway(0).unwrap();
    let after = ruleset(&gateway, binary);
    assert!(
        after == before,
        "after the gateway stopped: {}",
        difference(&after, &before)
    );

    // Killed, its change stays; the next start replaces it, not adds.
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    demo.kill_gateway(0).unwrap();
    assert_ne!(
        ruleset(&gateway, binary),
        before,
        "kill -9 leaves the change"
    );
    demo.gateway_processes[0] = Some(demo.spawn_gateway(0).unwrap());
    until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    assert!(opened(&gateway), "{}", ruleset(&gateway, binary));
    demo.stop_gateway(0).unwrap();
    let after = ruleset(&gateway, binary);
    assert!(
        after == before,
        "after kill -9, a restart and a stop: {}",
        difference(&after, &before)
    );
}

/// iptables commands on the gateway host.
fn iptables(
    binary: &'static str,
    commands: &'static [&'static [&'static str]],
) -> impl Fn(&Host) -> Running {
    move |host| {
        for command in commands {
            host.run(binary, command).unwrap();
        }
        None
    }
}

/// Exactly our two rules in `chain` (as `iptables -S` prints it).
fn two_rules(binary: &'static str, chain: &'static str) -> impl Fn(&Host) -> bool {
    move |host| {
        let listing = host.run(binary, &["-w", "-S", chain]).unwrap();
        listing.matches("postern-postern0").count() == 2
    }
}

#[test]
fn a_gateway_whose_host_drops_forwarding_with_iptables_nft_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-nft",
        iptables("iptables-nft", &[&["-w", "-P", "FORWARD", "DROP"]]),
        two_rules("iptables-nft", "FORWARD"),
    );
}

#[test]
fn a_gateway_whose_host_drops_forwarding_with_iptables_legacy_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-legacy",
        iptables("iptables-legacy", &[&["-w", "-P", "FORWARD", "DROP"]]),
        two_rules("iptables-legacy", "FORWARD"),
    );
}

#[test]
fn on_a_docker_host_the_rules_go_into_docker_user() {
    gateway_behind(
        "iptables-nft",
        iptables(
            "iptables-nft",
            &[
                &["-w", "-N", "DOCKER-USER"],
                &["-w", "-A", "DOCKER-USER", "-j", "RETURN"],
                &["-w", "-A", "FORWARD", "-j", "DOCKER-USER"],
                &["-w", "-P", "FORWARD", "DROP"],
            ],
        ),
        two_rules("iptables-nft", "DOCKER-USER"),
    );
}

#[test]
fn a_gateway_whose_host_drops_forwarding_with_plain_nftables_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-nft",
        |host| {
            // Debian's /etc/nftables.conf, hardened.
            host.nft(
                "table inet filter {\n  chain input { type filter hook input priority filter; policy accept; }\n  \
                 chain forward { type filter hook forward priority filter; policy drop; }\n}\n",
            )
            .unwrap();
            None
        },
        |host| {
            let chain = host
                .run("nft", &["list", "chain", "inet", "filter", "forward"])
                .unwrap();
            chain.matches("comment \"postern-postern0\"").count() == 2
        },
    );
}

#[test]
fn a_gateway_on_a_host_with_ufw_denying_routed_traffic_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-nft",
        |host| {
            host.enable_ufw().unwrap();
            let status = host.run("ufw", &["status", "verbose"]).unwrap();
            assert!(status.contains("Status: active"), "{status}");
            // ufw prints "disabled (routed)" while IP forwarding is off
            // (the gateway turns it on): its policy is what counts.
            let forward = host.run("iptables-nft", &["-w", "-S", "FORWARD"]).unwrap();
            assert!(forward.contains("-P FORWARD DROP"), "{forward}");
            assert!(forward.contains("-j ufw-before-forward"), "{forward}");
            None
        },
        two_rules("iptables-nft", "FORWARD"),
    );
}

#[test]
fn a_gateway_on_a_host_with_firewalld_in_its_default_zone_still_forwards_its_tunnel() {
    gateway_behind(
        "iptables-nft",
        |host| Some(host.start_firewalld().unwrap()),
        |host| {
            host.run("firewall-cmd", &["--get-zone-of-interface=postern0"])
                .is_ok_and(|zone| zone.trim() == "trusted")
        },
    );
}

/// With `--no-firewall-changes` on a host `setup` made: the one line at
/// start and `postern gateway check` name the firewall, why, and what to
/// add; nothing gets through, nothing is changed.
fn without_changes(setup: impl Fn(&Host) -> Running, firewall: &str, reason: &str, command: &str) {
    let mut demo = demo();
    demo.stop_gateway(0).unwrap();
    let gateway = demo.net.gateways[0].clone();
    let _running = setup(&gateway);
    let before = ruleset(&gateway, "iptables-nft");
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
    assert!(
        line.contains(&format!(
            "{firewall} drops what this gateway forwards ({reason})"
        )),
        "{line}"
    );
    assert!(line.contains(command), "the rule to add: {line}");
    // `postern gateway check` says the same, changing nothing.
    let check = gateway
        .run(env!("CARGO_BIN_EXE_postern"), &["gateway", "check"])
        .unwrap();
    assert!(
        check.contains(&format!("blocked by {firewall} ({reason})")),
        "{check}"
    );
    assert!(check.contains(command), "{check}");
    // And it does: without the change nothing gets through.
    assert!(
        until_download(&demo, Duration::from_secs(5)).is_err(),
        "the host's firewall really drops the tunnel's traffic"
    );
    let now = without_own_table(&ruleset(&gateway, "iptables-nft"));
    assert!(
        now == before,
        "the host's firewall is left alone: {}",
        difference(&now, &before)
    );
}

#[test]
fn with_no_firewall_changes_the_gateway_says_what_blocks_forwarding() {
    without_changes(
        iptables("iptables-nft", &[&["-w", "-P", "FORWARD", "DROP"]]),
        "iptables (nf_tables)",
        "its FORWARD policy is DROP",
        "iptables-nft -I FORWARD 1 -o postern0 -m conntrack --ctstate RELATED,ESTABLISHED",
    );
}

#[test]
fn with_no_firewall_changes_under_firewalld_the_gateway_names_the_zone() {
    without_changes(
        |host| Some(host.start_firewalld().unwrap()),
        "firewalld",
        "postern0 is in no zone, so the default zone `public` rejects what it forwards",
        "firewall-cmd --zone=trusted --add-interface=postern0",
    );
}

/// Stops the demo's client, lets `setup` make its host's firewall, starts
/// the client again; its log.
fn client_behind(demo: &mut Demo, setup: impl Fn(&Host)) -> String {
    demo.stop_client().unwrap();
    setup(&demo.net.client);
    demo.start_client(&[]).unwrap();
    demo.client_process.as_ref().unwrap().stderr()
}

#[test]
fn a_client_on_a_host_with_ufw_denying_incoming_works_and_says_why() {
    let mut demo = demo();
    let log = client_behind(&mut demo, |host| host.enable_ufw().unwrap());
    let took = until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("1 MiB to a client behind ufw in {took:?}");
    assert!(
        log.contains("ufw (iptables (nf_tables)) refuses new incoming connections")
            && log.contains("replies pass"),
        "{log}"
    );
}

#[test]
fn a_client_on_a_host_with_firewalld_works_and_says_why() {
    let mut demo = demo();
    let firewalld = demo.net.client.start_firewalld().unwrap();
    let log = client_behind(&mut demo, |_| {});
    let took = until_download(&demo, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    println!("1 MiB to a client behind firewalld in {took:?}");
    assert!(
        log.contains("firewalld refuses new incoming connections (zone `public`"),
        "{log}"
    );
    drop(firewalld);
}

/// A client whose host drops UDP answers says so at start, with the rule
/// to add; meanwhile only TURN over a stream carries its tunnel.
#[test]
fn a_client_whose_host_drops_udp_replies_says_so_and_what_to_add() {
    let mut demo = demo();
    // A hand-written firewall that remembered TCP's replies and forgot
    // UDP's: the portal answers, the gateway and the relay cannot.
    let log = client_behind(&mut demo, |host| {
        for rule in [
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-P INPUT DROP",
        ] {
            let mut args = vec!["-w"];
            args.extend(rule.split(' '));
            host.run("iptables-nft", &args).unwrap();
        }
    });
    let line = log
        .lines()
        .find(|l| l.contains("accepts no replies"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains("its INPUT policy is DROP"), "{line}");
    // The warning is true: no UDP path works, only TURN over a stream.
    let took = until_download(&demo, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("not even over TURN/TLS: {e}\n{}", demo.logs()));
    println!("1 MiB {took:?} with UDP answers dropped");
    assert_eq!(demo.path(), "relayed");
    let log = demo.client_process.as_ref().unwrap().stderr();
    assert!(
        log.contains("TURN over TLS: connected to the relay"),
        "{log}"
    );
    // The rule it names is the fix: with it, the client (started again)
    // goes direct.
    let fix = line.rsplit("add: ").next().unwrap().trim();
    let mut words = fix.split(' ');
    let binary = words.next().unwrap();
    let args: Vec<&str> = words.collect();
    demo.net.client.run(binary, &args).unwrap();
    demo.stop_client().unwrap();
    demo.start_client(&[]).unwrap();
    let took = until_download(&demo, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("after `{fix}`: {e}\n{}", demo.logs()));
    demo.wait_for_path("direct", Duration::from_secs(10))
        .unwrap_or_else(|path| panic!("after `{fix}` the path is {path}\n{}", demo.logs()));
    println!("1 MiB {took:?} after the client's host added `{fix}`");
}

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! A reference model of what a client and gateways together may do, held
//! against the real role machines on the simulated network under random
//! portal changes (policy revoked and allowed, filters changed, fresh
//! inits), gateway deaths and restarts, roaming, loss, a client that skips
//! its own checks, and time. Safety at every step: nothing reaches the site
//! that the portal did not authorize (allowing for a revocation still on
//! its way), never a closed port, never from a forged source, never through
//! a dead gateway. Liveness at the end: once allowed and healthy, an allowed
//! packet arrives.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use postern_tunnel::node::CONNECT_TIMEOUT;
use proptest::prelude::*;
use support::net::Nat;
use support::portal::{CLIENT_V4, gateway_id};
use support::world::{WEB_HOST, World, tcp, web_on};

/// A port no filter ever opens.
const CLOSED: u16 = 22;

#[derive(Clone, Debug)]
enum Action {
    /// An app sends to this port.
    Send(u16),
    /// A modified client pushes a packet to a gateway past its own checks,
    /// from its own address or a forged one.
    Push {
        port: u16,
        host: usize,
        forged: bool,
    },
    Revoke,
    Allow,
    OpenPort(u16),
    Kill(usize),
    Revive(usize),
    Roam(u8),
    Reinit,
    Loss(u64),
    Wait(u64),
}

fn action() -> impl Strategy<Value = Action> {
    let port = prop_oneof![Just(80u16), Just(CLOSED), Just(443u16)];
    prop_oneof![
        6 => port.clone().prop_map(Action::Send),
        2 => (port, 1usize..3, any::<bool>())
            .prop_map(|(port, host, forged)| Action::Push { port, host, forged }),
        1 => Just(Action::Revoke),
        2 => Just(Action::Allow),
        1 => prop_oneof![Just(80u16), Just(443u16)].prop_map(Action::OpenPort),
        1 => (1usize..3).prop_map(Action::Kill),
        1 => (1usize..3).prop_map(Action::Revive),
        1 => (1u8..200).prop_map(Action::Roam),
        1 => Just(Action::Reinit),
        1 => prop_oneof![Just(0u64), Just(5u64)].prop_map(Action::Loss),
        3 => (10u64..1500).prop_map(Action::Wait),
    ]
}

/// What the portal has said, with when: the model the site's traffic is
/// checked against.
struct Model {
    world: World,
    allowed: bool,
    port: u16,
    /// When the policy was last revoked and the filter last changed: a
    /// gateway may act on the old state until the news arrives.
    revoked_at: Option<Instant>,
    port_changed_at: Option<(Instant, u16)>,
}

impl Model {
    fn new() -> Model {
        Model {
            world: World::new(
                &[Nat::PortRestricted, Nat::Open, Nat::Symmetric],
                vec![web_on(80)],
            ),
            allowed: true,
            port: 80,
            revoked_at: None,
            port_changed_at: None,
        }
    }

    /// How long portal news takes to reach a gateway, with a margin.
    fn news(&self) -> Duration {
        self.world.portal.delay + Duration::from_millis(1)
    }

    fn apply(&mut self, action: &Action) {
        let now = self.world.now();
        match action {
            Action::Send(port) => self.world.app_sends(&tcp(CLIENT_V4, WEB_HOST, *port, 1)),
            Action::Push { port, host, forged } => {
                let source = if *forged {
                    Ipv4Addr::new(100, 64, 0, 99)
                } else {
                    CLIENT_V4
                };
                let packet = tcp(source, WEB_HOST, *port, 2);
                self.world
                    .client
                    .send_unchecked(gateway_id(*host), &packet, now);
            }
            Action::Revoke => {
                self.allowed = false;
                self.revoked_at = Some(now);
                self.world.portal.revoke_all(now);
            }
            Action::Allow => {
                self.allowed = true;
                self.world.portal.allowed = true;
            }
            Action::OpenPort(port) => {
                self.port_changed_at = Some((now, self.port));
                self.port = *port;
                self.world.portal.update_resource(web_on(*port), now);
            }
            Action::Kill(host) => self.world.kill_gateway(*host),
            Action::Revive(host) => self.world.revive_gateway(*host),
            Action::Roam(last) => self.world.net.roam(0, Ipv4Addr::new(198, 18, 1, *last)),
            Action::Reinit => {
                self.world.portal.client_init(now);
                for host in 1..3 {
                    if !self.world.net.down[host] {
                        self.world.portal.gateway_init(host, now);
                    }
                }
            }
            Action::Loss(percent) => self.world.net.loss_percent = *percent,
            Action::Wait(ms) => {
                let end = now + Duration::from_millis(*ms);
                while self.world.now() < end {
                    self.step_checked();
                }
            }
        }
        self.step_checked();
    }

    /// One step, then the safety check on whatever reached the site.
    fn step_checked(&mut self) {
        let before: Vec<usize> = self.world.forwarded.iter().map(Vec::len).collect();
        self.world.step();
        let news = self.news();
        for (host, (forwarded, seen)) in self.world.forwarded.iter().zip(before).enumerate().skip(1)
        {
            for (at, packet) in &forwarded[seen..] {
                let port = u16::from_be_bytes([packet[22], packet[23]]);
                let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
                let revoking = self.revoked_at.is_some_and(|r| *at <= r + news);
                assert!(self.allowed || revoking, "forwarded while revoked");
                let old_port = self
                    .port_changed_at
                    .filter(|(changed, _)| *at <= *changed + news)
                    .map(|(_, old)| old);
                assert!(
                    port == self.port || Some(port) == old_port,
                    "forwarded port {port}, the filter opens {}",
                    self.port
                );
                assert_ne!(port, CLOSED, "a port no filter opens");
                assert_eq!(source, CLIENT_V4, "a forged source");
                assert!(!self.world.net.down[host], "a dead gateway forwarded");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn the_pair_matches_the_reference_model(actions in proptest::collection::vec(action(), 1..40)) {
        let mut model = Model::new();
        for action in &actions {
            model.apply(action);
        }
        // Liveness: allowed, both gateways alive, no loss, then quiet long
        // enough for a revived gateway's relay allocation to come back
        // (TURN retransmissions back off to 32 s, then a failed allocation
        // is retried) and for any denial to be forgotten: an allowed packet
        // then arrives, at worst after a connection attempt times out and
        // the client asks again.
        model.apply(&Action::Allow);
        model.apply(&Action::Loss(0));
        model.apply(&Action::Revive(1));
        model.apply(&Action::Revive(2));
        model.apply(&Action::Wait(80_000));
        let delivered_before = model.world.forwarded_total();
        let port = model.port;
        let deadline = model.world.now() + CONNECT_TIMEOUT + Duration::from_secs(2);
        let mut arrived = false;
        while model.world.now() < deadline && !arrived {
            model.apply(&Action::Send(port));
            model.apply(&Action::Wait(100));
            arrived = model.world.forwarded_total() > delivered_before;
        }
        prop_assert!(arrived, "an allowed packet never arrived after {:?}", actions);
    }
}

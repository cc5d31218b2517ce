#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Two ICE sessions on a simulated network with a controllable clock: checks
//! run, a working path is nominated, unreachable candidates are passed over.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postern_model::protocol::IceCredentials;
use postern_tunnel::ice::{IceEvent, IceSession, is_stun};

fn credentials(tag: &str) -> IceCredentials {
    IceCredentials {
        username_fragment: format!("uf{tag}xx"),
        password: format!("password-of-{tag}-0123456789"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A datagram on its way: to the client?, source, destination, payload.
type InFlight = (bool, SocketAddr, SocketAddr, Vec<u8>);

struct Sim {
    client: IceSession,
    gateway: IceSession,
    now: Instant,
    /// (arrival, sequence) -> the datagram.
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    sequence: u64,
    latency: Duration,
}

impl Sim {
    fn new(
        client_hosts: &[&str],
        gateway_hosts: &[&str],
        gateway_creds_for_client: IceCredentials,
    ) -> Sim {
        let (client_creds, gateway_creds) = (credentials("client"), credentials("gateway"));
        let mut client = IceSession::new(&client_creds, &gateway_creds, true, Default::default());
        let mut gateway = IceSession::new(
            &gateway_creds_for_client,
            &client_creds,
            false,
            Default::default(),
        );
        let client_addresses: Vec<SocketAddr> = client_hosts.iter().map(|a| addr(a)).collect();
        let client_candidates: Vec<String> = client_addresses
            .iter()
            .filter_map(|a| client.add_host(*a).unwrap())
            .collect();
        let gateway_candidates: Vec<String> = gateway_hosts
            .iter()
            .filter_map(|a| gateway.add_host(addr(a)).unwrap())
            .collect();
        // Trickled through the portal.
        for candidate in &client_candidates {
            gateway.add_remote(candidate).unwrap();
        }
        for candidate in &gateway_candidates {
            client.add_remote(candidate).unwrap();
        }
        Sim {
            client,
            gateway,
            now: Instant::now(),
            in_flight: BTreeMap::new(),
            sequence: 0,
            latency: Duration::from_millis(10),
        }
    }

    /// Runs until both sides nominated or `limit` of simulated time passed;
    /// `reachable` says which (source, destination) datagrams arrive.
    fn run(
        &mut self,
        limit: Duration,
        reachable: impl Fn(SocketAddr, SocketAddr) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now.duration_since(start) < limit {
            self.client.handle_timeout(self.now);
            self.gateway.handle_timeout(self.now);
            for from_client in [true, false] {
                let session = if from_client {
                    &mut self.client
                } else {
                    &mut self.gateway
                };
                while let Some(transmit) = session.poll_transmit() {
                    assert!(is_stun(&transmit.payload), "ICE sends STUN only");
                    if reachable(transmit.source, transmit.destination) {
                        self.sequence += 1;
                        self.in_flight.insert(
                            (self.now + self.latency, self.sequence),
                            (
                                !from_client,
                                transmit.source,
                                transmit.destination,
                                transmit.payload,
                            ),
                        );
                    }
                }
            }
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (to_client, source, destination, payload) = entry.remove();
                let session = if to_client {
                    &mut self.client
                } else {
                    &mut self.gateway
                };
                session.handle_stun(self.now, source, destination, &payload);
            }
            if self.client.nominated().is_some() && self.gateway.is_connected() {
                return Some(self.now.duration_since(start));
            }
            let next = [
                self.client.poll_timeout(),
                self.gateway.poll_timeout(),
                self.in_flight.keys().next().map(|k| k.0),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now + Duration::from_millis(50));
            self.now = next.max(self.now + Duration::from_millis(1));
        }
        None
    }
}

#[test]
fn a_direct_path_is_checked_and_nominated() {
    let mut sim = Sim::new(
        &["198.18.0.10:51820"],
        &["198.18.0.20:51820"],
        credentials("gateway"),
    );
    let took = sim
        .run(Duration::from_secs(10), |_, _| true)
        .expect("nominated");
    assert_eq!(
        sim.client.nominated(),
        Some((addr("198.18.0.10:51820"), addr("198.18.0.20:51820")))
    );
    assert!(matches!(
        sim.client.poll_event(),
        Some(IceEvent::Nominated { .. })
    ));
    assert!(
        took < Duration::from_millis(500),
        "took {took:?} of simulated time with 10 ms latency"
    );
}

#[test]
fn unreachable_candidates_are_passed_over() {
    // The gateway's private address is not reachable from the client.
    let mut sim = Sim::new(
        &["198.18.0.10:51820"],
        &["10.0.0.2:51820", "198.18.0.20:51820"],
        credentials("gateway"),
    );
    let took = sim
        .run(Duration::from_secs(10), |source, destination| {
            source.ip().to_string() != "10.0.0.2" && destination.ip().to_string() != "10.0.0.2"
        })
        .expect("nominated");
    assert_eq!(sim.client.nominated().unwrap().1, addr("198.18.0.20:51820"));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn no_path_means_no_nomination() {
    let mut sim = Sim::new(
        &["198.18.0.10:51820"],
        &["198.18.0.20:51820"],
        credentials("gateway"),
    );
    assert_eq!(sim.run(Duration::from_secs(30), |_, _| false), None);
    assert_eq!(sim.client.nominated(), None);
}

#[test]
fn wrong_credentials_never_connect() {
    // The gateway was given other credentials than the client expects.
    let mut sim = Sim::new(
        &["198.18.0.10:51820"],
        &["198.18.0.20:51820"],
        credentials("intruder"),
    );
    assert_eq!(sim.run(Duration::from_secs(30), |_, _| true), None);
}

#[test]
fn stun_is_told_apart_from_wireguard_and_channel_data() {
    let mut binding = vec![0u8; 20];
    binding[1] = 1;
    binding[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    assert!(is_stun(&binding));
    let mut handshake = vec![0u8; 148];
    handshake[0] = 1;
    assert!(!is_stun(&handshake), "a WireGuard handshake initiation");
    let mut channel_data = binding.clone();
    channel_data[0] = 0x40;
    assert!(!is_stun(&channel_data), "TURN ChannelData");
    assert!(!is_stun(&binding[..19]));
    // WireGuard data whose receiver index happens to spell the magic
    // cookie (index 0x42a412, session 0x21) is still WireGuard.
    let mut data = vec![0u8; 96];
    data[0] = 4;
    data[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    assert!(!is_stun(&data), "WireGuard data with a cookie-like index");
    let mut padded = binding.clone();
    padded.extend_from_slice(&[0; 4]);
    assert!(
        !is_stun(&padded),
        "a length that does not cover the datagram"
    );
}

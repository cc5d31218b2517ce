//! The gateway's half of the control protocol: portal messages become
//! changes to the node (peers, relays, candidates) and the authorization
//! table, node events become frames for the portal and packets for the TUN.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use postern_model::plan::{DEVICE_V4, DEVICE_V6};
use postern_model::protocol::{Authorization, GatewayToPortal, Interface, PortalToGateway};
use postern_sys::device::{self, PeerKeys, send_frame};
use postern_sys::masquerade::{self, Masquerade};
use postern_sys::metrics::Tally;
use postern_sys::tun::{Tun, TunAddresses};
use postern_tunnel::control::{self, AssignmentResult, ProxyAssignment, TunnelMessage};

use crate::resolve::{self, Lookup, NameResolver, Resolved};
use hickory_resolver::proto::op::ResponseCode;
use postern_tunnel::gateway::{ClientAddresses, GatewayDrop, GatewayState, GatewayVerdict};
use postern_tunnel::node::{Node, NodeEvent, PeerConfig};
use tokio::sync::mpsc;
use uuid::Uuid;

pub struct Control {
    pub node: Node,
    pub state: GatewayState,
    pub tally: Tally,
    tun: Option<Tun>,
    _masquerade: Option<Masquerade>,
    interface: String,
    /// Our tunnel IPv4 address, once the portal said it.
    tunnel_ipv4: Option<std::net::Ipv4Addr>,
    relays: HashSet<Uuid>,
    peers: HashMap<Uuid, PeerKeys>,
    resolver: NameResolver,
    /// Names to look up again when their answers expire:
    /// (client, resource, name) -> (the assignment, when).
    renew: HashMap<(Uuid, Uuid, String), (ProxyAssignment, Instant)>,
}

impl Control {
    pub fn new(node: Node, interface: String, resolver: NameResolver) -> Self {
        Control {
            resolver,
            renew: HashMap::new(),
            node,
            state: GatewayState::new(),
            tally: Tally::default(),
            tun: None,
            _masquerade: None,
            interface,
            tunnel_ipv4: None,
            relays: HashSet::new(),
            peers: HashMap::new(),
        }
    }

    pub fn tun(&self) -> Option<&Tun> {
        self.tun.as_ref()
    }

    /// Tunnel peers (clients with a tunnel).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let renew = self.renew.values().map(|(_, at)| *at).min();
        [self.node.poll_timeout(), self.state.poll_timeout(), renew]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.state.handle_timeout(now);
        // Answers that expired are looked up again while the client may
        // still use the resource; otherwise forgotten.
        let due: Vec<(Uuid, Uuid, String)> = self
            .renew
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some((assignment, _)) = self.renew.remove(&key) else {
                continue;
            };
            let (client, resource, name) = &key;
            if self
                .state
                .check_assignment(*client, *resource, name, &assignment.proxies)
                .is_ok()
            {
                self.resolver.resolve(*client, assignment);
            }
        }
    }

    /// A message from a client inside its tunnel (to our tunnel address).
    fn handle_tunnel_message(&mut self, client: Uuid, message: TunnelMessage, now: Instant) {
        match message {
            TunnelMessage::AssignProxies(assignment) => {
                match self.state.check_assignment(
                    client,
                    assignment.resource,
                    &assignment.name,
                    &assignment.proxies,
                ) {
                    Ok(()) => self.resolver.resolve(client, assignment),
                    Err(error) => {
                        tracing::info!(%client, name = %assignment.name, %error, "proxy assignment refused");
                        self.answer_assignment(
                            client,
                            &assignment,
                            0,
                            Some(error.to_string()),
                            now,
                        );
                    }
                }
            }
            TunnelMessage::DnsQuery { resource, query } => {
                // Only about names of a resource the client may use: the
                // gateway's resolver answers nothing else.
                let allowed = resolve::query_name(&query).is_some_and(|name| {
                    self.state
                        .check_assignment(client, resource, &name, &[])
                        .is_ok()
                });
                if allowed {
                    self.resolver.forward(client, query);
                } else if let Some(answer) = resolve::answer_with(&query, ResponseCode::Refused) {
                    self.send_to_client(client, &TunnelMessage::DnsAnswer { answer }, now);
                }
            }
            // Only gateways say these.
            TunnelMessage::Goodbye
            | TunnelMessage::Assigned(_)
            | TunnelMessage::DnsAnswer { .. } => {}
        }
    }

    /// A lookup task finished.
    pub fn on_lookup(&mut self, lookup: Lookup, now: Instant) {
        match lookup {
            Lookup::Names(resolved) => self.on_resolved(resolved, now),
            Lookup::Answer { client, answer } => {
                self.send_to_client(client, &TunnelMessage::DnsAnswer { answer }, now)
            }
        }
    }

    /// A message to a client through its tunnel.
    fn send_to_client(&mut self, client: Uuid, message: &TunnelMessage, now: Instant) {
        let (Some(from), Some(addresses)) = (self.tunnel_ipv4, self.state.client_addresses(client))
        else {
            return;
        };
        let packet = control::encode(message, from, addresses.ipv4);
        self.node.send(client, &packet, now);
    }

    /// A lookup finished: map the proxies and tell the client.
    fn on_resolved(&mut self, resolved: Resolved, now: Instant) {
        let Resolved {
            client,
            assignment,
            answers,
            valid_for,
        } = resolved;
        let outcome = answers.and_then(|answers| {
            self.state
                .assign_proxies(
                    client,
                    assignment.resource,
                    &assignment.name,
                    &assignment.proxies,
                    &answers,
                )
                .map_err(|e| e.to_string())
                .and_then(|mapped| {
                    if mapped == 0 {
                        Err("no address of the proxies' families".to_string())
                    } else {
                        Ok(mapped)
                    }
                })
        });
        let key = (client, assignment.resource, assignment.name.clone());
        match outcome {
            Ok(mapped) => {
                tracing::info!(%client, name = %assignment.name, mapped, "proxies mapped");
                self.answer_assignment(client, &assignment, mapped, None, now);
                self.renew.insert(key, (assignment, now + valid_for));
            }
            Err(error) => {
                tracing::info!(%client, name = %assignment.name, %error, "name not resolved");
                self.answer_assignment(client, &assignment, 0, Some(error), now);
                self.renew.remove(&key);
            }
        }
    }

    fn answer_assignment(
        &mut self,
        client: Uuid,
        assignment: &ProxyAssignment,
        mapped: usize,
        error: Option<String>,
        now: Instant,
    ) {
        let result = TunnelMessage::Assigned(AssignmentResult {
            resource: assignment.resource,
            name: assignment.name.clone(),
            mapped,
            error,
        });
        self.send_to_client(client, &result, now);
    }

    /// One frame from the portal; `Some(reason)` ends the daemon.
    pub fn handle_portal(
        &mut self,
        text: &str,
        now: Instant,
        outgoing: &mpsc::Sender<String>,
    ) -> Option<String> {
        let message: PortalToGateway = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "ignoring a frame this version does not know");
                return None;
            }
        };
        match message {
            PortalToGateway::Init {
                interface,
                relays,
                authorizations,
            } => {
                if let Err(error) = self.set_interface(&interface) {
                    return Some(error);
                }
                device::add_relays(&mut self.node, &mut self.relays, &relays, now);
                let count = authorizations.len();
                for authorization in authorizations {
                    self.authorize(&authorization, now);
                }
                tracing::info!(
                    ipv4 = %interface.ipv4, ipv6 = %interface.ipv6, relays = relays.len(),
                    authorizations = count, "portal init"
                );
            }
            PortalToGateway::Authorize {
                reference,
                authorization,
            } => {
                if self.authorize(&authorization, now) {
                    send_frame(outgoing, &GatewayToPortal::Authorized { reference });
                }
            }
            PortalToGateway::Revoke {
                client_id,
                resource_id,
            } => {
                self.state.revoke(client_id, resource_id);
                tracing::info!(client = %client_id, resource = %resource_id, "access revoked");
                if !self.state.has_client(client_id) {
                    self.node.remove_peer(client_id);
                    self.peers.remove(&client_id);
                }
            }
            PortalToGateway::ResourceUpdated { resource } => {
                tracing::info!(resource = %resource.id, "resource updated");
                self.state.update_resource(resource);
            }
            PortalToGateway::IceCandidates {
                peer_id,
                candidates,
            } => {
                for candidate in candidates {
                    self.node.add_remote_candidate(peer_id, &candidate, now);
                }
            }
            PortalToGateway::IceCandidatesRemoved { .. } => {}
            PortalToGateway::RelaysChanged { added, removed } => {
                device::add_relays(&mut self.node, &mut self.relays, &added, now);
                if !removed.is_empty() {
                    // The node keeps a removed relay's allocation until it
                    // fails; peers move off it by themselves.
                    tracing::info!(?removed, "relays removed");
                }
            }
            PortalToGateway::Disconnect { reason } => {
                tracing::warn!(?reason, "the portal disconnected this gateway");
                if matches!(
                    reason,
                    postern_model::protocol::DisconnectReason::TokenRevoked
                        | postern_model::protocol::DisconnectReason::TokenExpired
                ) {
                    return Some(format!("the portal disconnected this gateway: {reason:?}"));
                }
            }
            PortalToGateway::Error { message, .. } => {
                tracing::warn!(%message, "the portal reported an error");
            }
        }
        None
    }

    /// The TUN interface with the gateway's tunnel addresses, the whole
    /// device range routed into it, and masquerade for clients' traffic.
    fn set_interface(&mut self, interface: &Interface) -> Result<(), String> {
        self.tunnel_ipv4 = Some(interface.ipv4);
        if self.tun.is_some() {
            return Ok(());
        }
        let tun = Tun::create(
            &self.interface,
            TunAddresses {
                ipv4: interface.ipv4,
                ipv4_prefix: DEVICE_V4.prefix_len(),
                ipv6: interface.ipv6,
                ipv6_prefix: DEVICE_V6.prefix_len(),
            },
        )
        .map_err(|e| e.to_string())?;
        masquerade::enable_forwarding().map_err(|e| e.to_string())?;
        let table = format!("postern_{}", tun.name().replace('-', "_"));
        let masquerade =
            Masquerade::install(&table, tun.name(), &[DEVICE_V4.into(), DEVICE_V6.into()])
                .map_err(|e| e.to_string())?;
        tracing::info!(interface = tun.name(), %table, offload = tun.offload(), "tunnel interface up, masquerade on");
        self.tun = Some(tun);
        self._masquerade = Some(masquerade);
        Ok(())
    }

    /// Applies an authorization; false if it is malformed.
    fn authorize(&mut self, authorization: &Authorization, now: Instant) -> bool {
        let client = &authorization.client;
        let Some(keys) = PeerKeys::decode(&client.public_key, &authorization.preshared_key) else {
            tracing::warn!(client = %client.id, "authorization with malformed keys ignored");
            return false;
        };
        let known = self.peers.get(&client.id) == Some(&keys);
        // A peer that went quiet is set up afresh: the client starts a new
        // ICE session when it asks again.
        if !known || !self.node.is_alive(client.id, now) {
            self.node.remove_peer(client.id);
            self.node.add_peer(
                client.id,
                PeerConfig {
                    public_key: keys.public_key,
                    preshared_key: keys.preshared_key,
                    local_ice: authorization.ice.gateway.clone(),
                    remote_ice: authorization.ice.client.clone(),
                },
                now,
            );
            self.peers.insert(client.id, keys);
        }
        self.state.authorize(
            ClientAddresses {
                id: client.id,
                ipv4: client.ipv4,
                ipv6: client.ipv6,
            },
            authorization.resource.clone(),
            device::deadline(authorization.expires_at, now),
        );
        tracing::info!(
            client = %client.id, resource = %authorization.resource.id,
            name = %authorization.resource.name, "authorized"
        );
        true
    }

    /// Whether a packet a client sent through its tunnel goes on to the
    /// resources (DNS-resource proxies rewritten in place); refused ones are
    /// answered or dropped here.
    pub fn admit(&mut self, client: Uuid, packet: &mut [u8], now: Instant) -> bool {
        // To our own tunnel address: a message for the gateway, never
        // forwarded.
        if let Some(own) = self.tunnel_ipv4
            && packet.first().is_some_and(|b| b >> 4 == 4)
            && packet.get(16..20) == Some(&own.octets()[..])
        {
            if let Some(addresses) = self.state.client_addresses(client)
                && let Some(message) =
                    control::decode(packet, &[addresses.ipv4.into(), addresses.ipv6.into()])
            {
                self.handle_tunnel_message(client, message, now);
            }
            return false;
        }
        match self.state.forward_from_client(client, packet, now) {
            GatewayVerdict::Forward => {
                self.tally.tun_packets_written += 1;
                self.tally.tun_bytes_written += packet.len() as u64;
                true
            }
            GatewayVerdict::Reply(reply) => {
                self.tally.drop_reason("refused");
                self.node.send(client, &reply, now);
                false
            }
            GatewayVerdict::Drop(why) => {
                self.tally.drop_reason(match why {
                    GatewayDrop::Malformed => "malformed",
                    GatewayDrop::UnknownClient => "unknown_client",
                    GatewayDrop::Spoofed => "spoofed",
                    GatewayDrop::Refused => "refused",
                });
                tracing::debug!(%client, ?why, "packet dropped");
                false
            }
        }
    }

    pub fn handle_node_event(
        &mut self,
        event: NodeEvent,
        now: Instant,
        outgoing: &mpsc::Sender<String>,
    ) {
        match event {
            NodeEvent::Candidate { peer, candidate } => send_frame(
                outgoing,
                &GatewayToPortal::IceCandidates {
                    peer_id: peer,
                    candidates: vec![candidate],
                },
            ),
            NodeEvent::Connected { peer, relayed } => {
                tracing::info!(client = %peer, relayed, "client connected")
            }
            NodeEvent::Packet { peer, mut packet } => {
                if self.admit(peer, &mut packet, now)
                    && let Some(tun) = &self.tun
                    && let Err(error) = tun.send(&packet)
                {
                    tracing::debug!(%error, "TUN write failed");
                }
            }
            NodeEvent::Dead { peer } => {
                tracing::info!(client = %peer, "client went quiet; its tunnel is closed");
                self.node.remove_peer(peer);
                self.peers.remove(&peer);
            }
        }
    }

    /// On SIGTERM: every client hears a goodbye through its tunnel and asks
    /// the portal for another gateway at once. Returns how many were told.
    pub fn goodbye(&mut self, now: Instant) -> usize {
        let Some(from) = self.tunnel_ipv4 else {
            return 0;
        };
        let mut told = 0;
        let clients: Vec<Uuid> = self.peers.keys().copied().collect();
        for client in clients {
            if let Some(addresses) = self.state.client_addresses(client) {
                let packet = control::encode(&TunnelMessage::Goodbye, from, addresses.ipv4);
                self.node.send(client, &packet, now);
                told += 1;
            }
        }
        told
    }
}

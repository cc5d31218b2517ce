//! The gateway role (SPEC F12, F15-F22, F24) as one sans-IO state machine:
//! portal messages become authorizations and tunnel peers; a client's
//! packets are forwarded to the site only as its authorizations allow
//! (DNS-resource proxies rewritten to what the gateway resolved itself);
//! replies go back to the client they belong to; names are looked up again
//! when their answers expire. The device loop only moves bytes and applies
//! [`Effect`]s.
//!
//! - [`authorizations`]: the per-client authorization table, filters, NAT;
//! - [`names`]: lookups for DNS resources and their renewals.

pub mod authorizations;
mod destinations;
pub mod flow_reports;
mod names;
mod replies;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use jiff::Timestamp;
use postern_model::plan::{DEVICE_V4, DEVICE_V6};
use postern_model::protocol::{
    Authorization, DisconnectReason, GatewayToPortal, Interface, PortalToGateway,
};
use postern_model::{ClientId, ResourceId};
use serde::{Deserialize, Serialize};

pub use authorizations::{AssignError, ClientAddresses, GatewayDrop, GatewayState, GatewayVerdict};
use names::{Lookup, Lookups, answer_with, fit, query_name};
pub use names::{MAX_RENEW, MIN_RENEW};

use crate::control::{self, AssignmentResult, ProxyAssignment, TunnelMessage};
use crate::counters::Counters;
use crate::effect::{Effect, Input, Resolution, Stop, TunConfig};
use crate::node::{Node, NodeEvent, PeerConfig, Transmit};
use crate::outbox::Outbox;
use crate::role::{Gauges, Role, deadline};
use replies::ReplyWatch;

/// What a gateway's status shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GatewayStatus {
    pub connected: bool,
    /// Clients with an authorization: id and path.
    pub clients: Vec<ClientLine>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientLine {
    pub id: String,
    /// direct, relayed or connecting.
    pub path: String,
}

pub struct GatewayTunnel {
    node: Node<ClientId>,
    authorizations: GatewayState,
    lookups: Lookups,
    /// Our tunnel addresses, from the first `init`.
    addresses: Option<(Ipv4Addr, Ipv6Addr)>,
    /// The host's own addresses, from the shell.
    host_addresses: Vec<IpAddr>,
    connected: bool,
    out: Outbox<GatewayToPortal>,
    /// Whether forwarded packets ever get an answer.
    replies: ReplyWatch,
    /// Ended flows on their way to the portal (the flow log).
    flow_reports: flow_reports::FlowReports,
}

impl GatewayTunnel {
    /// The gateway on the socket whose addresses are `locals` (one per
    /// family), with this process's WireGuard secret; `seed` is fresh
    /// randomness.
    pub fn new(locals: &[SocketAddr], secret: [u8; 32], seed: u64) -> Self {
        GatewayTunnel {
            node: Node::new(locals, secret, false, seed),
            authorizations: GatewayState::new(),
            lookups: Lookups::default(),
            addresses: None,
            host_addresses: Vec::new(),
            connected: false,
            out: Outbox::new(),
            replies: ReplyWatch::default(),
            flow_reports: flow_reports::FlowReports::default(),
        }
    }

    /// The tunnel interface with the whole device range (replies to
    /// clients route into it) and masquerade for clients' traffic, from
    /// the first `init`.
    fn init_interface(&mut self, interface: &Interface) {
        let addresses = (interface.ipv4, interface.ipv6);
        match self.addresses {
            None => {
                self.addresses = Some(addresses);
                self.own_addresses_changed();
                self.out.effects.push_back(Effect::Interface(TunConfig {
                    ipv4: interface.ipv4,
                    ipv4_prefix: DEVICE_V4.prefix_len(),
                    ipv6: interface.ipv6,
                    ipv6_prefix: DEVICE_V6.prefix_len(),
                }));
                self.out
                    .effects
                    .push_back(Effect::Masquerade(vec![DEVICE_V4.into(), DEVICE_V6.into()]));
            }
            Some(known) if known != addresses => tracing::warn!(
                ?known, new = ?addresses,
                "the portal changed this gateway's tunnel addresses; restart the gateway to use them"
            ),
            Some(_) => {}
        }
    }

    /// The addresses no client may reach: ours in the tunnel and the host's.
    fn own_addresses_changed(&mut self) {
        let mut own = self.host_addresses.clone();
        if let Some((ipv4, ipv6)) = self.addresses {
            own.extend([IpAddr::V4(ipv4), IpAddr::V6(ipv6)]);
        }
        self.authorizations.set_own_addresses(own);
    }

    /// `init` lists every authorization the portal holds for this gateway:
    /// what is not listed is over (revoked while the channel was down, or
    /// by a portal that restarted), and clients left with nothing lose
    /// their tunnel.
    fn replace_authorizations(&mut self, listed: &[Authorization]) {
        let keep: HashSet<(ClientId, ResourceId)> = listed
            .iter()
            .map(|a| (a.client.id, a.resource.id))
            .collect();
        for (client, resource) in self.authorizations.authorized() {
            if !keep.contains(&(client, resource)) {
                tracing::info!(%client, %resource, "not in the portal's init: revoked");
                self.authorizations.revoke(client, resource);
            }
        }
        let peers: Vec<ClientId> = self.node.peers().collect();
        for client in peers {
            if !self.authorizations.has_client(client) {
                self.node.remove_peer(client);
            }
        }
    }

    /// Applies an authorization (a repeated one updates filters and expiry).
    fn authorize(&mut self, authorization: Authorization, now: Instant, wall: Timestamp) {
        let client = &authorization.client;
        let known = self.node.has_keys(
            client.id,
            &client.public_key.0,
            &authorization.preshared_key.0,
        );
        // A peer that went quiet is set up afresh: the client starts a new
        // ICE session when it asks again.
        if !known || !self.node.is_alive(client.id, now) {
            self.node.add_peer(
                client.id,
                PeerConfig {
                    public_key: client.public_key.0,
                    preshared_key: authorization.preshared_key.0,
                    local_ice: authorization.ice.gateway.clone(),
                    remote_ice: authorization.ice.client.clone(),
                },
                now,
            );
        }
        tracing::info!(
            client = %client.id, resource = %authorization.resource.id,
            name = %authorization.resource.name, "authorized"
        );
        self.authorizations.authorize(
            ClientAddresses {
                id: client.id,
                ipv4: client.ipv4,
                ipv6: client.ipv6,
            },
            authorization.resource,
            deadline(authorization.expires_at, now, wall),
        );
    }

    /// Whether a client's packet goes on to the site (proxies rewritten in
    /// place); refused ones are answered or dropped here, messages for the
    /// gateway itself handled.
    fn admit(&mut self, client: ClientId, packet: &mut [u8], now: Instant) -> bool {
        if self.is_to_us(packet) {
            // To our own tunnel address: a message for the gateway, never
            // forwarded into the site or the gateway's own stack.
            if let Some(addresses) = self.authorizations.client_addresses(client)
                && let Some(message) =
                    control::decode(packet, &[addresses.ipv4.into(), addresses.ipv6.into()])
            {
                self.handle_tunnel_message(client, message, now);
            } else {
                self.out.dropped.add("to_gateway");
            }
            return false;
        }
        match self.authorizations.forward_from_client(client, packet, now) {
            GatewayVerdict::Forward => true,
            GatewayVerdict::Reply(reply) => {
                self.out.dropped.add("refused");
                self.send_packet(client, &reply, now);
                false
            }
            GatewayVerdict::Drop(why) => {
                self.out.dropped.add(why.label());
                tracing::trace!(%client, ?why, "packet dropped");
                false
            }
        }
    }

    /// Whether a packet is for one of our own tunnel addresses.
    fn is_to_us(&self, packet: &[u8]) -> bool {
        let Some((ipv4, ipv6)) = self.addresses else {
            return false;
        };
        match packet.first().map(|b| b >> 4) {
            Some(4) => packet.get(16..20) == Some(&ipv4.octets()[..]),
            Some(6) => packet.get(24..40) == Some(&ipv6.octets()[..]),
            _ => false,
        }
    }

    /// A message from a client inside its tunnel.
    fn handle_tunnel_message(&mut self, client: ClientId, message: TunnelMessage, now: Instant) {
        match message {
            TunnelMessage::AssignProxies(assignment) => {
                match self.authorizations.check_assignment(
                    client,
                    assignment.resource,
                    &assignment.name,
                    &assignment.proxies,
                ) {
                    Ok(()) => match self.lookups.resolve(client, assignment.clone()) {
                        Some(effect) => self.out.effects.push_back(effect),
                        None => {
                            self.out.dropped.add("lookups_full");
                            self.answer_assignment(
                                client,
                                &assignment,
                                0,
                                Some("too many lookups in flight".into()),
                                now,
                            );
                        }
                    },
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
                let allowed = query_name(&query)
                    .is_some_and(|name| self.authorizations.may_resolve(client, resource, &name));
                let asked = if allowed {
                    self.lookups.ask(client, query.clone())
                } else {
                    None
                };
                if let Some(effect) = asked {
                    self.out.effects.push_back(effect);
                } else if let Some(answer) = answer_with(
                    &query,
                    if allowed {
                        ResponseCode::ServFail
                    } else {
                        ResponseCode::Refused
                    },
                ) {
                    self.send_to_client(client, &TunnelMessage::DnsAnswer { answer }, now);
                }
            }
            // Only gateways say these.
            TunnelMessage::Goodbye
            | TunnelMessage::Assigned(_)
            | TunnelMessage::DnsAnswer { .. } => {}
        }
    }

    /// A lookup for a client's proxies finished: map them and tell it.
    fn on_resolved(
        &mut self,
        client: ClientId,
        assignment: ProxyAssignment,
        result: Result<Resolution, String>,
        now: Instant,
    ) {
        let outcome = result.and_then(|resolution| {
            let mapped = self
                .authorizations
                .assign_proxies(
                    client,
                    assignment.resource,
                    &assignment.name,
                    &assignment.proxies,
                    &resolution.addresses,
                )
                .map_err(|e| e.to_string())?;
            if mapped == 0 {
                return Err("no address of the proxies' families".to_string());
            }
            Ok((mapped, resolution.valid_for))
        });
        match outcome {
            Ok((mapped, valid_for)) => {
                tracing::info!(%client, name = %assignment.name, mapped, "proxies mapped");
                self.answer_assignment(client, &assignment, mapped, None, now);
                self.lookups.renew_after(client, assignment, valid_for, now);
            }
            Err(error) => {
                tracing::info!(%client, name = %assignment.name, %error, "name not resolved");
                self.answer_assignment(client, &assignment, 0, Some(error), now);
                self.lookups.forget_renewal(client, &assignment);
            }
        }
    }

    fn answer_assignment(
        &mut self,
        client: ClientId,
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

    /// A message to a client through its tunnel.
    fn send_to_client(&mut self, client: ClientId, message: &TunnelMessage, now: Instant) {
        let (Some((from, _)), Some(addresses)) =
            (self.addresses, self.authorizations.client_addresses(client))
        else {
            return;
        };
        let packet = control::encode(message, from, addresses.ipv4);
        self.send_packet(client, &packet, now);
    }

    /// A packet to a client on the slow path (copied into a transmit).
    fn send_packet(&mut self, client: ClientId, packet: &[u8], now: Instant) {
        self.out.send_packet(&mut self.node, client, packet, now);
    }

    /// Node events: candidates to the portal, quiet clients forgotten.
    fn drain(&mut self) {
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::Candidate { peer, candidate } => {
                    self.out.portal.push_back(GatewayToPortal::IceCandidates {
                        peer_id: peer,
                        candidates: vec![candidate],
                    })
                }
                NodeEvent::Connected { peer, relayed } => {
                    tracing::info!(client = %peer, relayed, "client connected")
                }
                NodeEvent::Dead { peer } => {
                    tracing::info!(client = %peer, "client went quiet; its tunnel is closed");
                    self.node.remove_peer(peer);
                }
            }
        }
    }

    /// Whether `client` may reach `resource` now.
    pub fn is_authorized(&self, client: ClientId, resource: postern_model::ResourceId) -> bool {
        self.authorizations.is_authorized(client, resource)
    }

    /// Sends `packet` to `client` through its tunnel past the gateway's
    /// flow check: what a modified gateway (or one whose host was taken
    /// over) can do. For tests that play the attacker.
    #[cfg(feature = "malicious")]
    pub fn send_unchecked(&mut self, client: ClientId, packet: &[u8], now: Instant) {
        self.send_packet(client, packet, now);
    }

    /// How many names the gateway keeps fresh.
    pub fn renewals(&self) -> usize {
        self.lookups.renewals()
    }

    /// The node, for tests that look at paths.
    pub fn node(&self) -> &Node<ClientId> {
        &self.node
    }

    /// Ended flows to the reports, and a batch to the portal if one is due.
    fn report_flows(&mut self, now: Instant) {
        let (ended, dropped) = self.authorizations.take_ended_flows();
        let before = self.flow_reports.dropped();
        self.flow_reports.add(ended, dropped, now);
        let lost = self.flow_reports.dropped() - before;
        if lost > 0 {
            tracing::warn!(
                lost,
                total = self.flow_reports.dropped(),
                "flow log entries dropped (the portal away too long, or too many flows)"
            );
        }
        while let Some(batch) = self.flow_reports.poll(now, self.connected) {
            self.out.portal.push_back(batch);
        }
    }
}

impl Role for GatewayTunnel {
    type FromPortal = PortalToGateway;
    type ToPortal = GatewayToPortal;
    type Status = GatewayStatus;

    fn handle_portal(&mut self, message: PortalToGateway, now: Instant, wall: Timestamp) {
        self.flow_reports.set_clock(now, wall);
        match message {
            PortalToGateway::FlowsStored { batch } => {
                self.flow_reports.stored(batch);
                // Room in the window: what waits goes on.
                self.report_flows(now);
            }
            PortalToGateway::Init {
                interface,
                relays,
                authorizations,
            } => {
                tracing::info!(
                    ipv4 = %interface.ipv4, ipv6 = %interface.ipv6, relays = relays.len(),
                    authorizations = authorizations.len(), "portal init"
                );
                // A message from the portal: the channel is up (the shell
                // says so too; a world without a shell only sends this).
                self.connected = true;
                self.init_interface(&interface);
                self.node.add_relays(&relays, now);
                self.replace_authorizations(&authorizations);
                for authorization in authorizations {
                    self.authorize(authorization, now, wall);
                }
            }
            PortalToGateway::Authorize {
                reference,
                authorization,
            } => {
                self.authorize(*authorization, now, wall);
                self.out
                    .portal
                    .push_back(GatewayToPortal::Authorized { reference });
            }
            PortalToGateway::Revoke {
                client_id,
                resource_id,
            } => {
                self.authorizations.revoke(client_id, resource_id);
                tracing::info!(client = %client_id, resource = %resource_id, "access revoked");
                if !self.authorizations.has_client(client_id) {
                    self.node.remove_peer(client_id);
                }
            }
            PortalToGateway::ResourceUpdated { resource } => {
                tracing::info!(resource = %resource.id, "resource updated");
                self.authorizations.update_resource(resource);
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
                self.node.add_relays(&added, now);
                if !removed.is_empty() {
                    // The node keeps a removed relay's allocation until it
                    // fails; peers move off it by themselves.
                    tracing::info!(?removed, "relays removed");
                }
            }
            PortalToGateway::Disconnect { reason } => match reason {
                DisconnectReason::TokenRevoked | DisconnectReason::TokenExpired => {
                    self.out.effects.push_back(Effect::Stop(Stop {
                        reason,
                        advice: "create a new gateway token",
                    }))
                }
                DisconnectReason::DuplicateDevice => tracing::error!(
                    "the portal refused this gateway: another device with the same device id \
                     and another key is connected (a copied state directory or cloned VM \
                     image?); give this one its own id: stop it, delete gateway-device-id in its \
                     state directory, start it again. Retrying meanwhile"
                ),
                _ => tracing::warn!(?reason, "the portal disconnected this gateway"),
            },
            PortalToGateway::Error { message, .. } => {
                tracing::warn!(%message, "the portal reported an error")
            }
        }
        self.drain();
    }

    fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Resolved { lookup, result } => match self.lookups.take(lookup) {
                Some(Lookup::Names { client, assignment }) => {
                    self.on_resolved(client, assignment, result, now)
                }
                Some(Lookup::Query { .. }) | None => {}
            },
            Input::ResolverAnswer { lookup, answer } => {
                if let Some(Lookup::Query { client, query }) = self.lookups.take(lookup) {
                    let answer = match answer {
                        Some(answer) => fit(&answer),
                        None => answer_with(&query, ResponseCode::ServFail),
                    };
                    if let Some(answer) = answer {
                        self.send_to_client(client, &TunnelMessage::DnsAnswer { answer }, now);
                    }
                }
            }
            Input::PortalConnected(connected) => {
                if connected && !self.connected {
                    self.node.announce_candidates();
                }
                if !connected {
                    self.flow_reports.disconnected(now);
                }
                self.connected = connected;
                self.report_flows(now);
            }
            Input::NetworkChanged { locals, .. } => self.node.network_changed(&locals, now),
            Input::HostAddresses(addresses) => {
                self.host_addresses = addresses;
                self.own_addresses_changed();
            }
            // Apps' queries go to a client's stub, not here.
            Input::DnsQuery { .. } | Input::Internet(_) => {}
        }
        self.drain();
    }

    fn encapsulate(
        &mut self,
        packet: &mut [u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let client = match self.authorizations.handle_to_client(packet, now) {
            Ok(client) => client,
            Err(why) => {
                self.out.dropped.add(why.label());
                return None;
            }
        };
        self.replies.replied();
        let sent = self.node.encapsulate(client, packet, now, out);
        self.drain();
        sent
    }

    fn decapsulate(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
        let received = self.node.decapsulate(source, datagram, now, out);
        let forward = match received {
            Some((client, n)) => match out.get_mut(..n) {
                Some(packet) => {
                    let admitted = self.admit(client, packet, now);
                    if admitted {
                        self.replies.forwarded(now);
                    }
                    admitted.then_some(n)
                }
                None => None,
            },
            None => None,
        };
        self.drain();
        forward
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(forwarded) = self.replies.check(now) {
            tracing::warn!(
                forwarded,
                "clients' packets left for the resources but nothing came back in 10 s: \
                 the host's firewall may drop forwarded packets (see `postern gateway check`), \
                 or the resources route their replies elsewhere"
            );
            self.out.dropped.add("unanswered");
        }
        self.node.handle_timeout(now);
        self.authorizations.handle_timeout(now);
        // Answers that expired are looked up again while the client may
        // still use the resource; otherwise forgotten.
        for (client, assignment) in self.lookups.due(now) {
            if self
                .authorizations
                .check_assignment(
                    client,
                    assignment.resource,
                    &assignment.name,
                    &assignment.proxies,
                )
                .is_ok()
                && let Some(effect) = self.lookups.resolve(client, assignment)
            {
                self.out.effects.push_back(effect);
            }
        }
        self.report_flows(now);
        self.drain();
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.node.poll_timeout(),
            self.authorizations.poll_timeout(),
            self.lookups.poll_timeout(),
            self.replies.next_check(),
            self.flow_reports.poll_timeout(self.connected),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit(&mut self.node)
    }

    fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.out.tun_packets.pop_front()
    }

    fn poll_portal(&mut self) -> Option<GatewayToPortal> {
        self.out.portal.pop_front()
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        self.out.effects.pop_front()
    }

    /// Every client hears a goodbye through its tunnel and asks the portal
    /// for another gateway at once (F20).
    fn stop(&mut self, now: Instant) {
        let clients: Vec<ClientId> = self.node.peers().collect();
        let mut told = 0;
        for client in clients {
            if self.authorizations.client_addresses(client).is_some() {
                self.send_to_client(client, &TunnelMessage::Goodbye, now);
                told += 1;
            }
        }
        tracing::info!(clients_told = told, "stopping");
    }

    fn status(&self, _now: Instant) -> GatewayStatus {
        let mut clients: Vec<ClientLine> = self
            .node
            .peers()
            .map(|client| ClientLine {
                id: client.to_string(),
                path: match self.node.path(client) {
                    Some((_, _, true)) => "relayed",
                    Some((_, _, false)) => "direct",
                    None => "connecting",
                }
                .to_string(),
            })
            .collect();
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        GatewayStatus {
            connected: self.connected,
            clients,
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            peers: self.node.peer_count(),
            entries: self.authorizations.client_count(),
        }
    }

    fn dropped(&self) -> &Counters {
        &self.out.dropped
    }

    fn errors(&self) -> &Counters {
        self.node.errors()
    }
}

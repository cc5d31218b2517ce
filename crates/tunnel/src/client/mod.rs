//! The client role (SPEC F16-F24) as one sans-IO state machine: portal
//! messages become resources, routes, DNS configuration, grants and tunnel
//! peers; app packets are routed, buffered while access is asked for, and
//! encrypted to their gateway; the DNS stub answers for resource names and
//! the gateway learns each name's proxies through the tunnel before its
//! traffic flows. The device loop only moves bytes and applies
//! [`Effect`]s.
//!
//! - [`access`]: per-resource access on first packet, bounded buffering;
//! - [`names`]: what waits on a gateway's confirmation of DNS names;
//! - [`status`]: what `postern client status` shows.

pub mod access;
mod names;
pub mod status;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use ipnet::IpNet;
use jiff::Timestamp;
use postern_model::plan::{DNS_SENTINEL_V4, DNS_SENTINEL_V6};
use postern_model::protocol::{ClientToPortal, DisconnectReason, Interface, PortalToClient};
use postern_model::{GatewayId, ResourceId};

pub use access::{
    Access, ClientConfig, ClientEvent, ClientState, DropReason, ResourceStatus, Verdict,
    routed_prefixes,
};
use names::Names;
use status::{ClientStatus, ResourceLine, TunnelAddresses};

use crate::control::{self, AssignmentResult, ProxyAssignment, TunnelMessage};
use crate::counters::Counters;
use crate::dns::{Assignment, DnsStub, StubAnswer, routing_domain};
use crate::effect::{DnsConfig, Effect, Input, QueryId, Stop, TunConfig};
use crate::flows::{self, FlowRefusal, Flows};
use crate::node::{Node, NodeEvent, PeerConfig, Transmit};
use crate::outbox::Outbox;
use crate::packet::Packet;
use crate::role::{Gauges, Role, deadline};

pub struct ClientTunnel {
    node: Node<GatewayId>,
    access: ClientState,
    stub: DnsStub,
    names: Names,
    /// The tunnel addresses, from the first `init`.
    addresses: Option<TunnelAddresses>,
    search_domain: Option<String>,
    /// Resolvers the portal configured for names that are not resources.
    portal_upstreams: Vec<IpAddr>,
    /// Each gateway's tunnel addresses: in-tunnel messages come from them.
    gateways: HashMap<GatewayId, [IpAddr; 2]>,
    connected: bool,
    /// What the shell was last told.
    routes: Option<(BTreeSet<IpNet>, BTreeSet<IpNet>)>,
    /// Resource prefixes not routed (and warned about once).
    refused_routes: BTreeSet<IpNet>,
    /// The relays' addresses: never routed into the tunnel.
    relay_addresses: BTreeSet<IpAddr>,
    dns: Option<DnsConfig>,
    /// The flows the apps opened, per gateway: only answers to them come
    /// in (a gateway, or a host behind it, cannot open connections to us).
    flows: HashMap<GatewayId, Flows>,
    next_sweep: Option<Instant>,
    out: Outbox<ClientToPortal>,
}

impl ClientTunnel {
    /// The client on the socket whose addresses are `locals` (one per
    /// family), with this process's WireGuard secret; `seed` is fresh
    /// randomness (TURN transaction ids).
    pub fn new(locals: &[SocketAddr], secret: [u8; 32], seed: u64, config: ClientConfig) -> Self {
        ClientTunnel {
            node: Node::new(locals, secret, true, seed),
            access: ClientState::new(config),
            stub: DnsStub::new(),
            names: Names::default(),
            addresses: None,
            search_domain: None,
            portal_upstreams: Vec::new(),
            gateways: HashMap::new(),
            connected: false,
            routes: None,
            refused_routes: BTreeSet::new(),
            relay_addresses: BTreeSet::new(),
            dns: None,
            flows: HashMap::new(),
            next_sweep: None,
            out: Outbox::new(),
        }
    }

    /// The tunnel interface from the first `init` (the portal keeps a
    /// device's addresses stable; a later change needs a restart).
    fn init_interface(&mut self, interface: &Interface) {
        let addresses = TunnelAddresses {
            ipv4: interface.ipv4,
            ipv6: interface.ipv6,
        };
        self.search_domain = interface.search_domain.clone();
        self.portal_upstreams = interface.dns_upstreams.clone();
        match self.addresses {
            None => {
                self.addresses = Some(addresses);
                self.out.effects.push_back(Effect::Interface(TunConfig {
                    ipv4: interface.ipv4,
                    ipv4_prefix: 32,
                    ipv6: interface.ipv6,
                    ipv6_prefix: 128,
                }));
            }
            Some(known) if known != addresses => tracing::warn!(
                ?known, new = ?addresses,
                "the portal changed this device's tunnel addresses; restart the client to use them"
            ),
            Some(_) => {}
        }
    }

    /// The relays' addresses stay outside the tunnel.
    fn note_relays(&mut self, relays: &[postern_model::protocol::RelayInfo]) {
        self.relay_addresses.extend(
            relays
                .iter()
                .flat_map(|r| r.addresses.iter().map(|a| a.ip())),
        );
    }

    /// Addresses no resource route may cover: the portal's and the relays'.
    fn protected(&self) -> Vec<IpAddr> {
        let mut protected = self.access.config().protected.clone();
        protected.extend(self.relay_addresses.iter().copied());
        protected
    }

    /// The resource list changed: the stub's patterns, the routes and the
    /// DNS domains follow from the access table, the one copy.
    fn resources_changed(&mut self) {
        let resources: Vec<_> = self.access.resources().cloned().collect();
        self.stub.set_resources(&resources);
        if self.addresses.is_none() {
            return;
        }
        let (routes, refused) = self.access.routes(&self.protected());
        for prefix in refused {
            if self.refused_routes.insert(prefix) {
                tracing::warn!(%prefix, "not routing a resource prefix that is too wide or covers the portal or a relay");
                self.out.dropped.add("route_refused");
            }
        }
        // The internet resource's default routes leave out its exclusions
        // and what must stay on the host's path (portal, relays).
        let exclusions: BTreeSet<IpNet> = match self.access.routed_internet() {
            Some(internet) => internet
                .address
                .exclusions()
                .iter()
                .copied()
                .chain(self.protected().into_iter().map(IpNet::from))
                .collect(),
            None => BTreeSet::new(),
        };
        let plan = (routes, exclusions);
        if self.routes.as_ref() != Some(&plan) {
            self.routes = Some(plan.clone());
            let (routes, exclusions) = plan;
            self.out
                .effects
                .push_back(Effect::Routes { routes, exclusions });
        }
        let mut routing_domains: Vec<String> = resources
            .iter()
            .filter_map(|r| routing_domain(r.address.dns_pattern()?.as_str()))
            .collect();
        // With the internet resource on, every name comes to the stub (a
        // routing domain of "." under systemd-resolved).
        if self.access.routed_internet().is_some() {
            routing_domains.push(".".to_string());
        }
        routing_domains.sort();
        routing_domains.dedup();
        let dns = DnsConfig {
            sentinels: vec![IpAddr::V4(DNS_SENTINEL_V4), IpAddr::V6(DNS_SENTINEL_V6)],
            search_domain: self.search_domain.clone(),
            routing_domains,
            upstreams: self.portal_upstreams.clone(),
        };
        if self.dns.as_ref() != Some(&dns) {
            self.dns = Some(dns.clone());
            self.out.effects.push_back(Effect::Dns(dns));
        }
    }

    /// `access_granted`: DNS resources with names wait until the gateway
    /// has mapped them.
    fn grant(
        &mut self,
        resource: ResourceId,
        gateway: GatewayId,
        expires: Option<Instant>,
        now: Instant,
    ) {
        let names: Vec<Assignment> = self.names.of(resource).to_vec();
        if names.is_empty() {
            self.access.access_granted(resource, gateway, expires);
            self.send_gateway_queries(now);
            return;
        }
        for assignment in &names {
            self.send_assignment(gateway, assignment, now);
        }
        self.names.wait_for(resource, gateway, expires, now);
    }

    fn send_assignment(&mut self, gateway: GatewayId, assignment: &Assignment, now: Instant) {
        let message = TunnelMessage::AssignProxies(ProxyAssignment {
            resource: assignment.resource,
            name: assignment.name.clone(),
            proxies: assignment.addresses(),
        });
        self.send_to_gateway(gateway, &message, now);
    }

    /// An in-tunnel message to a gateway's own tunnel address.
    fn send_to_gateway(&mut self, gateway: GatewayId, message: &TunnelMessage, now: Instant) {
        let to = self.gateways.get(&gateway).and_then(|a| match a[0] {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
        let (Some(from), Some(to)) = (self.addresses.map(|a| a.ipv4), to) else {
            return;
        };
        let packet = control::encode(message, from, to);
        self.send_packet(gateway, &packet, now);
    }

    /// Notes the flow of a packet an app sends through `gateway` to
    /// `resource`; false when the table is full (the packet is dropped,
    /// counted).
    fn opens(
        &mut self,
        gateway: GatewayId,
        resource: Option<ResourceId>,
        packet: &[u8],
        now: Instant,
    ) -> bool {
        let Ok(parsed) = Packet::parse(packet) else {
            return false;
        };
        let opened = self
            .flows
            .entry(gateway)
            .or_default()
            .outbound_for(&parsed, resource, None, now);
        self.next_sweep.get_or_insert(now + flows::SWEEP);
        match opened {
            Ok(()) => true,
            Err(refusal) => {
                self.out.dropped.add(refusal.label());
                false
            }
        }
    }

    /// Whether a packet out of `gateway`'s tunnel answers a flow an app
    /// opened through it (counted if not).
    fn answers(&mut self, gateway: GatewayId, packet: &[u8], now: Instant) -> bool {
        let verdict = match (self.flows.get_mut(&gateway), Packet::parse(packet)) {
            (Some(flows), Ok(parsed)) => flows.inbound(&parsed, now),
            (None, Ok(_)) => Err(FlowRefusal::Unsolicited),
            (_, Err(_)) => Err(FlowRefusal::Malformed),
        };
        match verdict {
            Ok(()) => true,
            Err(refusal) => {
                self.out.dropped.add(refusal.label());
                false
            }
        }
    }

    /// A packet to a gateway on the slow path (copied into a transmit).
    fn send_packet(&mut self, gateway: GatewayId, packet: &[u8], now: Instant) {
        self.out.send_packet(&mut self.node, gateway, packet, now);
    }

    /// Sends the waiting gateway queries whose resource is granted now.
    fn send_gateway_queries(&mut self, now: Instant) {
        let access = &self.access;
        let ready = self.names.ready_queries(|r| access.gateway_of(r));
        for (gateway, resource, query) in ready {
            self.send_to_gateway(gateway, &TunnelMessage::DnsQuery { resource, query }, now);
        }
    }

    fn answer(&mut self, query: QueryId, answer: Option<Vec<u8>>) {
        self.out
            .effects
            .push_back(Effect::DnsAnswer { query, answer });
    }

    /// One query from an app to the stub.
    fn handle_query(&mut self, query: QueryId, bytes: Vec<u8>, now: Instant) {
        match self.stub.handle_query(&bytes) {
            StubAnswer::Reply(answer) => {
                let mut hold = None;
                while let Some(assignment) = self.stub.poll_assigned() {
                    self.access
                        .route_proxies(assignment.resource, &assignment.addresses());
                    let to = self
                        .access
                        .gateway_of(assignment.resource)
                        .or_else(|| self.names.pending_gateway(assignment.resource));
                    if let Some(gateway) = to {
                        self.send_assignment(gateway, &assignment, now);
                        self.names.also_wait(assignment.resource, &assignment.name);
                        hold = Some((assignment.resource, assignment.name.clone()));
                    }
                    self.names.record(assignment);
                }
                match hold {
                    Some((resource, name)) => self.names.hold(resource, name, answer, query, now),
                    None => self.answer(query, Some(answer)),
                }
            }
            // With the internet resource on, every other name too is
            // resolved at the far end, through the tunnel, as the traffic
            // to it goes (SPEC 7.4).
            // Not while the portal is away: the daemon's own lookup of the
            // portal's name must not wait for access only the portal grants.
            StubAnswer::Upstream => match self
                .access
                .routed_internet()
                .map(|r| r.id)
                .filter(|_| self.connected)
            {
                Some(internet) => self.query_gateway(internet, query, bytes, now),
                None => self
                    .out
                    .effects
                    .push_back(Effect::ForwardDns { query, bytes }),
            },
            // Other questions about resource names: the gateway's resolver
            // answers through the tunnel (never the upstream: the name
            // would leak), once access is granted.
            StubAnswer::Gateway { resource } => self.query_gateway(resource, query, bytes, now),
            StubAnswer::Drop => self.answer(query, None),
        }
    }

    /// A query for the gateway of `resource`'s resolver, sent once access
    /// to it is granted (asked for now).
    fn query_gateway(
        &mut self,
        resource: ResourceId,
        query: QueryId,
        bytes: Vec<u8>,
        now: Instant,
    ) {
        if bytes.len() > control::MAX_DNS_MESSAGE {
            self.answer(query, servfail(&bytes));
            return;
        }
        self.access.request(resource, now);
        self.names.queue_query(resource, bytes, query, now);
        self.send_gateway_queries(now);
    }

    /// The gateway's answer to an assignment.
    fn on_assigned(&mut self, gateway: GatewayId, result: AssignmentResult, now: Instant) {
        match &result.error {
            None => {
                tracing::debug!(name = %result.name, mapped = result.mapped, "gateway mapped the proxies")
            }
            Some(error) => {
                tracing::info!(name = %result.name, %error, "the gateway could not map the proxies")
            }
        }
        let (answers, grant) = self.names.confirmed(gateway, &result);
        for (query, answer) in answers {
            self.answer(query, Some(answer));
        }
        if let Some(grant) = grant {
            self.access
                .access_granted(result.resource, grant.gateway, grant.expires);
            self.send_gateway_queries(now);
        }
    }

    /// Whether a packet out of a gateway's tunnel is for the apps; a message
    /// from the gateway itself is handled here instead.
    fn is_for_apps(&mut self, gateway: GatewayId, packet: &[u8], now: Instant) -> bool {
        // Only UDP can be a message: skip the parse for everything else.
        let udp = match packet.first().map(|b| b >> 4) {
            Some(4) => packet.get(9) == Some(&17),
            Some(6) => packet.get(6) == Some(&17),
            _ => false,
        };
        if !udp {
            return true;
        }
        let Some(addresses) = self.gateways.get(&gateway) else {
            return true;
        };
        let Some(message) = control::decode(packet, addresses) else {
            return true;
        };
        match message {
            TunnelMessage::Goodbye => {
                tracing::info!(%gateway, "the gateway is stopping; asking the portal again");
                self.lose_gateway(gateway);
            }
            TunnelMessage::Assigned(result) => self.on_assigned(gateway, result, now),
            TunnelMessage::DnsAnswer { answer } => {
                if let Some(query) = self.names.answered(gateway, &answer) {
                    self.answer(query, Some(answer));
                }
            }
            // Only clients say these.
            TunnelMessage::AssignProxies(_) | TunnelMessage::DnsQuery { .. } => {}
        }
        false
    }

    /// Access to `resource` ended: the flows the apps opened to it are
    /// forgotten (nothing from the far end answers them any more) and the
    /// shell hears which, to close them.
    fn end_flows(&mut self, resource: ResourceId, now: Instant) {
        let ended: Vec<_> = self
            .flows
            .values_mut()
            .flat_map(|flows| flows.end_resource(resource, now))
            .collect();
        if !ended.is_empty() {
            tracing::info!(%resource, flows = ended.len(), "closing the flows of a resource whose access ended");
            self.out.effects.push_back(Effect::FlowsEnded(ended));
        }
    }

    /// A gateway is gone: every resource through it asks again.
    fn lose_gateway(&mut self, gateway: GatewayId) {
        self.access.gateway_lost(gateway);
        self.names.forget_gateway(gateway);
        self.flows.remove(&gateway);
        self.node.remove_peer(gateway);
        self.gateways.remove(&gateway);
    }

    /// Moves what the sub-machines queued along: access requests to the
    /// portal, buffered packets to gateways, ICMP replies to the apps,
    /// candidates to the portal, dead gateways forgotten.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(event) = self.access.poll_event() {
                moved = true;
                match event {
                    ClientEvent::RequestAccess {
                        reference,
                        resource_id,
                        connected_gateway_ids,
                    } => self.out.portal.push_back(ClientToPortal::RequestAccess {
                        reference,
                        resource_id,
                        connected_gateway_ids,
                    }),
                    ClientEvent::Deliver {
                        gateway,
                        resource,
                        packet,
                    } => {
                        if self.opens(gateway, Some(resource), &packet, now) {
                            self.send_packet(gateway, &packet, now)
                        }
                    }
                    ClientEvent::Reply(packet) => self.out.tun_packets.push_back(packet),
                }
            }
            while let Some(event) = self.node.poll_event() {
                moved = true;
                match event {
                    NodeEvent::Candidate { peer, candidate } => {
                        self.out.portal.push_back(ClientToPortal::IceCandidates {
                            peer_id: peer,
                            candidates: vec![candidate],
                        })
                    }
                    NodeEvent::Connected { peer, relayed } => {
                        tracing::info!(gateway = %peer, relayed, "tunnel up")
                    }
                    NodeEvent::Dead { peer } => {
                        tracing::info!(gateway = %peer, "gateway went quiet; asking the portal again");
                        self.lose_gateway(peer);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The gateway a resource is granted through now, if it is.
    pub fn gateway_of(&self, resource: ResourceId) -> Option<GatewayId> {
        self.access.gateway_of(resource)
    }

    /// Sends `packet` to `gateway` through the tunnel past the client's own
    /// checks (routes, filters, access): what a modified client can do.
    /// Its flow is still noted, so a test sees what comes back. For tests
    /// that play the attacker.
    #[cfg(feature = "malicious")]
    pub fn send_unchecked(&mut self, gateway: GatewayId, packet: &[u8], now: Instant) {
        self.opens(gateway, None, packet, now);
        self.send_packet(gateway, packet, now);
    }

    /// The node, for tests that look at paths.
    pub fn node(&self) -> &Node<GatewayId> {
        &self.node
    }
}

impl Role for ClientTunnel {
    type FromPortal = PortalToClient;
    type ToPortal = ClientToPortal;
    type Status = ClientStatus;

    fn handle_portal(&mut self, message: PortalToClient, now: Instant, wall: Timestamp) {
        match message {
            PortalToClient::Init {
                interface,
                resources,
                relays,
            } => {
                tracing::info!(
                    ipv4 = %interface.ipv4, ipv6 = %interface.ipv6,
                    resources = resources.len(), relays = relays.len(), "portal init"
                );
                // A message from the portal: the channel is up (the shell
                // says so too; a world without a shell only sends this).
                self.connected = true;
                self.init_interface(&interface);
                self.node.add_relays(&relays, now);
                self.note_relays(&relays);
                self.access.set_resources(resources);
                self.resources_changed();
            }
            PortalToClient::ResourceUpserted { resource } => {
                tracing::info!(resource = %resource.id, name = %resource.name, "resource available");
                self.access.upsert_resource(resource);
                self.resources_changed();
            }
            PortalToClient::ResourceRemoved { id } => {
                tracing::info!(resource = %id, "resource removed");
                self.end_flows(id, now);
                self.access.remove_resource(id);
                self.resources_changed();
            }
            PortalToClient::RelaysChanged { added, .. } => {
                self.node.add_relays(&added, now);
                self.note_relays(&added);
                self.resources_changed();
            }
            PortalToClient::AccessGranted {
                resource_id,
                gateway,
                preshared_key,
                ice,
                expires_at,
                ..
            } => {
                if !self
                    .node
                    .has_keys(gateway.id, &gateway.public_key.0, &preshared_key.0)
                {
                    self.node.add_peer(
                        gateway.id,
                        PeerConfig {
                            public_key: gateway.public_key.0,
                            preshared_key: preshared_key.0,
                            local_ice: ice.client,
                            remote_ice: ice.gateway,
                        },
                        now,
                    );
                }
                self.gateways.insert(gateway.id, gateway.addresses());
                tracing::info!(resource = %resource_id, gateway = %gateway.id, "access granted");
                self.grant(
                    resource_id,
                    gateway.id,
                    deadline(expires_at, now, wall),
                    now,
                );
            }
            PortalToClient::AccessDenied {
                resource_id,
                reason,
                violated,
                ..
            } => {
                tracing::info!(resource = %resource_id, ?reason, ?violated, "access denied");
                self.access
                    .access_denied(resource_id, reason, violated, now);
            }
            PortalToClient::IceCandidates {
                peer_id,
                candidates,
            } => {
                for candidate in candidates {
                    self.node.add_remote_candidate(peer_id, &candidate, now);
                }
            }
            PortalToClient::IceCandidatesRemoved { .. } => {}
            PortalToClient::AccessRevoked { resource_id } => {
                tracing::info!(resource = %resource_id, "access revoked");
                self.end_flows(resource_id, now);
                self.access.access_revoked(resource_id);
                self.names.cancel(resource_id);
            }
            PortalToClient::Disconnect { reason } => match reason {
                DisconnectReason::TokenRevoked | DisconnectReason::TokenExpired => {
                    self.out.effects.push_back(Effect::Stop(Stop {
                        reason,
                        advice: "sign in again with `postern client sign-in`",
                    }))
                }
                DisconnectReason::DuplicateDevice => tracing::error!(
                    "the portal refused this client: another device with the same device id \
                     and another key is connected (a copied state directory or cloned VM \
                     image?); give this one its own id: stop it, delete client-device-id in its \
                     state directory, start it again. Retrying meanwhile"
                ),
                _ => tracing::warn!(?reason, "the portal disconnected this client"),
            },
            PortalToClient::Error { message, .. } => {
                tracing::warn!(%message, "the portal reported an error")
            }
        }
        self.drain(now);
    }

    fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::DnsQuery { query, bytes } => self.handle_query(query, bytes, now),
            Input::PortalConnected(connected) => {
                // Candidates sent while the channel was down were dropped
                // with it: the gateways hear ours again.
                if connected && !self.connected {
                    self.node.announce_candidates();
                    self.access.ask_again(now);
                }
                self.connected = connected;
            }
            Input::Internet(on) => {
                tracing::info!(
                    on,
                    "internet resource turned {}",
                    if on { "on" } else { "off" }
                );
                self.access.set_internet(on);
                self.resources_changed();
            }
            Input::NetworkChanged { locals, woke } => {
                self.node.network_changed(&locals, now);
                // After a long sleep the gateways' side of each session may
                // be gone too (its liveness gave up, its WireGuard session
                // aged out): ask the portal afresh at the next packet rather
                // than wait out a restarted ICE that nobody answers.
                if woke {
                    let gateways: Vec<GatewayId> = self.node.peers().collect();
                    for gateway in gateways {
                        tracing::info!(%gateway, "woke up: asking the portal for this gateway again");
                        self.lose_gateway(gateway);
                    }
                }
            }
            // A gateway's concerns: never asked of a client.
            Input::Resolved { .. } | Input::ResolverAnswer { .. } | Input::HostAddresses(_) => {}
        }
        self.drain(now);
    }

    fn encapsulate(
        &mut self,
        packet: &mut [u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let sent = match self.access.handle_packet(packet, now) {
            Verdict::ToGateway { gateway, resource }
                if self.opens(gateway, Some(resource), packet, now) =>
            {
                self.node.encapsulate(gateway, packet, now, out)
            }
            Verdict::ToGateway { .. } => None,
            Verdict::Reply(reply) => {
                self.out.dropped.add("refused");
                self.out.tun_packets.push_back(reply);
                None
            }
            Verdict::Dropped(reason) => {
                self.out.dropped.add(reason.label());
                None
            }
            Verdict::Buffered => None,
        };
        self.drain(now);
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
        let for_apps = match received {
            Some((gateway, n)) => match out.get(..n) {
                Some(packet) => (self.is_for_apps(gateway, packet, now)
                    && self.answers(gateway, packet, now))
                .then_some(n),
                None => None,
            },
            None => None,
        };
        self.drain(now);
        for_apps
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.access.handle_timeout(now);
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.next_sweep = Some(now + flows::SWEEP);
            for flows in self.flows.values_mut() {
                flows.expire(now);
            }
        }
        let expired = self.names.expire(now);
        for (query, answer) in expired.answers {
            self.answer(query, Some(answer));
        }
        for (resource, grant) in expired.grants {
            tracing::info!(%resource, "the gateway did not confirm the names in time; granting anyway");
            self.access
                .access_granted(resource, grant.gateway, grant.expires);
        }
        self.send_gateway_queries(now);
        // Queries nobody answered in time.
        for (query, bytes) in expired.queries {
            self.answer(query, servfail(&bytes));
        }
        self.drain(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.node.poll_timeout(),
            self.access.poll_timeout(),
            self.names.poll_timeout(),
            self.next_sweep,
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

    fn poll_portal(&mut self) -> Option<ClientToPortal> {
        self.out.portal.pop_front()
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        self.out.effects.pop_front()
    }

    fn stop(&mut self, _now: Instant) {}

    fn status(&self, _now: Instant) -> ClientStatus {
        let resources = self
            .access
            .status()
            .into_iter()
            .map(|line| self.status_line(line))
            .collect();
        ClientStatus {
            connected: self.connected,
            addresses: self.addresses,
            resources,
            internet: self.access.has_internet().then(|| {
                let on = self.access.routed_internet().is_some();
                if on { "on" } else { "off" }.to_string()
            }),
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            peers: self.node.peer_count(),
            entries: self.access.resources().count(),
        }
    }

    fn dropped(&self) -> &Counters {
        &self.out.dropped
    }

    fn errors(&self) -> &Counters {
        self.node.errors()
    }
}

impl ClientTunnel {
    fn status_line(&self, line: ResourceStatus) -> ResourceLine {
        let mut out = ResourceLine {
            id: line.resource.id.to_string(),
            name: line.resource.name.clone(),
            address: line.resource.address.to_text(),
            access: "idle".into(),
            reason: None,
            gateway: None,
            path: None,
            peer: None,
            relay: None,
            bytes_sent: 0,
            bytes_received: 0,
        };
        match line.access {
            Access::Idle => {}
            Access::Requested { .. } => out.access = "requested".into(),
            Access::Granted { gateway, .. } => {
                out.access = "granted".into();
                out.gateway = Some(gateway.to_string());
                let path = self.node.path(gateway);
                out.path = Some(
                    match path {
                        Some((_, _, true)) => "relayed",
                        Some((_, _, false)) => "direct",
                        None => "connecting",
                    }
                    .into(),
                );
                out.peer = path.map(|(_, remote, _)| remote.to_string());
                out.relay = self.node.path_relay(gateway).map(|r| r.to_string());
                if let Some((sent, received)) = self.node.traffic(gateway) {
                    out.bytes_sent = sent as u64;
                    out.bytes_received = received as u64;
                }
            }
            Access::Denied {
                reason, violated, ..
            } => {
                out.access = "denied".into();
                let mut why = format!("{reason:?}").to_lowercase();
                if !violated.is_empty() {
                    why = format!("{why}: {}", violated.join(", "));
                }
                out.reason = Some(why);
            }
        }
        out
    }
}

/// SERVFAIL for a query (no answer could be had).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    let mut answer = Message::error_msg(message.metadata.id, OpCode::Query, ResponseCode::ServFail);
    answer.metadata.recursion_desired = message.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.queries = message.queries;
    answer.to_vec().ok()
}

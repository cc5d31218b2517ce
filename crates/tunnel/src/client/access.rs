//! The client's decisions about packets from its apps (SPEC F9, F12, F16,
//! F20): route the destination to a resource, pre-check the resource's
//! filters, and ask the portal for access on the first packet, keeping the
//! first packets (bounded) until the answer comes. Granted packets go to the
//! gateway; denied ones get an ICMP reply and the reason is kept for
//! `postern client status`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use postern_model::ResourceType;
use postern_model::filters_allow;
use postern_model::protocol::{DenyReason, ResourceDescription};
use postern_model::{GatewayId, ResourceId};

use crate::icmp::{Unreachable, unreachable};
use crate::packet::Packet;
use crate::router::Router;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Packets kept per resource while access is requested.
    pub max_buffered_packets: usize,
    /// Bytes kept per resource while access is requested.
    pub max_buffered_bytes: usize,
    /// How long to wait for the portal's answer before giving up (and
    /// answering the buffered packets with ICMP host unreachable).
    pub request_timeout: Duration,
    /// After a denial, packets are answered at once for this long before the
    /// portal is asked again.
    pub deny_hold: Duration,
    /// Addresses that must stay outside the tunnel whatever the portal says
    /// (its own: a route over it would cut the control channel).
    pub protected: Vec<IpAddr>,
    /// The user turned the internet resource off (`postern client internet
    /// off`): it is not routed even when granted.
    pub internet_off: bool,
    /// Every destination comes to the role, not only the routed ones (a
    /// userspace network stack has no routing table): a packet to an
    /// address of no resource is refused like a denied one, with ICMP
    /// "administratively prohibited", so the app hears "not allowed".
    pub refuse_unrouted: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_buffered_packets: 64,
            max_buffered_bytes: 128 * 1024,
            request_timeout: Duration::from_secs(20),
            deny_hold: Duration::from_secs(5),
            protected: Vec::new(),
            internet_off: false,
            refuse_unrouted: false,
        }
    }
}

/// Where a resource stands for this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not asked for yet (or revoked, or expired).
    Idle,
    Requested {
        reference: String,
        since: Instant,
    },
    Granted {
        gateway: GatewayId,
        expires: Option<Instant>,
    },
    Denied {
        reason: DenyReason,
        violated: Vec<String>,
        until: Instant,
    },
}

/// What to do with one packet from an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Encrypt and send to this gateway (access to `resource` lets it).
    ToGateway {
        gateway: GatewayId,
        resource: ResourceId,
    },
    /// Kept until access is decided.
    Buffered,
    /// Write this packet back to the app (an ICMP error).
    Reply(Vec<u8>),
    Dropped(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    /// No resource covers the destination.
    NoRoute,
    /// Access is being requested and the buffer is full.
    BufferFull,
    /// Refused, but an ICMP error is never answered with another.
    Refused,
}

impl DropReason {
    /// The label of the drop counters.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::BufferFull => "buffer_full",
            DropReason::Refused => "refused",
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Send `request_access` to the portal.
    RequestAccess {
        reference: String,
        resource_id: ResourceId,
        connected_gateway_ids: Vec<GatewayId>,
    },
    /// Send a buffered packet to the gateway now that access is granted.
    Deliver {
        gateway: GatewayId,
        resource: ResourceId,
        packet: Vec<u8>,
    },
    /// Write this packet to the app.
    Reply(Vec<u8>),
}

/// One line of `postern client status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceStatus {
    pub resource: ResourceDescription,
    pub access: Access,
}

struct Entry {
    description: ResourceDescription,
    access: Access,
    buffer: VecDeque<Vec<u8>>,
    buffered_bytes: usize,
    /// Proxy addresses the DNS stub handed out for this (DNS) resource.
    proxies: Vec<IpNet>,
}

pub struct ClientState {
    config: ClientConfig,
    router: Router,
    resources: HashMap<ResourceId, Entry>,
    events: VecDeque<ClientEvent>,
    next_ref: u64,
}

/// The narrowest prefix a resource may route: a wider one is (nearly) a
/// default route.
const WIDEST_V4: u8 = 8;
const WIDEST_V6: u8 = 16;

/// Whether a resource's prefix may be routed into the tunnel.
fn route_is_sane(prefix: &IpNet, protected: &[IpAddr]) -> bool {
    let widest = match prefix {
        IpNet::V4(_) => WIDEST_V4,
        IpNet::V6(_) => WIDEST_V6,
    };
    prefix.prefix_len() >= widest && !protected.iter().any(|ip| prefix.contains(ip))
}

/// The prefixes a resource routes (DNS resources route their proxy
/// addresses, assigned by the DNS stub). The internet resource is routed
/// apart ([`ClientState::routes`]): its default routes need exclusions.
pub fn routed_prefixes(resource: &ResourceDescription) -> Vec<IpNet> {
    match resource.kind() {
        ResourceType::Internet => Vec::new(),
        _ => resource.address.prefixes(),
    }
}

impl ClientState {
    pub fn new(config: ClientConfig) -> Self {
        ClientState {
            config,
            router: Router::default(),
            resources: HashMap::new(),
            events: VecDeque::new(),
            next_ref: 0,
        }
    }

    /// Replaces the resource list (the portal's `init`); access to resources
    /// that stay is kept.
    pub fn set_resources(&mut self, resources: Vec<ResourceDescription>) {
        let keep: Vec<ResourceId> = resources.iter().map(|r| r.id).collect();
        let gone: Vec<ResourceId> = self
            .resources
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove_resource(id);
        }
        for resource in resources {
            self.upsert_resource(resource);
        }
    }

    pub fn upsert_resource(&mut self, resource: ResourceDescription) {
        let id = resource.id;
        self.router.remove_resource(id);
        // Every prefix the resource covers decides packets here (the
        // internet resource's too: more specific resources win); which of
        // them are routed into the tunnel is `routes`' business.
        for net in resource.address.prefixes() {
            self.router.insert(net, id);
        }
        match self.resources.get_mut(&id) {
            Some(entry) => {
                entry.description = resource;
                for net in &entry.proxies {
                    self.router.insert(*net, id);
                }
            }
            None => {
                self.resources.insert(
                    id,
                    Entry {
                        description: resource,
                        access: Access::Idle,
                        buffer: VecDeque::new(),
                        buffered_bytes: 0,
                        proxies: Vec::new(),
                    },
                );
            }
        }
    }

    /// The resources the portal offers this client.
    pub fn resources(&self) -> impl Iterator<Item = &ResourceDescription> + '_ {
        self.resources.values().map(|e| &e.description)
    }

    pub fn resource(&self, id: ResourceId) -> Option<&ResourceDescription> {
        self.resources.get(&id).map(|e| &e.description)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// What the kernel routes into the tunnel: every resource's prefixes,
    /// and the whole proxy ranges while a DNS resource exists (packets to
    /// proxies the stub never handed out are dropped here, `no_route`).
    /// Defence in depth against a portal (or whoever speaks for it) that
    /// hands out routes which would take the laptop over: prefixes wider
    /// than /8 (IPv4) or /16 (IPv6), which only a full tunnel needs (the
    /// internet resource, routed with its exclusions), and prefixes over
    /// `protected` addresses (the portal, the relays) are not routed;
    /// the second list names them.
    pub fn routes(&self, protected: &[IpAddr]) -> (BTreeSet<IpNet>, Vec<IpNet>) {
        let (routes, refused): (Vec<IpNet>, Vec<IpNet>) = self
            .resources()
            .flat_map(routed_prefixes)
            .partition(|prefix| route_is_sane(prefix, protected));
        let mut routes: BTreeSet<IpNet> = routes.into_iter().collect();
        if self.resources().any(|r| r.kind() == ResourceType::Dns) {
            routes.insert(postern_model::plan::DNS_PROXY_V4.into());
            routes.insert(postern_model::plan::DNS_PROXY_V6.into());
        }
        if let Some(internet) = self.routed_internet() {
            routes.extend(internet.address.prefixes());
        }
        (routes, refused)
    }

    /// The internet resource, if the client has one and routes it (the
    /// user did not turn it off).
    pub fn routed_internet(&self) -> Option<&ResourceDescription> {
        if self.config.internet_off {
            return None;
        }
        self.resources()
            .find(|r| r.kind() == ResourceType::Internet)
    }

    /// Whether the client has the internet resource at all.
    pub fn has_internet(&self) -> bool {
        self.resources().any(|r| r.kind() == ResourceType::Internet)
    }

    /// The user's choice: route the internet resource or not.
    pub fn set_internet(&mut self, on: bool) {
        self.config.internet_off = !on;
    }

    /// Routes proxy addresses the DNS stub handed out for a DNS resource:
    /// the first packet to one asks for access to that resource, like any
    /// other address of it. Unknown resources are ignored.
    pub fn route_proxies(&mut self, resource_id: ResourceId, proxies: &[IpAddr]) {
        let Some(entry) = self.resources.get_mut(&resource_id) else {
            return;
        };
        for proxy in proxies {
            let net = IpNet::from(*proxy);
            if !entry.proxies.contains(&net) {
                entry.proxies.push(net);
                self.router.insert(net, resource_id);
            }
        }
    }

    /// The resource is gone: its buffered packets are answered, its routes
    /// removed.
    pub fn remove_resource(&mut self, id: ResourceId) {
        self.router.remove_resource(id);
        if let Some(mut entry) = self.resources.remove(&id) {
            self.answer_buffered(&mut entry, Unreachable::Prohibited);
        }
    }

    /// Decides about one packet from an app.
    pub fn handle_packet(&mut self, bytes: &[u8], now: Instant) -> Verdict {
        let Ok(packet) = Packet::parse(bytes) else {
            return Verdict::Dropped(DropReason::Malformed);
        };
        let refuse = |why| match unreachable(&packet, why) {
            Some(reply) => Verdict::Reply(reply),
            None => Verdict::Dropped(DropReason::Refused),
        };
        let no_route = || match self.config.refuse_unrouted {
            true => refuse(Unreachable::Prohibited),
            false => Verdict::Dropped(DropReason::NoRoute),
        };
        let Some(id) = self.router.lookup(packet.destination()) else {
            return no_route();
        };
        let Some(entry) = self.resources.get_mut(&id) else {
            return no_route();
        };
        // The gateway enforces the filters; checking here spares the trip.
        if !filters_allow(
            &entry.description.filters,
            packet.protocol(),
            packet.destination_port(),
        ) {
            return refuse(Unreachable::Prohibited);
        }
        if let Access::Granted {
            expires: Some(at), ..
        } = entry.access
            && at <= now
        {
            entry.access = Access::Idle;
        }
        if let Access::Denied { until, .. } = entry.access
            && until <= now
        {
            entry.access = Access::Idle;
        }
        match &entry.access {
            Access::Granted { gateway, .. } => Verdict::ToGateway {
                gateway: *gateway,
                resource: id,
            },
            Access::Denied { .. } => refuse(Unreachable::Prohibited),
            Access::Requested { .. } => self.buffer(id, bytes),
            Access::Idle => {
                self.request(id, now);
                self.buffer(id, bytes)
            }
        }
    }

    /// Asks the portal for access to a resource that is idle, without a
    /// packet (a DNS question about one of its names that only its gateway
    /// can answer). True if a request went out.
    pub fn request(&mut self, id: ResourceId, now: Instant) -> bool {
        let connected_gateway_ids = self.connected_gateways();
        let Some(entry) = self.resources.get_mut(&id) else {
            return false;
        };
        if entry.access != Access::Idle {
            return false;
        }
        self.next_ref += 1;
        let reference = self.next_ref.to_string();
        entry.access = Access::Requested {
            reference: reference.clone(),
            since: now,
        };
        self.events.push_back(ClientEvent::RequestAccess {
            reference,
            resource_id: id,
            connected_gateway_ids,
        });
        true
    }

    /// The portal channel came back: requests sent on the one that died
    /// were lost with it (or their answers were), so each waiting resource
    /// asks again now, under its reference, instead of waiting out
    /// `request_timeout`.
    pub fn ask_again(&mut self, now: Instant) {
        let connected_gateway_ids = self.connected_gateways();
        for (id, entry) in &mut self.resources {
            if let Access::Requested { reference, since } = &mut entry.access {
                *since = now;
                self.events.push_back(ClientEvent::RequestAccess {
                    reference: reference.clone(),
                    resource_id: *id,
                    connected_gateway_ids: connected_gateway_ids.clone(),
                });
            }
        }
    }

    fn buffer(&mut self, id: ResourceId, bytes: &[u8]) -> Verdict {
        let (max_packets, max_bytes) = (
            self.config.max_buffered_packets,
            self.config.max_buffered_bytes,
        );
        let Some(entry) = self.resources.get_mut(&id) else {
            return Verdict::Dropped(DropReason::NoRoute);
        };
        // The first packets matter most (a SYN, a DNS query): keep them and
        // drop what comes after the buffer is full.
        if entry.buffer.len() >= max_packets || entry.buffered_bytes + bytes.len() > max_bytes {
            return Verdict::Dropped(DropReason::BufferFull);
        }
        entry.buffered_bytes += bytes.len();
        entry.buffer.push_back(bytes.to_vec());
        Verdict::Buffered
    }

    /// Gateways this client already has access through (the portal prefers
    /// them, F20).
    fn connected_gateways(&self) -> Vec<GatewayId> {
        let mut gateways: Vec<GatewayId> = self
            .resources
            .values()
            .filter_map(|e| match e.access {
                Access::Granted { gateway, .. } => Some(gateway),
                _ => None,
            })
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        gateways
    }

    /// The portal's `access_granted`: buffered packets go to the gateway.
    pub fn access_granted(
        &mut self,
        resource_id: ResourceId,
        gateway: GatewayId,
        expires: Option<Instant>,
    ) {
        let Some(entry) = self.resources.get_mut(&resource_id) else {
            return;
        };
        // Only what was asked for (or a renewal of a grant): a grant that
        // arrives after a revocation or a lost gateway is stale.
        if !matches!(
            entry.access,
            Access::Requested { .. } | Access::Granted { .. }
        ) {
            return;
        }
        entry.access = Access::Granted { gateway, expires };
        entry.buffered_bytes = 0;
        for packet in entry.buffer.drain(..) {
            self.events.push_back(ClientEvent::Deliver {
                gateway,
                resource: resource_id,
                packet,
            });
        }
    }

    /// The portal's `access_denied`: buffered packets are answered, and the
    /// reason is kept for a while.
    pub fn access_denied(
        &mut self,
        resource_id: ResourceId,
        reason: DenyReason,
        violated: Vec<String>,
        now: Instant,
    ) {
        let hold = self.config.deny_hold;
        let Some(mut entry) = self.resources.remove(&resource_id) else {
            return;
        };
        let why = match reason {
            DenyReason::Offline => Unreachable::Host,
            DenyReason::Forbidden | DenyReason::NotFound => Unreachable::Prohibited,
        };
        self.answer_buffered(&mut entry, why);
        entry.access = Access::Denied {
            reason,
            violated,
            until: now + hold,
        };
        self.resources.insert(resource_id, entry);
    }

    /// The portal's `access_revoked` (or a gateway that went away, F20): the
    /// next packet asks again.
    pub fn access_revoked(&mut self, resource_id: ResourceId) {
        if let Some(entry) = self.resources.get_mut(&resource_id) {
            entry.access = Access::Idle;
        }
    }

    /// A gateway is gone (its tunnel died): every resource through it asks
    /// again on its next packet.
    pub fn gateway_lost(&mut self, gateway: GatewayId) {
        for entry in self.resources.values_mut() {
            if matches!(entry.access, Access::Granted { gateway: g, .. } if g == gateway) {
                entry.access = Access::Idle;
            }
        }
    }

    fn answer_buffered(&mut self, entry: &mut Entry, why: Unreachable) {
        entry.buffered_bytes = 0;
        for bytes in entry.buffer.drain(..) {
            if let Ok(packet) = Packet::parse(&bytes)
                && let Some(reply) = unreachable(&packet, why)
            {
                self.events.push_back(ClientEvent::Reply(reply));
            }
        }
    }

    /// Requests the portal never answered fail (host unreachable).
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.request_timeout;
        let overdue: Vec<ResourceId> = self
            .resources
            .iter()
            .filter(|(_, e)| matches!(e.access, Access::Requested { since, .. } if now.duration_since(since) >= timeout))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(mut entry) = self.resources.remove(&id) {
                self.answer_buffered(&mut entry, Unreachable::Host);
                entry.access = Access::Idle;
                self.resources.insert(id, entry);
            }
        }
    }

    /// When [`ClientState::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.resources
            .values()
            .filter_map(|e| match e.access {
                Access::Requested { since, .. } => Some(since + self.config.request_timeout),
                _ => None,
            })
            .min()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Every resource with its access, sorted by name.
    /// The gateway a resource is granted through now, if it is.
    pub fn gateway_of(&self, resource_id: ResourceId) -> Option<GatewayId> {
        match self.resources.get(&resource_id)?.access {
            Access::Granted { gateway, .. } => Some(gateway),
            _ => None,
        }
    }

    pub fn status(&self) -> Vec<ResourceStatus> {
        let mut lines: Vec<ResourceStatus> = self
            .resources
            .values()
            .map(|e| ResourceStatus {
                resource: e.description.clone(),
                access: e.access.clone(),
            })
            .collect();
        lines.sort_by(|a, b| a.resource.name.cmp(&b.resource.name));
        lines
    }
}

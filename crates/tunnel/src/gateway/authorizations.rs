//! The gateway's decisions about packets from clients (SPEC F12, F15, F19):
//! a client may only send from its own tunnel address, only to resources it
//! is authorized for (longest prefix), only what their filters allow, and
//! only until the authorization expires. Anything else is answered with ICMP
//! "administratively prohibited" (or dropped, if it is spoofed or an ICMP
//! error). Filters change live; revocation takes effect on the next packet.
//!
//! Timers never walk every client: expiries and each client's sweep of
//! idle flows are kept in time order, and the clients whose flow tables
//! hold ended flows are listed as they end (a gateway has thousands of
//! clients and runs its timers often).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;
use postern_model::filters_allow;
use postern_model::protocol::ResourceDescription;
use postern_model::{ClientId, ResourceAddress, ResourceId};

use super::destinations::never_forwarded;
use crate::flows::{self, EndedFlow, FlowRefusal, Flows};
use crate::icmp::{Unreachable, unreachable};
use crate::nat::ClientNat;
use crate::packet::Packet;
use crate::router::Router;

/// What to do with one packet from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayVerdict {
    /// Send it on toward the resource.
    Forward,
    /// Send this back to the client through its tunnel.
    Reply(Vec<u8>),
    Drop(GatewayDrop),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayDrop {
    Malformed,
    /// The client has too many flows open (or NAT sessions): none more
    /// until old ones expire.
    FlowsFull,
    /// An IPv6 routing header: the packet would go on past where it was
    /// checked.
    Routed,
    /// No authorization of this client at all.
    UnknownClient,
    /// The source is not the client's tunnel address.
    Spoofed,
    /// Refused, and the packet was an ICMP error (never answered).
    Refused,
}

impl GatewayDrop {
    /// The label of the drop counters.
    pub fn label(self) -> &'static str {
        match self {
            GatewayDrop::Malformed => "malformed",
            GatewayDrop::FlowsFull => "flows_full",
            GatewayDrop::Routed => "routing_header",
            GatewayDrop::UnknownClient => "unknown_client",
            GatewayDrop::Spoofed => "spoofed",
            GatewayDrop::Refused => "refused",
        }
    }
}

/// A client device as the portal described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddresses {
    pub id: ClientId,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

struct Authorized {
    resource: ResourceDescription,
    expires: Option<Instant>,
}

struct ClientEntry {
    addresses: ClientAddresses,
    resources: HashMap<ResourceId, Authorized>,
    router: Router,
    /// DNS resource -> name -> the proxy addresses the client assigned for
    /// that name.
    proxies: HashMap<ResourceId, HashMap<String, Vec<IpAddr>>>,
    nat: ClientNat,
    /// The flows the client opened: only answers to them go back to it.
    flows: Flows,
    /// In [`GatewayState::ended`].
    ended_listed: bool,
    /// When its idle flows and NAT sessions are swept next (none while it
    /// has neither): its entry in [`GatewayState::sweeps`].
    sweep_at: Option<Instant>,
}

impl ClientEntry {
    /// Whether an admin named exactly `address` as an IP resource this
    /// client is authorized for (which lifts the destination rules).
    fn named_exactly(&self, address: IpAddr) -> bool {
        self.resources
            .values()
            .any(|a| a.resource.address == ResourceAddress::Ip(address))
    }

    /// Whether the gateway may send the client's packets to `address`.
    fn may_reach(&self, address: IpAddr, own: &[IpAddr]) -> bool {
        !never_forwarded(address, own) || self.named_exactly(address)
    }

    /// Routes a resource's prefixes and its proxy addresses to it.
    fn route(&mut self, resource: &ResourceDescription) {
        self.router.remove_resource(resource.id);
        // DNS resources open no prefix: they are reached through proxy
        // addresses and the NAT.
        for net in resource.address.prefixes() {
            self.router.insert(net, resource.id);
        }
        for proxy in self
            .proxies
            .get(&resource.id)
            .into_iter()
            .flat_map(|names| names.values().flatten())
        {
            self.router.insert(IpNet::from(*proxy), resource.id);
        }
    }

    /// Forgets a resource with its routes and proxy mappings; returns when
    /// its authorization was to expire (to drop it from the index).
    fn drop_resource(&mut self, id: ResourceId) -> Option<Instant> {
        let expires = self.resources.remove(&id).and_then(|a| a.expires);
        self.router.remove_resource(id);
        for proxy in self
            .proxies
            .remove(&id)
            .into_iter()
            .flat_map(|names| names.into_values().flatten())
        {
            self.nat.unmap(proxy);
        }
        expires
    }

    /// Lists the client in `ended` if its table holds ended flows.
    fn list_ended(&mut self, ended: &mut Vec<ClientId>) {
        if !self.ended_listed && self.flows.has_ended() {
            self.ended_listed = true;
            ended.push(self.addresses.id);
        }
    }
}

/// Why proxy addresses were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("the client is not authorized for that resource")]
    NotAuthorized,
    #[error("only DNS resources have proxy addresses")]
    NotDns,
    #[error("a proxy address must come from Postern's proxy ranges")]
    NotProxy,
    #[error("the name is not one of the resource's")]
    NameMismatch,
    #[error("the client has {MAX_NAMES} names mapped already")]
    TooManyNames,
}

/// Names with proxies one client may have on a gateway.
pub const MAX_NAMES: usize = 1024;

/// Why a packet toward a client was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToClientDrop {
    /// Its destination is no client's tunnel address here.
    NoClient,
    /// It answers nothing the client opened.
    Unsolicited,
    Malformed,
}

impl ToClientDrop {
    pub fn label(self) -> &'static str {
        match self {
            ToClientDrop::NoClient => "no_client",
            ToClientDrop::Unsolicited => "unsolicited",
            ToClientDrop::Malformed => "malformed",
        }
    }
}

#[derive(Default)]
pub struct GatewayState {
    clients: HashMap<ClientId, ClientEntry>,
    by_address: HashMap<IpAddr, ClientId>,
    /// The gateway's own addresses (tunnel and host): never a destination.
    own: Vec<IpAddr>,
    /// Clients' sweeps of idle flows and NAT sessions, soonest first: each
    /// client every [`flows::SWEEP`] from its first flow, rather than every
    /// client at once.
    sweeps: BTreeSet<(Instant, ClientId)>,
    /// Authorizations that expire, soonest first.
    expiries: BTreeSet<(Instant, ClientId, ResourceId)>,
    /// Clients whose tables hold ended flows not taken yet.
    ended: Vec<ClientId>,
    /// Ended flows of clients that are gone, for the log.
    gone_flows: Vec<(ClientId, EndedFlow)>,
    /// Ended flows dropped for want of room before they were taken.
    flows_dropped: u64,
}

impl GatewayState {
    pub fn new() -> Self {
        GatewayState::default()
    }

    /// The gateway's own addresses, which no client may reach.
    pub fn set_own_addresses(&mut self, own: Vec<IpAddr>) {
        self.own = own;
    }

    /// Authorizes `client` for `resource` until `expires` (the portal's
    /// `authorize`); repeating it updates filters and expiry.
    pub fn authorize(
        &mut self,
        client: ClientAddresses,
        resource: ResourceDescription,
        expires: Option<Instant>,
    ) {
        self.by_address.insert(IpAddr::V4(client.ipv4), client.id);
        self.by_address.insert(IpAddr::V6(client.ipv6), client.id);
        let entry = self
            .clients
            .entry(client.id)
            .or_insert_with(|| ClientEntry {
                addresses: client,
                resources: HashMap::new(),
                router: Router::default(),
                proxies: HashMap::new(),
                nat: ClientNat::default(),
                flows: Flows::logging(),
                ended_listed: false,
                sweep_at: None,
            });
        entry.addresses = client;
        entry.route(&resource);
        let id = resource.id;
        let old = entry.resources.insert(id, Authorized { resource, expires });
        if let Some(at) = old.and_then(|a| a.expires) {
            self.expiries.remove(&(at, client.id, id));
        }
        if let Some(at) = expires {
            self.expiries.insert((at, client.id, id));
        }
    }

    /// The portal's `revoke`.
    pub fn revoke(&mut self, client: ClientId, resource: ResourceId) {
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        if let Some(at) = entry.drop_resource(resource) {
            self.expiries.remove(&(at, client, resource));
        }
        if entry.resources.is_empty() {
            self.remove_client(client);
        }
    }

    /// The portal's `resource_updated`: new filters apply to the next packet.
    pub fn update_resource(&mut self, resource: ResourceDescription) {
        for entry in self.clients.values_mut() {
            if let Some(authorized) = entry.resources.get_mut(&resource.id) {
                authorized.resource = resource.clone();
                entry.route(&resource);
            }
        }
    }

    pub fn remove_client(&mut self, client: ClientId) {
        if let Some(mut entry) = self.clients.remove(&client) {
            self.by_address.remove(&IpAddr::V4(entry.addresses.ipv4));
            self.by_address.remove(&IpAddr::V6(entry.addresses.ipv6));
            for (resource, authorized) in &entry.resources {
                if let Some(at) = authorized.expires {
                    self.expiries.remove(&(at, client, *resource));
                }
            }
            if let Some(at) = entry.sweep_at {
                self.sweeps.remove(&(at, client));
            }
            // Its flows end here; the log keeps them.
            entry.flows.end_all();
            let (ended, dropped) = entry.flows.take_ended();
            self.flows_dropped += dropped;
            for flow in ended {
                if self.gone_flows.len() >= flows::MAX_ENDED {
                    self.flows_dropped += 1;
                    continue;
                }
                self.gone_flows.push((client, flow));
            }
        }
    }

    /// The flows that ended since the last call, every client's, and how
    /// many were dropped for want of room (the caller takes them often).
    pub fn take_ended_flows(&mut self) -> (Vec<(ClientId, EndedFlow)>, u64) {
        let mut all = std::mem::take(&mut self.gone_flows);
        let mut dropped = std::mem::take(&mut self.flows_dropped);
        for client in std::mem::take(&mut self.ended) {
            let Some(entry) = self.clients.get_mut(&client) else {
                continue;
            };
            entry.ended_listed = false;
            let (ended, lost) = entry.flows.take_ended();
            dropped += lost;
            all.extend(ended.into_iter().map(|flow| (client, flow)));
        }
        (all, dropped)
    }

    /// Decides about a packet that arrived through `client`'s tunnel.
    pub fn handle_from_client(
        &mut self,
        client: ClientId,
        bytes: &[u8],
        now: Instant,
    ) -> GatewayVerdict {
        match self.resource_for(client, bytes, now) {
            Ok(_) => GatewayVerdict::Forward,
            Err(verdict) => verdict,
        }
    }

    /// The resource that lets the client's packet through, or the verdict
    /// that refuses it.
    fn resource_for(
        &mut self,
        client: ClientId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<ResourceId, GatewayVerdict> {
        let Ok(packet) = Packet::parse(bytes) else {
            return Err(GatewayVerdict::Drop(GatewayDrop::Malformed));
        };
        let Some(entry) = self.clients.get_mut(&client) else {
            return Err(GatewayVerdict::Drop(GatewayDrop::UnknownClient));
        };
        let own = match packet.source() {
            IpAddr::V4(v4) => v4 == entry.addresses.ipv4,
            IpAddr::V6(v6) => v6 == entry.addresses.ipv6,
        };
        if !own {
            return Err(GatewayVerdict::Drop(GatewayDrop::Spoofed));
        }
        if packet.has_routing_header() {
            return Err(GatewayVerdict::Drop(GatewayDrop::Routed));
        }
        // Every resource of the most specific prefix may let it through
        // (the flow log names the first that does).
        let mut allowed: Option<ResourceId> = None;
        let mut expired = Vec::new();
        for resource_id in entry.router.lookup_all(packet.destination()) {
            match entry.resources.get(resource_id) {
                Some(authorized) if authorized.expires.is_some_and(|at| at <= now) => {
                    expired.push(*resource_id)
                }
                Some(authorized)
                    if allowed.is_none()
                        && filters_allow(
                            &authorized.resource.filters,
                            packet.protocol(),
                            packet.destination_port(),
                        ) =>
                {
                    allowed = Some(*resource_id);
                }
                _ => {}
            }
        }
        for resource_id in &expired {
            if let Some(at) = entry.drop_resource(*resource_id) {
                self.expiries.remove(&(at, client, *resource_id));
            }
        }
        if let Some(resource) = allowed {
            return Ok(resource);
        }
        if entry.resources.is_empty() {
            // Its last authorization expired just now.
            self.remove_client(client);
        }
        Err(match unreachable(&packet, Unreachable::Prohibited) {
            Some(reply) => GatewayVerdict::Reply(reply),
            None => GatewayVerdict::Drop(GatewayDrop::Refused),
        })
    }

    /// Which client a packet coming back from a resource belongs to (by its
    /// destination, the client's tunnel address).
    pub fn client_for(&self, destination: IpAddr) -> Option<ClientId> {
        self.by_address.get(&destination).copied()
    }

    /// Decides like [`GatewayState::handle_from_client`], then holds the
    /// destination (after the NAT, for a proxy address) against the rules
    /// no authorization lifts, notes the flow (so its answers may come
    /// back) and rewrites a proxy to its real address in place.
    pub fn forward_from_client(
        &mut self,
        client: ClientId,
        packet: &mut [u8],
        now: Instant,
    ) -> GatewayVerdict {
        let resource = match self.resource_for(client, packet, now) {
            Ok(resource) => resource,
            Err(verdict) => return verdict,
        };
        let (Some(entry), Ok(parsed)) = (self.clients.get_mut(&client), Packet::parse(packet))
        else {
            return GatewayVerdict::Drop(GatewayDrop::Malformed);
        };
        let destination = parsed.destination();
        let real = entry.nat.real_of(destination);
        if !entry.may_reach(real.unwrap_or(destination), &self.own) {
            return match unreachable(&parsed, Unreachable::Prohibited) {
                Some(reply) => GatewayVerdict::Reply(reply),
                None => GatewayVerdict::Drop(GatewayDrop::Refused),
            };
        }
        let opened = entry.flows.outbound_for(&parsed, Some(resource), real, now);
        // A close (FIN, RST) ends a flow for the log.
        entry.list_ended(&mut self.ended);
        if opened.is_err() {
            return GatewayVerdict::Drop(GatewayDrop::FlowsFull);
        }
        if entry.sweep_at.is_none() {
            let at = now + flows::SWEEP;
            entry.sweep_at = Some(at);
            self.sweeps.insert((at, client));
        }
        if real.is_some() && !entry.nat.outbound(packet, now) {
            return GatewayVerdict::Drop(GatewayDrop::FlowsFull);
        }
        GatewayVerdict::Forward
    }

    /// A packet from the site toward a client: the client it is for (by
    /// its tunnel address), with the source put back to the proxy address
    /// the client used (DNS resources), if it answers a flow that client
    /// opened. Anything else stays out: a host behind the gateway cannot
    /// open connections into clients.
    pub fn handle_to_client(
        &mut self,
        packet: &mut [u8],
        now: Instant,
    ) -> Result<ClientId, ToClientDrop> {
        let destination = Packet::parse(packet)
            .map_err(|_| ToClientDrop::Malformed)?
            .destination();
        let client = self.client_for(destination).ok_or(ToClientDrop::NoClient)?;
        let entry = self
            .clients
            .get_mut(&client)
            .ok_or(ToClientDrop::NoClient)?;
        entry.nat.inbound(packet, now);
        let parsed = Packet::parse(packet).map_err(|_| ToClientDrop::Malformed)?;
        let answered = entry.flows.inbound(&parsed, now);
        entry.list_ended(&mut self.ended);
        answered.map_err(|refusal| match refusal {
            FlowRefusal::Malformed => ToClientDrop::Malformed,
            _ => ToClientDrop::Unsolicited,
        })?;
        Ok(client)
    }

    /// The client's proxy addresses for `name` of a DNS resource it is
    /// authorized for, and the answers the gateway resolved: each proxy maps
    /// to an answer of its family, round robin. A name outside the
    /// resource's pattern is refused (a client cannot make the gateway
    /// resolve just anything). Returns how many proxies got an address.
    pub fn assign_proxies(
        &mut self,
        client: ClientId,
        resource: ResourceId,
        name: &str,
        proxies: &[IpAddr],
        answers: &[IpAddr],
    ) -> Result<usize, AssignError> {
        self.check_assignment(client, resource, name, proxies)?;
        let Some(entry) = self.clients.get_mut(&client) else {
            return Err(AssignError::NotAuthorized);
        };
        let Some(authorized) = entry.resources.get(&resource) else {
            return Err(AssignError::NotAuthorized);
        };
        let description = authorized.resource.clone();
        // Addresses a client may never reach stay unmapped, whatever the
        // name resolved to (a dangling record, `localhost.corp.example`).
        let answers: Vec<IpAddr> = answers
            .iter()
            .copied()
            .filter(|answer| entry.may_reach(*answer, &self.own))
            .collect();
        let known: usize = entry.proxies.values().map(HashMap::len).sum();
        let names = entry.proxies.entry(resource).or_default();
        if !names.contains_key(name) && known >= MAX_NAMES {
            return Err(AssignError::TooManyNames);
        }
        for old in names.remove(name).into_iter().flatten() {
            entry.nat.unmap(old);
        }
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = answers.iter().partition(|a| a.is_ipv4());
        let mut mapped = Vec::new();
        let (mut next_v4, mut next_v6) = (0, 0);
        for proxy in proxies {
            let (pool, next) = if proxy.is_ipv4() {
                (&v4, &mut next_v4)
            } else {
                (&v6, &mut next_v6)
            };
            if pool.is_empty() {
                continue;
            }
            entry.nat.map(*proxy, pool[*next % pool.len()]);
            *next += 1;
            mapped.push(*proxy);
        }
        let count = mapped.len();
        names.insert(name.to_string(), mapped);
        entry.route(&description);
        Ok(count)
    }

    /// Whether `client` may have `proxies` for `name` of `resource` (before
    /// the gateway spends a lookup on it).
    /// Whether the gateway's resolver answers `client` about `name` for
    /// `resource`: a name of a DNS resource it may use, or any name for
    /// the internet resource (its names are resolved where its traffic
    /// goes).
    pub fn may_resolve(&self, client: ClientId, resource: ResourceId, name: &str) -> bool {
        let internet = self
            .clients
            .get(&client)
            .and_then(|entry| entry.resources.get(&resource))
            .is_some_and(|a| a.resource.kind() == postern_model::ResourceType::Internet);
        internet || self.check_assignment(client, resource, name, &[]).is_ok()
    }

    pub fn check_assignment(
        &self,
        client: ClientId,
        resource: ResourceId,
        name: &str,
        proxies: &[IpAddr],
    ) -> Result<(), AssignError> {
        let authorized = self
            .clients
            .get(&client)
            .and_then(|entry| entry.resources.get(&resource))
            .ok_or(AssignError::NotAuthorized)?;
        let Some(pattern) = authorized.resource.address.dns_pattern() else {
            return Err(AssignError::NotDns);
        };
        if !proxies.iter().all(|p| is_proxy_address(*p)) {
            return Err(AssignError::NotProxy);
        }
        if !pattern.matches(name) {
            return Err(AssignError::NameMismatch);
        }
        Ok(())
    }

    /// Forgets expired authorizations (packets check expiry themselves; this
    /// keeps the table small), and the idle flows and NAT sessions of the
    /// clients whose sweep is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, client)) = self.sweeps.first()
            && at <= now
        {
            self.sweeps.pop_first();
            let Some(entry) = self.clients.get_mut(&client) else {
                continue;
            };
            entry.flows.expire(now);
            entry.nat.expire(now);
            entry.list_ended(&mut self.ended);
            entry.sweep_at = (!entry.flows.is_empty() || entry.nat.session_count() > 0)
                .then(|| now + flows::SWEEP);
            if let Some(next) = entry.sweep_at {
                self.sweeps.insert((next, client));
            }
        }
        while let Some(&(at, client, resource)) = self.expiries.first()
            && at <= now
        {
            self.expiries.pop_first();
            let Some(entry) = self.clients.get_mut(&client) else {
                continue;
            };
            // Only the authorization that expires then (a safeguard: a
            // renewed one's entry is replaced, so a stale one never revokes
            // it early).
            if entry
                .resources
                .get(&resource)
                .is_some_and(|authorized| authorized.expires == Some(at))
            {
                entry.drop_resource(resource);
            }
            if entry.resources.is_empty() {
                self.remove_client(client);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.expiries.first().map(|(at, _, _)| *at);
        let sweep = self.sweeps.first().map(|(at, _)| *at);
        expiry.into_iter().chain(sweep).min()
    }

    /// Every (client, resource) authorized now.
    pub fn authorized(&self) -> Vec<(ClientId, ResourceId)> {
        self.clients
            .iter()
            .flat_map(|(client, entry)| entry.resources.keys().map(|r| (*client, *r)))
            .collect()
    }

    /// Whether `client` holds any authorization (its tunnel peer is worth
    /// keeping).
    pub fn has_client(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// A client's tunnel addresses.
    pub fn client_addresses(&self, client: ClientId) -> Option<ClientAddresses> {
        self.clients.get(&client).map(|entry| entry.addresses)
    }

    /// Clients with at least one authorization.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether `client` may reach `resource` now (for status and tests).
    pub fn is_authorized(&self, client: ClientId, resource: ResourceId) -> bool {
        self.clients
            .get(&client)
            .is_some_and(|e| e.resources.contains_key(&resource))
    }
}

/// Whether an address is one the client's DNS stub hands out.
fn is_proxy_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => postern_model::plan::DNS_PROXY_V4.contains(&v4),
        IpAddr::V6(v6) => postern_model::plan::DNS_PROXY_V6.contains(&v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use postern_model::SiteId;

    /// An expiry entry that no longer matches the authorization (stale: a
    /// renewal replaced it) revokes nothing; the current one does, on time.
    #[test]
    fn only_the_current_expiry_revokes() {
        let now = Instant::now();
        let client = ClientAddresses {
            id: ClientId::from_u128(1),
            ipv4: "100.64.0.2".parse().expect("v4"),
            ipv6: "fd7e:5057:6e00::2".parse().expect("v6"),
        };
        let resource = ResourceDescription {
            id: ResourceId::from_u128(7),
            name: "r7".into(),
            address: ResourceAddress::Cidr("10.0.0.0/24".parse().expect("cidr")),
            address_description: None,
            filters: vec![],
            site_id: SiteId::from_u128(2),
        };
        let mut state = GatewayState::new();
        let renewed = now + Duration::from_secs(60);
        state.authorize(client, resource.clone(), Some(renewed));
        let stale = now + Duration::from_secs(1);
        state.expiries.insert((stale, client.id, resource.id));
        assert_eq!(state.poll_timeout(), Some(stale));
        state.handle_timeout(stale);
        assert!(state.is_authorized(client.id, resource.id), "revoked early");
        assert_eq!(state.poll_timeout(), Some(renewed));
        state.handle_timeout(renewed);
        assert!(!state.is_authorized(client.id, resource.id));
        assert!(!state.has_client(client.id));
    }
}

//! The gateway's decisions about packets from clients (SPEC F12, F15, F19):
//! a client may only send from its own tunnel address, only to resources it
//! is authorized for (longest prefix), only what their filters allow, and
//! only until the authorization expires. Anything else is answered with ICMP
//! "administratively prohibited" (or dropped, if it is spoofed or an ICMP
//! error). Filters change live; revocation takes effect on the next packet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;
use postern_model::ResourceType;
use postern_model::filters_allow;
use postern_model::protocol::ResourceDescription;
use uuid::Uuid;

use crate::icmp::{Unreachable, unreachable};
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
    /// No authorization of this client at all.
    UnknownClient,
    /// The source is not the client's tunnel address.
    Spoofed,
    /// Refused, and the packet was an ICMP error (never answered).
    Refused,
}

/// A client device as the portal described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddresses {
    pub id: Uuid,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

struct Authorized {
    resource: ResourceDescription,
    expires: Option<Instant>,
}

struct ClientEntry {
    addresses: ClientAddresses,
    resources: HashMap<Uuid, Authorized>,
    router: Router,
}

#[derive(Default)]
pub struct GatewayState {
    clients: HashMap<Uuid, ClientEntry>,
    by_address: HashMap<IpAddr, Uuid>,
}

/// The destination prefixes an authorization opens.
fn prefixes(resource: &ResourceDescription) -> Vec<IpNet> {
    match (resource.kind, resource.address.as_deref()) {
        (ResourceType::Cidr, Some(address)) => address.parse().into_iter().collect(),
        (ResourceType::Ip, Some(address)) => address
            .parse::<IpAddr>()
            .map(IpNet::from)
            .into_iter()
            .collect(),
        (ResourceType::Internet, _) => vec![
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ],
        // DNS resources are reached through proxy addresses and the NAT.
        _ => vec![],
    }
}

impl GatewayState {
    pub fn new() -> Self {
        GatewayState::default()
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
            });
        entry.addresses = client;
        entry.router.remove_resource(resource.id);
        for net in prefixes(&resource) {
            entry.router.insert(net, resource.id);
        }
        entry
            .resources
            .insert(resource.id, Authorized { resource, expires });
    }

    /// The portal's `revoke`.
    pub fn revoke(&mut self, client: Uuid, resource: Uuid) {
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        entry.resources.remove(&resource);
        entry.router.remove_resource(resource);
        if entry.resources.is_empty() {
            self.remove_client(client);
        }
    }

    /// The portal's `resource_updated`: new filters apply to the next packet.
    pub fn update_resource(&mut self, resource: ResourceDescription) {
        for entry in self.clients.values_mut() {
            if let Some(authorized) = entry.resources.get_mut(&resource.id) {
                entry.router.remove_resource(resource.id);
                for net in prefixes(&resource) {
                    entry.router.insert(net, resource.id);
                }
                authorized.resource = resource.clone();
            }
        }
    }

    pub fn remove_client(&mut self, client: Uuid) {
        if let Some(entry) = self.clients.remove(&client) {
            self.by_address.remove(&IpAddr::V4(entry.addresses.ipv4));
            self.by_address.remove(&IpAddr::V6(entry.addresses.ipv6));
        }
    }

    /// Decides about a packet that arrived through `client`'s tunnel.
    pub fn handle_from_client(
        &mut self,
        client: Uuid,
        bytes: &[u8],
        now: Instant,
    ) -> GatewayVerdict {
        let Ok(packet) = Packet::parse(bytes) else {
            return GatewayVerdict::Drop(GatewayDrop::Malformed);
        };
        let Some(entry) = self.clients.get_mut(&client) else {
            return GatewayVerdict::Drop(GatewayDrop::UnknownClient);
        };
        let own = match packet.source() {
            IpAddr::V4(v4) => v4 == entry.addresses.ipv4,
            IpAddr::V6(v6) => v6 == entry.addresses.ipv6,
        };
        if !own {
            return GatewayVerdict::Drop(GatewayDrop::Spoofed);
        }
        // Every resource of the most specific prefix may let it through.
        let mut allowed = false;
        let mut expired = Vec::new();
        for resource_id in entry.router.lookup_all(packet.destination()) {
            match entry.resources.get(resource_id) {
                Some(authorized) if authorized.expires.is_some_and(|at| at <= now) => {
                    expired.push(*resource_id)
                }
                Some(authorized) => {
                    allowed |= filters_allow(
                        &authorized.resource.filters,
                        packet.protocol(),
                        packet.destination_port(),
                    )
                }
                None => {}
            }
        }
        for resource_id in expired {
            entry.resources.remove(&resource_id);
            entry.router.remove_resource(resource_id);
        }
        if allowed {
            return GatewayVerdict::Forward;
        }
        match unreachable(&packet, Unreachable::Prohibited) {
            Some(reply) => GatewayVerdict::Reply(reply),
            None => GatewayVerdict::Drop(GatewayDrop::Refused),
        }
    }

    /// Which client a packet coming back from a resource belongs to (by its
    /// destination, the client's tunnel address).
    pub fn client_for(&self, destination: IpAddr) -> Option<Uuid> {
        self.by_address.get(&destination).copied()
    }

    /// Forgets expired authorizations (packets check expiry themselves; this
    /// keeps the table small).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut emptied = Vec::new();
        for (client, entry) in &mut self.clients {
            let expired: Vec<Uuid> = entry
                .resources
                .iter()
                .filter(|(_, a)| a.expires.is_some_and(|at| at <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                entry.resources.remove(&id);
                entry.router.remove_resource(id);
            }
            if entry.resources.is_empty() {
                emptied.push(*client);
            }
        }
        for client in emptied {
            self.remove_client(client);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clients
            .values()
            .flat_map(|e| e.resources.values().filter_map(|a| a.expires))
            .min()
    }

    /// Whether `client` may reach `resource` now (for status and tests).
    pub fn is_authorized(&self, client: Uuid, resource: Uuid) -> bool {
        self.clients
            .get(&client)
            .is_some_and(|e| e.resources.contains_key(&resource))
    }
}

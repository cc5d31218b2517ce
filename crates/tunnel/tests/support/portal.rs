//! A stub portal for the simulation: the control protocol as the real roles
//! see it (JSON both ways, with a delay), one client, one site of gateways,
//! a policy that allows or denies, and the portal's side of access on first
//! packet (`request_access` -> `authorize` -> `authorized` ->
//! `access_granted`), revocation, resource updates and candidates.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use postern_model::protocol::{
    Authorization, ClientToPortal, DenyReason, GatewayToPortal, IceCredentials, Interface, PairIce,
    Peer, PortalToClient, PortalToGateway, RelayInfo, ResourceDescription,
};
use postern_model::{ClientId, GatewayId, PresharedKey, PublicKey, ResourceId};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const CLIENT_ID: ClientId = ClientId::from_u128(1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, 2);

/// Gateway `host`'s id (hosts 1.. are gateways).
pub fn gateway_id(host: usize) -> GatewayId {
    GatewayId::from_u128(100 + host as u128)
}

pub fn gateway_v4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 10 + host as u8)
}

pub fn gateway_v6(host: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, 10 + host as u16)
}

/// Through JSON and back, as the wire carries it.
pub fn wire<T: Serialize + DeserializeOwned>(message: T) -> T {
    let text = serde_json::to_string(&message).expect("a message serializes");
    serde_json::from_str(&text).expect("and parses back")
}

fn ice(host: usize) -> PairIce {
    let side = |tag: &str| IceCredentials {
        username_fragment: format!("{tag}{host}xx"),
        password: format!("{tag}{host}-password-0123456789abcdef"),
    };
    PairIce {
        client: side("c"),
        gateway: side("g"),
    }
}

pub struct Portal {
    /// Whether the policy lets the client in.
    pub allowed: bool,
    /// What the client is offered.
    pub resources: BTreeMap<ResourceId, ResourceDescription>,
    /// Gateways the portal sees online, by host.
    pub online: Vec<bool>,
    /// Each device's current WireGuard key, by host.
    pub keys: Vec<PublicKey>,
    pub relays: Vec<RelayInfo>,
    pub delay: Duration,
    to_client: Vec<(Instant, PortalToClient)>,
    to_gateways: Vec<(Instant, usize, PortalToGateway)>,
    /// Portal ref -> (the client's ref, resource, gateway host).
    pending: HashMap<String, (String, ResourceId, usize)>,
    /// Resource -> the gateway host it is granted on.
    pub grants: BTreeMap<ResourceId, usize>,
    next_ref: u64,
    /// `request_access` messages seen.
    pub requests: usize,
    /// The flow log as the gateways reported it: (host, flow).
    pub flows: Vec<(usize, postern_model::protocol::FlowRecord)>,
}

impl Portal {
    pub fn new(hosts: usize, keys: Vec<PublicKey>, relays: Vec<RelayInfo>) -> Portal {
        Portal {
            allowed: true,
            resources: BTreeMap::new(),
            online: vec![true; hosts],
            keys,
            relays,
            delay: Duration::from_millis(20),
            to_client: Vec::new(),
            to_gateways: Vec::new(),
            pending: HashMap::new(),
            grants: BTreeMap::new(),
            next_ref: 0,
            requests: 0,
            flows: Vec::new(),
        }
    }

    fn tell_client(&mut self, message: PortalToClient, now: Instant) {
        self.to_client.push((now + self.delay, message));
    }

    fn tell_gateway(&mut self, host: usize, message: PortalToGateway, now: Instant) {
        self.to_gateways.push((now + self.delay, host, message));
    }

    /// The client (re)connected: its `init`.
    pub fn client_init(&mut self, now: Instant) {
        let init = PortalToClient::Init {
            interface: Interface {
                ipv4: CLIENT_V4,
                ipv6: CLIENT_V6,
                dns_upstreams: vec![],
                search_domain: Some("corp.test".into()),
            },
            resources: self.resources.values().cloned().collect(),
            relays: self.relays.clone(),
        };
        self.tell_client(init, now);
    }

    /// A gateway (re)connected: its `init` lists what it enforces.
    pub fn gateway_init(&mut self, host: usize, now: Instant) {
        let authorizations = self
            .grants
            .iter()
            .filter(|(_, h)| **h == host)
            .filter_map(|(resource, _)| self.authorization(*resource, host))
            .collect();
        let init = PortalToGateway::Init {
            interface: Interface {
                ipv4: gateway_v4(host),
                ipv6: gateway_v6(host),
                dns_upstreams: vec![],
                search_domain: None,
            },
            relays: self.relays.clone(),
            authorizations,
        };
        self.tell_gateway(host, init, now);
    }

    fn authorization(&self, resource: ResourceId, host: usize) -> Option<Authorization> {
        Some(Authorization {
            client: Peer {
                id: CLIENT_ID,
                public_key: self.keys[0],
                ipv4: CLIENT_V4,
                ipv6: CLIENT_V6,
            },
            resource: self.resources.get(&resource)?.clone(),
            preshared_key: self.psk(host),
            ice: ice(host),
            expires_at: None,
        })
    }

    /// The pair's preshared key: bound to both keys, as the portal's is.
    fn psk(&self, host: usize) -> PresharedKey {
        let mut psk = [host as u8 + 40; 32];
        psk[..8].copy_from_slice(&self.keys[host].0[..8]);
        psk[8..16].copy_from_slice(&self.keys[0].0[..8]);
        PresharedKey(psk)
    }

    pub fn client_says(&mut self, message: ClientToPortal, now: Instant) {
        match message {
            ClientToPortal::RequestAccess {
                reference,
                resource_id,
                connected_gateway_ids,
            } => {
                self.requests += 1;
                self.request_access(reference, resource_id, &connected_gateway_ids, now)
            }
            ClientToPortal::IceCandidates {
                peer_id,
                candidates,
            } => {
                let host = (1..self.online.len()).find(|h| gateway_id(*h) == peer_id);
                if let Some(host) = host.filter(|h| self.paired(*h)) {
                    self.tell_gateway(
                        host,
                        PortalToGateway::IceCandidates {
                            peer_id: CLIENT_ID,
                            candidates,
                        },
                        now,
                    );
                }
            }
            ClientToPortal::IceCandidatesRemoved { .. } => {}
        }
    }

    fn paired(&self, host: usize) -> bool {
        self.grants.values().any(|h| *h == host) || self.pending.values().any(|p| p.2 == host)
    }

    fn request_access(
        &mut self,
        reference: String,
        resource: ResourceId,
        connected: &[GatewayId],
        now: Instant,
    ) {
        let deny = |reason| PortalToClient::AccessDenied {
            reference: reference.clone(),
            resource_id: resource,
            reason,
            violated: vec![],
        };
        if !self.resources.contains_key(&resource) {
            self.tell_client(deny(DenyReason::NotFound), now);
            return;
        }
        if !self.allowed {
            self.tell_client(deny(DenyReason::Forbidden), now);
            return;
        }
        let online = |h: &usize| self.online[*h];
        let chosen = (1..self.online.len())
            .filter(online)
            .find(|h| connected.contains(&gateway_id(*h)))
            .or_else(|| (1..self.online.len()).find(online));
        let Some(host) = chosen else {
            self.tell_client(deny(DenyReason::Offline), now);
            return;
        };
        let Some(authorization) = self.authorization(resource, host) else {
            return;
        };
        self.next_ref += 1;
        let portal_ref = format!("p{}", self.next_ref);
        self.pending
            .insert(portal_ref.clone(), (reference, resource, host));
        self.tell_gateway(
            host,
            PortalToGateway::Authorize {
                reference: portal_ref,
                authorization: Box::new(authorization),
            },
            now,
        );
    }

    pub fn gateway_says(&mut self, host: usize, message: GatewayToPortal, now: Instant) {
        match message {
            GatewayToPortal::Authorized { reference } => {
                let Some((client_ref, resource, from)) = self.pending.remove(&reference) else {
                    return;
                };
                if from != host || !self.allowed {
                    return;
                }
                if let Some(old) = self.grants.insert(resource, host)
                    && old != host
                {
                    self.tell_gateway(
                        old,
                        PortalToGateway::Revoke {
                            client_id: CLIENT_ID,
                            resource_id: resource,
                        },
                        now,
                    );
                }
                let granted = PortalToClient::AccessGranted {
                    reference: client_ref,
                    resource_id: resource,
                    gateway: Peer {
                        id: gateway_id(host),
                        public_key: self.keys[host],
                        ipv4: gateway_v4(host),
                        ipv6: gateway_v6(host),
                    },
                    preshared_key: self.psk(host),
                    ice: ice(host),
                    expires_at: None,
                };
                self.tell_client(granted, now);
            }
            GatewayToPortal::Flows { batch, flows } => {
                self.flows
                    .extend(flows.into_iter().map(|flow| (host, flow)));
                self.tell_gateway(host, PortalToGateway::FlowsStored { batch }, now);
            }
            GatewayToPortal::IceCandidates {
                peer_id,
                candidates,
            } if peer_id == CLIENT_ID && self.paired(host) => self.tell_client(
                PortalToClient::IceCandidates {
                    peer_id: gateway_id(host),
                    candidates,
                },
                now,
            ),
            _ => {}
        }
    }

    /// The policy goes: every grant is revoked at its gateway, the client
    /// is told. Requests still waiting on their gateway are refused, and
    /// the gateway takes back the authorization it applies on arrival (as
    /// the real portal's `refuse` does): its late `authorized` finds
    /// nothing pending.
    pub fn revoke_all(&mut self, now: Instant) {
        self.allowed = false;
        let mut pending: Vec<(String, ResourceId, usize)> =
            std::mem::take(&mut self.pending).into_values().collect();
        pending.sort();
        for (reference, resource, host) in pending {
            self.tell_gateway(
                host,
                PortalToGateway::Revoke {
                    client_id: CLIENT_ID,
                    resource_id: resource,
                },
                now,
            );
            self.tell_client(
                PortalToClient::AccessDenied {
                    reference,
                    resource_id: resource,
                    reason: DenyReason::Forbidden,
                    violated: vec![],
                },
                now,
            );
        }
        let grants: Vec<(ResourceId, usize)> =
            std::mem::take(&mut self.grants).into_iter().collect();
        for (resource, host) in grants {
            self.tell_gateway(
                host,
                PortalToGateway::Revoke {
                    client_id: CLIENT_ID,
                    resource_id: resource,
                },
                now,
            );
            self.tell_client(
                PortalToClient::AccessRevoked {
                    resource_id: resource,
                },
                now,
            );
        }
    }

    /// A resource changed (filters): gateways enforcing it, or about to
    /// (an authorization on its way carries the old filters), and the
    /// client hear at once.
    pub fn update_resource(&mut self, resource: ResourceDescription, now: Instant) {
        let id = resource.id;
        self.resources.insert(id, resource.clone());
        let mut hosts: Vec<usize> = self
            .grants
            .iter()
            .filter(|(r, _)| **r == id)
            .map(|(_, h)| *h)
            .chain(self.pending.values().filter(|p| p.1 == id).map(|p| p.2))
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        for host in hosts {
            self.tell_gateway(
                host,
                PortalToGateway::ResourceUpdated {
                    resource: resource.clone(),
                },
                now,
            );
        }
        self.tell_client(PortalToClient::ResourceUpserted { resource }, now);
    }

    /// A gateway reconnected with a new key: its grants are void and the
    /// client must ask again.
    pub fn gateway_restarted(&mut self, host: usize, key: PublicKey, now: Instant) {
        self.keys[host] = key;
        let void: Vec<ResourceId> = self
            .grants
            .iter()
            .filter(|(_, h)| **h == host)
            .map(|(r, _)| *r)
            .collect();
        for resource in void {
            self.grants.remove(&resource);
            self.tell_client(
                PortalToClient::AccessRevoked {
                    resource_id: resource,
                },
                now,
            );
        }
        self.gateway_init(host, now);
    }

    /// Messages due now, in order.
    pub fn due(&mut self, now: Instant) -> (Vec<PortalToClient>, Vec<(usize, PortalToGateway)>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.to_client)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.to_client = later;
        let client = due.into_iter().map(|(_, m)| m).collect();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.to_gateways)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.to_gateways = later;
        let gateways = due.into_iter().map(|(_, h, m)| (h, m)).collect();
        (client, gateways)
    }

    pub fn next_due(&self) -> Option<Instant> {
        let client = self.to_client.iter().map(|(at, _)| *at);
        let gateways = self.to_gateways.iter().map(|(at, _, _)| *at);
        client.chain(gateways).min()
    }
}

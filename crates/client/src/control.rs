//! The client's half of the control protocol: portal messages become
//! resources, routes, grants and tunnel peers; [`ClientState`] and node
//! events become frames for the portal and packets for the TUN.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use ipnet::IpNet;
use postern_model::protocol::{
    ClientToPortal, DisconnectReason, Interface, PortalToClient, ResourceDescription,
};
use postern_model::resource::ResourceType;
use postern_sys::device::{self, PeerKeys, send_frame};
use postern_sys::metrics::Tally;
use postern_sys::route::Routes;
use postern_sys::tun::{Tun, TunAddresses};
use postern_tunnel::client::{Access, ClientConfig, ClientEvent, ClientState};
use postern_tunnel::control::{self, TunnelMessage};
use postern_tunnel::node::{Node, NodeEvent, PeerConfig};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::dns::DnsQuery;
use crate::names::Names;
use crate::status::{InterfaceStatus, ResourceLine, Status};
use crate::system_dns::{self, ResolvConf, ResolvedLink, SystemDns};

pub struct Control {
    pub node: Node,
    pub state: ClientState,
    pub tally: Tally,
    tun: Option<Tun>,
    routes: Option<Routes>,
    routed: BTreeSet<IpNet>,
    interface_name: String,
    interface: Option<Interface>,
    resources: Vec<ResourceDescription>,
    relays: HashSet<Uuid>,
    peers: HashMap<Uuid, PeerKeys>,
    /// Each gateway's tunnel addresses: in-tunnel messages come from them.
    gateway_addresses: HashMap<Uuid, [std::net::IpAddr; 2]>,
    pub(crate) names: Names,
    dns: DnsSettings,
    /// How the system is pointed at the stub; undone on drop.
    system_dns: Option<SystemDns>,
    /// The account's search domain, from `init`.
    search_domain: Option<String>,
}

/// How the system's DNS is pointed at the stub.
#[derive(Clone, Debug, Default)]
pub enum SystemDnsMode {
    /// Leave it alone (the stub still answers on the sentinels).
    Off,
    /// systemd-resolved if it manages DNS here, else /etc/resolv.conf.
    #[default]
    Auto,
    /// Take over this resolv.conf.
    File(std::path::PathBuf),
}

/// How the client answers DNS (from its command line).
#[derive(Clone, Debug, Default)]
pub struct DnsSettings {
    /// Resolvers for names that are not resources; empty: the system's
    /// (from resolv.conf before the stub took it over).
    pub upstreams: Vec<std::net::SocketAddr>,
    /// How to point the system at the stub.
    pub system: SystemDnsMode,
    /// Where the copy of resolv.conf is kept while it is taken over.
    pub state_dir: std::path::PathBuf,
    /// Where the stub's queries go (the daemon's loop).
    pub queries: Option<mpsc::Sender<DnsQuery>>,
}

/// The prefixes a resource needs routed through the tunnel.
fn routes_of(resource: &ResourceDescription) -> Vec<IpNet> {
    let address = resource.address.as_deref().unwrap_or_default();
    match resource.kind {
        ResourceType::Cidr => address.parse().into_iter().collect(),
        ResourceType::Ip => address
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .into_iter()
            .collect(),
        // DNS resources route their proxy addresses (the DNS stub), the
        // internet resource a default route: neither is wired yet.
        ResourceType::Dns | ResourceType::Internet => vec![],
    }
}

impl Control {
    pub fn new(node: Node, interface_name: String, dns: DnsSettings) -> Self {
        Control {
            names: Names::default(),
            dns,
            system_dns: None,
            search_domain: None,
            node,
            state: ClientState::new(ClientConfig::default()),
            tally: Tally::default(),
            tun: None,
            routes: None,
            routed: BTreeSet::new(),
            interface_name,
            interface: None,
            resources: Vec::new(),
            relays: HashSet::new(),
            peers: HashMap::new(),
            gateway_addresses: HashMap::new(),
        }
    }

    pub fn tun(&self) -> Option<&Tun> {
        self.tun.as_ref()
    }

    /// Our tunnel IPv4 address, once the portal said it.
    pub(crate) fn tunnel_ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.interface.as_ref().map(|i| i.ipv4)
    }

    pub(crate) fn gateway_addresses_of(&self, gateway: Uuid) -> Vec<std::net::IpAddr> {
        self.gateway_addresses
            .get(&gateway)
            .map(|a| a.to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn resources(&self) -> &[ResourceDescription] {
        &self.resources
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.node.poll_timeout(),
            self.state.poll_timeout(),
            self.names.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.state.handle_timeout(now);
        self.names_timeout(now);
    }

    /// One frame from the portal; `Err` ends the daemon.
    pub async fn handle_portal(&mut self, text: &str, now: Instant) -> Result<(), String> {
        let message: PortalToClient = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "ignoring a frame this version does not know");
                return Ok(());
            }
        };
        match message {
            PortalToClient::Init {
                interface,
                resources,
                relays,
            } => {
                self.set_interface(&interface).await?;
                device::add_relays(&mut self.node, &mut self.relays, &relays, now);
                tracing::info!(
                    ipv4 = %interface.ipv4, ipv6 = %interface.ipv6,
                    resources = resources.len(), relays = relays.len(), "portal init"
                );
                self.resources = resources.clone();
                self.state.set_resources(resources);
                self.names.set_resources(&self.resources);
                self.sync_routes().await;
            }
            PortalToClient::ResourceUpserted { resource } => {
                tracing::info!(resource = %resource.id, name = %resource.name, "resource available");
                self.resources.retain(|r| r.id != resource.id);
                self.resources.push(resource.clone());
                self.state.upsert_resource(resource);
                self.names.set_resources(&self.resources);
                self.sync_routes().await;
            }
            PortalToClient::ResourceRemoved { id } => {
                tracing::info!(resource = %id, "resource removed");
                self.resources.retain(|r| r.id != id);
                self.state.remove_resource(id);
                self.names.set_resources(&self.resources);
                self.sync_routes().await;
            }
            PortalToClient::RelaysChanged { added, .. } => {
                device::add_relays(&mut self.node, &mut self.relays, &added, now)
            }
            PortalToClient::AccessGranted {
                resource_id,
                gateway,
                preshared_key,
                ice,
                expires_at,
                ..
            } => {
                let Some(keys) = PeerKeys::decode(&gateway.public_key, &preshared_key) else {
                    tracing::warn!(gateway = %gateway.id, "grant with malformed keys ignored");
                    return Ok(());
                };
                if self.peers.get(&gateway.id) != Some(&keys) {
                    self.node.remove_peer(gateway.id);
                    self.node.add_peer(
                        gateway.id,
                        PeerConfig {
                            public_key: keys.public_key,
                            preshared_key: keys.preshared_key,
                            local_ice: ice.client,
                            remote_ice: ice.gateway,
                        },
                        now,
                    );
                    self.peers.insert(gateway.id, keys);
                }
                self.gateway_addresses
                    .insert(gateway.id, [gateway.ipv4.into(), gateway.ipv6.into()]);
                tracing::info!(resource = %resource_id, gateway = %gateway.id, "access granted");
                self.grant(
                    resource_id,
                    gateway.id,
                    device::deadline(expires_at, now),
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
                self.state.access_denied(resource_id, reason, violated, now);
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
                self.state.access_revoked(resource_id);
            }
            PortalToClient::Disconnect { reason } => {
                if matches!(
                    reason,
                    DisconnectReason::TokenRevoked | DisconnectReason::TokenExpired
                ) {
                    return Err(format!(
                        "the portal disconnected this client: {reason:?}; sign in again with `postern client sign-in`"
                    ));
                }
                tracing::warn!(?reason, "the portal disconnected this client");
            }
            PortalToClient::Error { message, .. } => {
                tracing::warn!(%message, "the portal reported an error");
            }
        }
        Ok(())
    }

    async fn set_interface(&mut self, interface: &Interface) -> Result<(), String> {
        let first = self.tun.is_none();
        if first {
            let tun = Tun::create(
                &self.interface_name,
                TunAddresses {
                    ipv4: interface.ipv4,
                    ipv4_prefix: 32,
                    ipv6: interface.ipv6,
                    ipv6_prefix: 128,
                },
            )
            .map_err(|e| e.to_string())?;
            self.routes = Some(Routes::new(tun.index()).map_err(|e| e.to_string())?);
            tracing::info!(
                interface = tun.name(),
                offload = tun.offload(),
                "tunnel interface up"
            );
            self.tun = Some(tun);
        }
        self.interface = Some(interface.clone());
        if first {
            self.start_dns(interface.search_domain.as_deref()).await?;
        }
        Ok(())
    }

    /// The stub on the sentinel addresses (given to the tunnel interface so
    /// the kernel delivers queries locally), then the system pointed at it.
    async fn start_dns(&mut self, search: Option<&str>) -> Result<(), String> {
        let Some(queries) = self.dns.queries.clone() else {
            return Ok(());
        };
        let Some(tun) = &self.tun else { return Ok(()) };
        let sentinels = [
            std::net::IpAddr::V4(postern_model::plan::DNS_SENTINEL_V4),
            std::net::IpAddr::V6(postern_model::plan::DNS_SENTINEL_V6),
        ];
        for sentinel in sentinels {
            tun.add_address(sentinel)
                .map_err(|e| format!("cannot give {sentinel} to the tunnel interface: {e}"))?;
        }
        crate::dns::serve(&sentinels, queries, std::sync::Arc::clone(&self.names.stub))
            .await
            .map_err(|e| format!("cannot serve DNS on the sentinel addresses: {e}"))?;
        let mut upstreams = self.dns.upstreams.clone();
        self.search_domain = search.map(str::to_string);
        let file = match self.dns.system.clone() {
            SystemDnsMode::Off => None,
            SystemDnsMode::File(path) => Some(path),
            SystemDnsMode::Auto => match system_dns::resolved() {
                Some(resolvectl) => {
                    let link = ResolvedLink::take_over(resolvectl, tun.name())
                        .map_err(|e| format!("cannot hand the stub to systemd-resolved: {e}"))?;
                    if upstreams.is_empty() {
                        // Names that are not resources, asked of the stub
                        // directly: resolved's own stub answers them.
                        upstreams.push(std::net::SocketAddr::from(([127, 0, 0, 53], 53)));
                    }
                    self.system_dns = Some(SystemDns::Resolved(link));
                    None
                }
                None => Some(std::path::PathBuf::from("/etc/resolv.conf")),
            },
        };
        if let Some(path) = file {
            let (guard, original) = ResolvConf::take_over(&path, &self.dns.state_dir, search)
                .map_err(|e| format!("cannot point {} at the stub: {e}", path.display()))?;
            if upstreams.is_empty() {
                upstreams = postern_sys::dns::nameservers(&original);
            }
            self.system_dns = Some(SystemDns::ResolvConf { _guard: guard });
        }
        self.update_dns_domains();
        let system = match &self.system_dns {
            None => "left alone",
            Some(SystemDns::ResolvConf { .. }) => "resolv.conf",
            Some(SystemDns::Resolved(_)) => "systemd-resolved",
        };
        tracing::info!(upstreams = ?upstreams, system, "DNS stub serving");
        self.names.upstreams = std::sync::Arc::new(upstreams);
        Ok(())
    }

    /// With systemd-resolved: the DNS resources' domains route to the stub.
    fn update_dns_domains(&self) {
        let Some(SystemDns::Resolved(link)) = &self.system_dns else {
            return;
        };
        let mut domains: Vec<String> = self
            .resources
            .iter()
            .filter(|r| r.kind == ResourceType::Dns)
            .filter_map(|r| r.address.as_deref().and_then(system_dns::routing_domain))
            .collect();
        domains.sort();
        domains.dedup();
        if let Err(error) = link.set_domains(&domains, self.search_domain.as_deref()) {
            tracing::warn!(%error, "could not set the routing domains");
        }
    }

    /// Routes exactly the resources' prefixes through the tunnel.
    async fn sync_routes(&mut self) {
        self.update_dns_domains();
        let Some(routes) = &self.routes else { return };
        let mut wanted: BTreeSet<IpNet> = self.resources.iter().flat_map(routes_of).collect();
        wanted.extend(self.proxy_routes());
        for prefix in self.routed.difference(&wanted) {
            if let Err(error) = routes.remove(*prefix).await {
                tracing::warn!(%error, "cannot remove a route");
            }
        }
        let mut routed = BTreeSet::new();
        for prefix in &wanted {
            match routes.add(*prefix).await {
                Ok(()) => {
                    routed.insert(*prefix);
                }
                Err(error) => tracing::warn!(%error, "cannot add a route"),
            }
        }
        self.routed = routed;
    }

    /// What the client state asks for.
    pub fn drain_state(&mut self, now: Instant, outgoing: &mpsc::Sender<String>) {
        while let Some(event) = self.state.poll_event() {
            match event {
                ClientEvent::RequestAccess {
                    reference,
                    resource_id,
                    connected_gateway_ids,
                } => send_frame(
                    outgoing,
                    &ClientToPortal::RequestAccess {
                        reference,
                        resource_id,
                        connected_gateway_ids,
                    },
                ),
                ClientEvent::Deliver { gateway, packet } => self.node.send(gateway, &packet, now),
                ClientEvent::Reply(packet) => self.write_to_apps(&packet),
            }
        }
    }

    pub fn write_to_apps(&mut self, packet: &[u8]) {
        if let Some(tun) = &self.tun {
            match tun.send(packet) {
                Ok(_) => {
                    self.tally.tun_packets_written += 1;
                    self.tally.tun_bytes_written += packet.len() as u64;
                }
                Err(error) => tracing::debug!(%error, "TUN write failed"),
            }
        }
    }

    /// Tunnel peers (gateways with a tunnel) and resources, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.peers.len(), self.resources.len())
    }

    pub fn handle_node_event(&mut self, event: NodeEvent, outgoing: &mpsc::Sender<String>) {
        match event {
            NodeEvent::Candidate { peer, candidate } => send_frame(
                outgoing,
                &ClientToPortal::IceCandidates {
                    peer_id: peer,
                    candidates: vec![candidate],
                },
            ),
            NodeEvent::Connected { peer, relayed } => {
                tracing::info!(gateway = %peer, relayed, "tunnel up")
            }
            NodeEvent::Packet { peer, packet } => self.handle_from_gateway(peer, &packet),
            NodeEvent::Dead { peer } => {
                tracing::info!(gateway = %peer, "gateway went quiet; asking the portal again");
                self.lose_gateway(peer);
            }
        }
    }

    /// A packet out of a gateway's tunnel (slow path): to the apps unless
    /// it is a message from the gateway itself.
    pub fn handle_from_gateway(&mut self, gateway: Uuid, packet: &[u8]) {
        if self.is_for_apps(gateway, packet) {
            self.write_to_apps(packet);
        }
    }

    /// Whether a packet out of a gateway's tunnel is for the apps; a message
    /// from the gateway itself is handled here instead.
    pub fn is_for_apps(&mut self, gateway: Uuid, packet: &[u8]) -> bool {
        // Only UDP can be a message: skip the parse for everything else.
        let udp = match packet.first().map(|b| b >> 4) {
            Some(4) => packet.get(9) == Some(&17),
            Some(6) => packet.get(6) == Some(&17),
            _ => false,
        };
        if udp
            && let Some(addresses) = self.gateway_addresses.get(&gateway)
            && let Some(message) = control::decode(packet, addresses)
        {
            match message {
                TunnelMessage::Goodbye => {
                    tracing::info!(%gateway, "the gateway is stopping; asking the portal again");
                    self.lose_gateway(gateway);
                }
                TunnelMessage::Assigned(result) => self.on_assigned(gateway, result),
                TunnelMessage::DnsAnswer { answer } => self.on_dns_answer(gateway, answer),
                // Only clients say these.
                TunnelMessage::AssignProxies(_) | TunnelMessage::DnsQuery { .. } => {}
            }
            return false;
        }
        true
    }

    fn lose_gateway(&mut self, gateway: Uuid) {
        self.state.gateway_lost(gateway);
        self.node.remove_peer(gateway);
        self.peers.remove(&gateway);
        self.gateway_addresses.remove(&gateway);
    }

    pub fn status(&self, portal: &str, connected: bool) -> Status {
        let resources = self
            .state
            .status()
            .into_iter()
            .map(|line| {
                let mut out = ResourceLine {
                    id: line.resource.id.to_string(),
                    name: line.resource.name.clone(),
                    address: line.resource.address.clone(),
                    access: "idle".into(),
                    reason: None,
                    gateway: None,
                    path: None,
                    bytes_sent: 0,
                    bytes_received: 0,
                };
                match line.access {
                    Access::Idle => {}
                    Access::Requested { .. } => out.access = "requested".into(),
                    Access::Granted { gateway, .. } => {
                        out.access = "granted".into();
                        out.gateway = Some(gateway.to_string());
                        out.path = Some(
                            match self.node.path(gateway) {
                                Some((_, _, true)) => "relayed",
                                Some((_, _, false)) => "direct",
                                None => "connecting",
                            }
                            .into(),
                        );
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
            })
            .collect();
        Status {
            portal: portal.to_string(),
            connected,
            interface: self
                .tun
                .as_ref()
                .zip(self.interface.as_ref())
                .map(|(tun, i)| InterfaceStatus {
                    name: tun.name().to_string(),
                    ipv4: i.ipv4.to_string(),
                    ipv6: i.ipv6.to_string(),
                }),
            resources,
        }
    }
}

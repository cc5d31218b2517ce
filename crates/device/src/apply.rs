//! The role's effects applied to this host: the tunnel interface and its
//! routes, the gateway's forwarding and masquerade, the client's DNS stub
//! and the system's resolver settings. Everything set up here is undone
//! when it is dropped (routes go with the interface, the nftables table and
//! resolv.conf are restored), also after SIGTERM; a crash is repaired at
//! the next start.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use postern_sys::firewall::{self, Forwarding, Table};
use postern_sys::route::Routes;
use postern_sys::system_dns::{self, ResolvConf, ResolvedLink};
use postern_sys::tun::{Tun, TunAddresses};
use postern_tunnel::effect::{DnsConfig, TunConfig};
use tokio::sync::mpsc;

use crate::stub::{self, StubQuery};
use crate::{DeviceError, DnsSettings, SystemDnsMode};

/// What stays on the host's own path besides what the host says.
#[derive(Clone, Debug, Default)]
pub struct HostPath {
    /// The portal's addresses.
    pub keep: Vec<IpAddr>,
    /// Local networks win over overlapping resources.
    pub local_networks_win: bool,
    /// The gateway may open the host's firewall for its tunnel.
    pub firewall_changes: bool,
    /// A client: its routes, rules and their cleanup.
    pub routing: bool,
}

/// Which side a destination in an overlap goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Winner {
    Tunnel,
    Local,
}

/// A resource prefix that overlaps one of the host's local networks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overlap {
    pub resource: IpNet,
    pub local: IpNet,
    pub interface: String,
    pub winner: Winner,
}

/// What the client's table throws back to the host's path, and the
/// overlaps: each address in `keep` that a route in `wanted` covers (as a
/// host route), and for each resource overlapping a local network, the
/// narrower of the two when local networks win. Pure, so tested alone.
pub fn host_path(
    wanted: &BTreeSet<IpNet>,
    keep: &[IpAddr],
    locals: &[(IpNet, String)],
    local_networks_win: bool,
) -> (BTreeSet<IpNet>, Vec<Overlap>) {
    let mut throws = BTreeSet::new();
    for address in keep {
        if wanted.iter().any(|prefix| prefix.contains(address)) {
            throws.insert(IpNet::from(*address));
        }
    }
    let mut overlaps = Vec::new();
    for resource in wanted {
        if resource.prefix_len() == 0 {
            // The internet resource: the local networks stay local
            // (printers, casting, the router's own pages), whoever wins
            // overlaps of named resources.
            // (A local network that a named resource covers whole is
            // decided below, by --local-networks-win; a named resource
            // inside it keeps its more specific route anyway.)
            let named_overlap = |local: &IpNet| {
                wanted.iter().any(|other| {
                    other.prefix_len() > 0
                        && other.prefix_len() <= local.prefix_len()
                        && other.contains(&local.network())
                })
            };
            throws.extend(
                locals
                    .iter()
                    .filter(|(local, _)| local.addr().is_ipv4() == resource.addr().is_ipv4())
                    .filter(|(local, _)| !named_overlap(local))
                    .map(|(local, _)| *local),
            );
            // Multicast and broadcast stay on the local link (mDNS,
            // casting, discovery): nothing at the far end wants them.
            let link_only: &[&str] = if resource.addr().is_ipv4() {
                &["224.0.0.0/4", "255.255.255.255/32"]
            } else {
                &["ff00::/8"]
            };
            throws.extend(link_only.iter().filter_map(|net| net.parse::<IpNet>().ok()));
            continue;
        }
        for (local, interface) in locals {
            let overlapping =
                resource.contains(&local.network()) || local.contains(&resource.network());
            if !overlapping {
                continue;
            }
            let winner = if local_networks_win {
                Winner::Local
            } else {
                Winner::Tunnel
            };
            if local_networks_win {
                let narrower = if resource.prefix_len() >= local.prefix_len() {
                    *resource
                } else {
                    *local
                };
                throws.insert(narrower);
            }
            overlaps.push(Overlap {
                resource: *resource,
                local: *local,
                interface: interface.clone(),
                winner,
            });
        }
    }
    (throws, overlaps)
}

/// How the system is pointed at the stub.
enum SystemDns {
    /// Kept for its drop, which writes the file back.
    ResolvConf {
        _guard: ResolvConf,
    },
    Resolved(ResolvedLink),
}

/// What this device set up on the host. Fields drop in this order: the
/// system's DNS settings and the masquerade are undone while the interface
/// still exists.
pub struct System {
    system_dns: Option<SystemDns>,
    /// The gateway's masquerade and forward filter; the client's stub guard.
    firewall: Option<Table>,
    /// Rules let into the host's own iptables FORWARD chain (gateway).
    host_firewall: Option<postern_sys::host_firewall::Opening>,
    stub_guard: Option<Table>,
    forwarding: Option<Forwarding>,
    routes: Option<Routes>,
    tun: Option<Tun>,
    interface_name: String,
    state_dir: PathBuf,
    routed: BTreeSet<IpNet>,
    /// Throw routes in the client's table: what stays on the host's path.
    thrown: BTreeSet<IpNet>,
    /// The resources' prefixes the role asked for last.
    wanted: BTreeSet<IpNet>,
    /// Prefixes inside `wanted` that stay on the host's path (the internet
    /// resource's exclusions).
    exclusions: BTreeSet<IpNet>,
    /// Resource prefixes that overlap the host's local networks, and who
    /// wins (for `postern client status`).
    overlaps: Vec<Overlap>,
    /// Addresses that always stay on the host's path (the portal's).
    keep_on_host: Vec<IpAddr>,
    /// Local networks win over overlapping resources (else the tunnel).
    local_networks_win: bool,
    /// The gateway may add rules to the host's firewall.
    firewall_changes: bool,
    /// This device routes (a client): it owns the routing table and rules.
    routing: bool,
    /// The client's DNS settings from its command line.
    dns_settings: DnsSettings,
    stub_started: bool,
    /// Where names that are not resources are asked.
    upstreams: Arc<Vec<SocketAddr>>,
}

impl System {
    pub fn new(
        interface_name: String,
        state_dir: PathBuf,
        dns_settings: DnsSettings,
        host_path: HostPath,
    ) -> Self {
        System {
            interface_name,
            state_dir,
            tun: None,
            routes: None,
            routed: BTreeSet::new(),
            thrown: BTreeSet::new(),
            wanted: BTreeSet::new(),
            exclusions: BTreeSet::new(),
            overlaps: Vec::new(),
            keep_on_host: host_path.keep,
            local_networks_win: host_path.local_networks_win,
            firewall_changes: host_path.firewall_changes,
            routing: host_path.routing,
            firewall: None,
            host_firewall: None,
            stub_guard: None,
            forwarding: None,
            dns_settings,
            system_dns: None,
            stub_started: false,
            upstreams: Arc::new(Vec::new()),
        }
    }

    pub fn tun(&self) -> Option<&Tun> {
        self.tun.as_ref()
    }

    /// The upstream resolvers for names that are not resources.
    pub fn upstreams(&self) -> Arc<Vec<SocketAddr>> {
        Arc::clone(&self.upstreams)
    }

    /// Creates the tunnel interface (once), with a netlink handle for its
    /// routes.
    pub async fn interface(&mut self, config: &TunConfig) -> Result<(), DeviceError> {
        if self.tun.is_some() {
            return Ok(());
        }
        let tun = Tun::create(
            &self.interface_name,
            TunAddresses {
                ipv4: config.ipv4,
                ipv4_prefix: config.ipv4_prefix,
                ipv6: config.ipv6,
                ipv6_prefix: config.ipv6_prefix,
            },
        )?;
        self.routes =
            Some(Routes::new(tun.index(), (config.ipv4, config.ipv6), self.routing).await?);
        tracing::info!(
            interface = tun.name(),
            offload = tun.offload(),
            "tunnel interface up"
        );
        self.tun = Some(tun);
        Ok(())
    }

    /// Routes exactly `wanted` through the tunnel, in the client's own
    /// table; what must stay on the host's path (its default gateways, its
    /// DNS servers, the portal; local networks when they are to win) is
    /// thrown back to the main table.
    pub async fn routes(&mut self, wanted: BTreeSet<IpNet>, exclusions: BTreeSet<IpNet>) {
        self.wanted = wanted.clone();
        self.exclusions = exclusions.clone();
        let Some(routes) = &mut self.routes else {
            return;
        };
        let mut keep = self.keep_on_host.clone();
        match routes.default_gateways().await {
            Ok(gateways) => keep.extend(gateways),
            Err(error) => tracing::warn!(%error, "cannot read the host's default gateways"),
        }
        keep.extend(self.upstreams.iter().map(|upstream| upstream.ip()));
        if matches!(self.system_dns, Some(SystemDns::Resolved(_))) {
            // Behind systemd-resolved the upstream is 127.0.0.53: the
            // servers it asks are these.
            keep.extend(system_dns::resolved_servers());
        }
        let locals = postern_sys::route::local_networks(&self.interface_name);
        let (mut throws, overlaps) = host_path(&wanted, &keep, &locals, self.local_networks_win);
        // An exclusion equal to a named resource's prefix would take that
        // resource's route away: the resource wins.
        throws.extend(
            exclusions
                .iter()
                .filter(|e| !wanted.contains(*e) && wanted.iter().any(|w| w.contains(*e))),
        );
        // A prefix thrown whole (a resource inside a local network that
        // wins) is not routed at all: one route per prefix in the table.
        let unicast: BTreeSet<IpNet> = wanted.difference(&throws).copied().collect();

        for prefix in self.routed.difference(&unicast) {
            if let Err(error) = routes.remove(*prefix).await {
                tracing::warn!(%error, "cannot remove a route");
            }
        }
        for prefix in self.thrown.difference(&throws) {
            if let Err(error) = routes.unthrow(*prefix).await {
                tracing::warn!(%error, "cannot remove a throw route");
            }
        }
        let mut routed = BTreeSet::new();
        for prefix in &unicast {
            match routes.add(*prefix).await {
                Ok(()) => {
                    routed.insert(*prefix);
                }
                Err(error) => tracing::warn!(%error, "cannot add a route"),
            }
        }
        let mut thrown = BTreeSet::new();
        for prefix in &throws {
            match routes.throw(*prefix).await {
                Ok(()) => {
                    thrown.insert(*prefix);
                }
                Err(error) => tracing::warn!(%error, "cannot keep {prefix} on the host's path"),
            }
        }
        for overlap in overlaps.iter().filter(|o| !self.overlaps.contains(o)) {
            tracing::info!(
                resource = %overlap.resource, local = %overlap.local,
                interface = %overlap.interface, winner = ?overlap.winner,
                "a resource overlaps a local network"
            );
        }
        self.routed = routed;
        self.thrown = thrown;
        self.overlaps = overlaps;
    }

    /// Resource prefixes overlapping local networks, and who wins.
    pub fn overlaps(&self) -> &[Overlap] {
        &self.overlaps
    }

    /// The host moved: what stays on its path (gateways, DNS servers,
    /// local networks) is decided again, and the rules put back in.
    pub async fn network_changed(&mut self) {
        if let Some(routes) = &mut self.routes {
            routes.reassert();
        }
        let wanted = self.wanted.clone();
        if !wanted.is_empty() {
            let exclusions = self.exclusions.clone();
            self.routes(wanted, exclusions).await;
        }
    }

    /// Takes the client's routing table and rules away (at a clean stop;
    /// a run that died is cleaned up by the next start).
    pub async fn shutdown(&mut self) {
        if let Some(routes) = self.routes.take().filter(|_| self.routing)
            && let Err(error) = routes.clean().await
        {
            tracing::warn!(%error, "cannot remove the client's routing rules");
        }
    }

    /// IP forwarding on (restored at exit), masquerade for `sources`
    /// leaving through any interface but the tunnel, and the forward filter
    /// that lets into the tunnel only answers to the clients' flows (once).
    pub fn masquerade(&mut self, sources: &[IpNet]) -> Result<(), DeviceError> {
        if self.firewall.is_some() {
            return Ok(());
        }
        let Some(tun) = &self.tun else {
            return Ok(());
        };
        let table = format!("postern_{}", tun.name().replace('-', "_"));
        let installed = firewall::install_gateway(&table, tun.name(), sources)?;
        self.forwarding = Some(Forwarding::enable()?);
        self.firewall = Some(installed);
        if self.firewall_changes {
            match postern_sys::host_firewall::Opening::open(tun.name()) {
                Ok(opening) => self.host_firewall = Some(opening),
                Err(error) => {
                    tracing::warn!(%error, "cannot open the host's firewall for the tunnel; forwarded packets may be dropped")
                }
            }
        } else {
            for blocking in postern_sys::host_firewall::diagnose(tun.name()) {
                tracing::warn!(
                    "{} drops what this gateway forwards ({}); --no-firewall-changes, so add: {}",
                    blocking.firewall,
                    blocking.reason,
                    blocking.commands(tun.name()).join("; ")
                );
            }
        }
        tracing::info!(interface = tun.name(), %table, "masquerade and forward filter on");
        Ok(())
    }

    /// The first time: the stub on the sentinels, then the system pointed
    /// at it. Later: the routing and search domains.
    pub async fn dns(
        &mut self,
        config: &DnsConfig,
        queries: &mpsc::Sender<StubQuery>,
    ) -> Result<(), DeviceError> {
        if !self.stub_started {
            self.start_dns(config, queries).await?;
            self.stub_started = true;
            // The DNS servers are known now: they stay on the host's path.
            let (wanted, exclusions) = (self.wanted.clone(), self.exclusions.clone());
            self.routes(wanted, exclusions).await;
        }
        if let Some(SystemDns::Resolved(link)) = &self.system_dns
            && let Err(error) =
                link.set_domains(&config.routing_domains, config.search_domain.as_deref())
        {
            tracing::warn!(%error, "could not set the routing domains");
        }
        Ok(())
    }

    /// `--dns-upstream`, else the portal's resolvers (empty: neither).
    fn chosen_upstreams(&self, config: &DnsConfig) -> Vec<SocketAddr> {
        if self.dns_settings.upstreams.is_empty() {
            config
                .upstreams
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect()
        } else {
            self.dns_settings.upstreams.clone()
        }
    }

    /// The userspace client: no stub on the sentinels, the system's DNS
    /// left alone; names that are not resources go to `--dns-upstream`,
    /// else the portal's resolvers, else the ones in /etc/resolv.conf.
    pub fn upstreams_only(&mut self, config: &DnsConfig) {
        if self.stub_started {
            return;
        }
        self.stub_started = true;
        let mut upstreams = self.chosen_upstreams(config);
        if upstreams.is_empty() {
            upstreams = std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| postern_sys::dns::nameservers(&text, &config.sentinels))
                .unwrap_or_default();
        }
        tracing::info!(upstreams = ?upstreams, "names that are not resources go to these resolvers");
        self.upstreams = Arc::new(upstreams);
    }

    async fn start_dns(
        &mut self,
        config: &DnsConfig,
        queries: &mpsc::Sender<StubQuery>,
    ) -> Result<(), DeviceError> {
        let Some(tun) = &self.tun else {
            return Ok(());
        };
        // Never a source address (the gateway drops anything but the
        // client's tunnel address): deprecated, and every route names its
        // source besides.
        if let Some(routes) = &self.routes {
            for sentinel in &config.sentinels {
                routes
                    .add_receive_only_address(*sentinel)
                    .await
                    .map_err(|error| DeviceError::Io {
                        what: format!("cannot give {sentinel} to the tunnel interface"),
                        source: std::io::Error::other(error.to_string()),
                    })?;
            }
        }
        stub::serve(&config.sentinels, queries.clone()).map_err(DeviceError::io(
            "cannot serve DNS on the sentinel addresses",
        ))?;
        // The stub answers this host only, not whoever routes the
        // sentinels to it.
        let table = format!("postern_{}_stub", tun.name().replace('-', "_"));
        self.stub_guard = Some(firewall::install_stub(&table, &config.sentinels)?);
        let mut upstreams = self.chosen_upstreams(config);
        let file = match self.dns_settings.system.clone() {
            SystemDnsMode::Off => None,
            SystemDnsMode::File(path) => Some(path),
            SystemDnsMode::Auto => match system_dns::resolved() {
                Some(resolvectl) => {
                    let link =
                        ResolvedLink::take_over(resolvectl, tun.name(), &config.sentinels)
                            .map_err(DeviceError::io("cannot hand the stub to systemd-resolved"))?;
                    if upstreams.is_empty() {
                        // Names that are not resources, asked of the stub
                        // directly: resolved's own stub answers them.
                        upstreams.push(SocketAddr::from(([127, 0, 0, 53], 53)));
                    }
                    self.system_dns = Some(SystemDns::Resolved(link));
                    None
                }
                None => Some(PathBuf::from("/etc/resolv.conf")),
            },
        };
        if let Some(path) = file {
            let (guard, original) = take_over(&path, &self.state_dir, config)?;
            if upstreams.is_empty() {
                upstreams = postern_sys::dns::nameservers(&original, &config.sentinels);
            }
            self.system_dns = Some(SystemDns::ResolvConf { _guard: guard });
        }
        let system = match &self.system_dns {
            None => "left alone",
            Some(SystemDns::ResolvConf { .. }) => "resolv.conf",
            Some(SystemDns::Resolved(_)) => "systemd-resolved",
        };
        tracing::info!(upstreams = ?upstreams, system, "DNS stub serving");
        self.upstreams = Arc::new(upstreams);
        Ok(())
    }
}

fn take_over(
    path: &Path,
    state_dir: &Path,
    config: &DnsConfig,
) -> Result<(ResolvConf, String), DeviceError> {
    let sentinels: &[IpAddr] = &config.sentinels;
    ResolvConf::take_over(path, state_dir, sentinels, config.search_domain.as_deref()).map_err(
        DeviceError::io(format!("cannot point {} at the stub", path.display())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn home() -> Vec<(IpNet, String)> {
        vec![("192.168.1.0/24".parse().unwrap(), "wlan0".to_string())]
    }

    fn keep() -> Vec<IpAddr> {
        // The home router (default gateway), the home DNS server, the portal.
        ["192.168.1.1", "192.168.1.53", "198.18.0.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    #[test]
    fn the_hosts_own_path_stays_local_inside_a_resource_and_the_tunnel_wins_the_rest() {
        let (throws, overlaps) = host_path(&nets(&["192.168.1.0/24"]), &keep(), &home(), false);
        assert_eq!(throws, nets(&["192.168.1.1/32", "192.168.1.53/32"]));
        assert_eq!(
            overlaps,
            vec![Overlap {
                resource: "192.168.1.0/24".parse().unwrap(),
                local: "192.168.1.0/24".parse().unwrap(),
                interface: "wlan0".into(),
                winner: Winner::Tunnel,
            }]
        );
    }

    /// The internet resource's default routes: the local networks stay
    /// local (without an overlap to report), the host's own path too, and
    /// a named resource over the local network is still decided by
    /// `--local-networks-win`.
    #[test]
    fn with_the_internet_resource_local_networks_stay_local() {
        let wanted = nets(&["0.0.0.0/0", "::/0"]);
        let mut locals = home();
        locals.push(("fd20::/64".parse().unwrap(), "wlan0".into()));
        let (throws, overlaps) = host_path(&wanted, &keep(), &locals, false);
        assert_eq!(
            throws,
            nets(&[
                "192.168.1.0/24",
                "192.168.1.1/32",
                "192.168.1.53/32",
                "198.18.0.2/32",
                "224.0.0.0/4",
                "255.255.255.255/32",
                "fd20::/64",
                "ff00::/8"
            ])
        );
        assert!(overlaps.is_empty(), "{overlaps:?}");
        // A named resource inside a wider local network: the rest of the
        // network stays local, the resource's own route is more specific.
        let wide = vec![("192.168.0.0/16".parse().unwrap(), "wlan0".to_string())];
        let (throws, _) = host_path(&nets(&["0.0.0.0/0", "192.168.5.0/24"]), &[], &wide, false);
        assert!(
            throws.contains(&"192.168.0.0/16".parse().unwrap()),
            "{throws:?}"
        );
        let with_named = nets(&["0.0.0.0/0", "192.168.1.0/24"]);
        let (throws, overlaps) = host_path(&with_named, &[], &home(), false);
        assert!(
            !throws.contains(&"192.168.1.0/24".parse().unwrap()),
            "{throws:?}"
        );
        assert_eq!(overlaps.len(), 1);
    }

    #[test]
    fn when_local_networks_win_the_narrower_prefix_is_thrown() {
        // A resource inside the local network: thrown whole.
        let (throws, overlaps) = host_path(&nets(&["192.168.1.128/25"]), &[], &home(), true);
        assert_eq!(throws, nets(&["192.168.1.128/25"]));
        assert_eq!(overlaps[0].winner, Winner::Local);
        // A resource containing it: the local network is thrown, the rest
        // of the resource goes through the tunnel.
        let (throws, _) = host_path(&nets(&["192.168.0.0/16"]), &[], &home(), true);
        assert_eq!(throws, nets(&["192.168.1.0/24"]));
        // Equal: thrown.
        let (throws, _) = host_path(&nets(&["192.168.1.0/24"]), &[], &home(), true);
        assert_eq!(throws, nets(&["192.168.1.0/24"]));
    }

    #[test]
    fn nothing_is_thrown_or_reported_without_an_overlap() {
        let (throws, overlaps) =
            host_path(&nets(&["10.0.1.0/24", "fd10::/64"]), &keep(), &home(), true);
        assert!(throws.is_empty(), "{throws:?}");
        assert!(overlaps.is_empty(), "{overlaps:?}");
    }
}

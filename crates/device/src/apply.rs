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
    stub_guard: Option<Table>,
    forwarding: Option<Forwarding>,
    routes: Option<Routes>,
    tun: Option<Tun>,
    interface_name: String,
    state_dir: PathBuf,
    routed: BTreeSet<IpNet>,
    /// The client's DNS settings from its command line.
    dns_settings: DnsSettings,
    stub_started: bool,
    /// Where names that are not resources are asked.
    upstreams: Arc<Vec<SocketAddr>>,
}

impl System {
    pub fn new(interface_name: String, state_dir: PathBuf, dns_settings: DnsSettings) -> Self {
        System {
            interface_name,
            state_dir,
            tun: None,
            routes: None,
            routed: BTreeSet::new(),
            firewall: None,
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
    pub fn interface(&mut self, config: &TunConfig) -> Result<(), DeviceError> {
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
        self.routes = Some(Routes::new(tun.index(), (config.ipv4, config.ipv6))?);
        tracing::info!(
            interface = tun.name(),
            offload = tun.offload(),
            "tunnel interface up"
        );
        self.tun = Some(tun);
        Ok(())
    }

    /// Routes exactly `wanted` through the tunnel.
    pub async fn routes(&mut self, wanted: BTreeSet<IpNet>) {
        let Some(routes) = &self.routes else { return };
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
        }
        if let Some(SystemDns::Resolved(link)) = &self.system_dns
            && let Err(error) =
                link.set_domains(&config.routing_domains, config.search_domain.as_deref())
        {
            tracing::warn!(%error, "could not set the routing domains");
        }
        Ok(())
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
        let mut upstreams = if self.dns_settings.upstreams.is_empty() {
            config
                .upstreams
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect()
        } else {
            self.dns_settings.upstreams.clone()
        };
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

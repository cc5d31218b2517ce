//! The device daemons (SPEC F16-F24): one loop drives either role of
//! `postern-tunnel` ([`postern_tunnel::client::ClientTunnel`],
//! [`postern_tunnel::gateway::GatewayTunnel`]) and applies what it asks
//! for with `postern-sys`: the TUN interface, routes, the client's DNS stub
//! and the system's resolver settings, the gateway's masquerade and name
//! lookups. The loop moves bytes and applies effects; every protocol
//! decision is the role's.
//!
//! - [`shell`]: the loop and the data path (batched UDP, TUN offloads);
//! - [`apply`]: effects into the kernel and the system;
//! - [`start`]: identity, socket and portal channel before the loop;
//! - [`portal`]: what the portal channel's events mean;
//! - [`stub`]: the DNS stub's sockets on the sentinel addresses;
//! - [`resolver`]: the gateway's lookups with the system resolver;
//! - [`status`]: `postern client status` over a unix socket;
//! - [`userspace`]: the client without root: a SOCKS5 proxy and a TCP/IP
//!   stack in place of the TUN.

mod apply;
pub mod internet;
mod portal;
mod relay_stream;
mod resolver;
mod shell;
mod start;
pub mod status;
mod stub;
pub mod userspace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use postern_sys::metrics::DeviceMetrics;
use postern_tunnel::client::{ClientConfig, ClientTunnel};
use postern_tunnel::effect::Stop;
use postern_tunnel::gateway::GatewayTunnel;

pub use apply::{Overlap, Winner, host_path};
pub use start::StartError;

/// What a device daemon (client or gateway) is told on its command line.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// `https://...` portal URL (checked against `trust`).
    pub portal: String,
    /// Roots for an https portal; whether http may leave loopback.
    pub trust: postern_sys::trust::PortalTrust,
    pub token: String,
    /// Name shown in the portal.
    pub name: String,
    /// UDP port for WireGuard and ICE (0: any).
    pub port: u16,
    /// Where the device id lives.
    pub state_dir: PathBuf,
    /// Name of the TUN interface.
    pub interface: String,
    /// Where the loop publishes its counters (for `--metrics`).
    pub metrics: Option<Arc<DeviceMetrics>>,
    /// A gateway may add rules to the host's firewall so its forwarding
    /// works (`--no-firewall-changes` turns that into a diagnosis).
    pub firewall_changes: bool,
}

/// How the system's DNS is pointed at the client's stub.
#[derive(Clone, Debug, Default)]
pub enum SystemDnsMode {
    /// Leave it alone (the stub still answers on the sentinels).
    Off,
    /// systemd-resolved if it manages DNS here, else /etc/resolv.conf.
    #[default]
    Auto,
    /// Take over this resolv.conf.
    File(PathBuf),
}

/// The client's DNS, from its command line.
#[derive(Clone, Debug, Default)]
pub struct DnsSettings {
    /// Resolvers for names that are not resources; empty: the portal's,
    /// else the system's (from resolv.conf before the stub took it over).
    pub upstreams: Vec<SocketAddr>,
    /// How to point the system at the stub.
    pub system: SystemDnsMode,
}

/// What only the client has.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub dns: DnsSettings,
    /// Where `postern client status` asks.
    pub status_socket: PathBuf,
    /// Local networks win over resources that overlap them (else the
    /// tunnel does: the admin configured the resource).
    pub local_networks_win: bool,
    /// Userspace mode: no TUN, no routes, no DNS settings; apps connect
    /// through a SOCKS5 proxy listening here.
    pub socks5: Option<SocketAddr>,
}

/// Why a device daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The portal channel failed for good (unreachable at start, a refused
    /// token).
    #[error("{0}")]
    Portal(String),
    /// The portal revoked the device's credentials.
    #[error("{0}")]
    Stopped(Stop),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tun(#[from] postern_sys::tun::TunError),
    #[error(transparent)]
    Routes(#[from] postern_sys::route::RouteError),
    #[error(transparent)]
    Firewall(#[from] postern_sys::firewall::FirewallError),
}

impl DeviceError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
        let what = what.into();
        move |source| DeviceError::Io { what, source }
    }
}

/// Runs the client until `stop` resolves or the portal refuses the token.
pub async fn run_client(
    config: DeviceConfig,
    options: ClientOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DeviceError> {
    let started = start::start(start::Party::Client, &config).await?;
    tracing::info!(
        device_id = %started.device_id, locals = ?started.locals,
        receive_buffer = started.buffers.0, send_buffer = started.buffers.1,
        "client starting"
    );
    let role = ClientTunnel::new(
        &started.locals,
        started.secret,
        started.seed,
        ClientConfig {
            protected: vec![started.portal_ip],
            internet_off: !internet::load(&config.state_dir),
            // Without routes, every destination comes to the role.
            refuse_unrouted: options.socks5.is_some(),
            ..ClientConfig::default()
        },
    );
    shell::Shell::new(role, started, &config, Some(options))?
        .run(stop)
        .await
}

/// Runs the gateway until `stop` resolves (then says goodbye) or the portal
/// refuses the token.
pub async fn run_gateway(
    config: DeviceConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DeviceError> {
    let started = start::start(start::Party::Gateway, &config).await?;
    tracing::info!(
        device_id = %started.device_id, locals = ?started.locals,
        receive_buffer = started.buffers.0, send_buffer = started.buffers.1,
        name = %config.name, "gateway starting"
    );
    let role = GatewayTunnel::new(&started.locals, started.secret, started.seed);
    shell::Shell::new(role, started, &config, None)?
        .run(stop)
        .await
}

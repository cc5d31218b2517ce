//! The relay daemon: the sans-IO TURN core of `postern-turn` behind UDP
//! sockets, and TCP for clients on networks that drop UDP.
//!
//! One worker thread per core. Each has its own listening socket on the same
//! address (SO_REUSEPORT: the kernel hashes each client's address to one
//! worker, so one client's packets are never reordered), its own core with a
//! disjoint slice of the port range (no shared state on the data path; only
//! EVEN-PORT reservations are shared, since a client's two sockets may hash
//! to two workers), and a mio
//! event loop that receives in batches (recvmmsg, GRO) and sends per turn
//! of the loop: each flow's same-size datagrams in one GSO send, a
//! socket's flows together in one sendmmsg (`outbox`), so even clients that
//! send one datagram per system call are relayed with few.

mod metrics;
mod outbox;
mod stream;
mod worker;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use ipnet::IpNet;
use postern_turn::server::{PeerPolicy, ServerConfig};

pub use metrics::{Metrics, serve_metrics};

/// Startup failures; once running, the relay logs and counts errors instead.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
    #[error("the port range {0:?} leaves no port for {1} workers")]
    TooFewPorts(RangeInclusive<u16>, usize),
    #[error("cannot read randomness from /dev/urandom")]
    Random(#[source] std::io::Error),
    #[error("TLS certificate or key {path}: {reason}")]
    Tls {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// How to run the relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    /// Advertised relayed addresses; a family without one is refused (440).
    pub public_ipv4: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub ports: RangeInclusive<u16>,
    pub realm: String,
    pub auth_secret: Vec<u8>,
    pub workers: usize,
    pub max_allocations_per_user: usize,
    pub max_bps_per_allocation: u64,
    /// Relaying to 127.0.0.0/8 and ::1 (test setups only).
    pub allow_loopback_peers: bool,
    /// Private networks (RFC 1918, 100.64/10, fc00::/7) peers may be in;
    /// an exact address (/32, /128) also lets one of the relay's own
    /// addresses in.
    pub allow_peers: Vec<IpNet>,
    /// TURN over TLS: where, and with which certificate.
    pub tls: Option<TlsListen>,
}

/// TURN over TLS on `listen`.
#[derive(Clone, Debug)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
}

impl TlsListen {
    /// Reads the certificate chain and key (PEM).
    pub fn load(
        listen: SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<TlsListen, RelayError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = |path: &std::path::Path, reason: String| RelayError::Tls {
            path: path.to_path_buf(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|items| items.collect())
            .map_err(|e| tls(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(tls(cert, "no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| tls(cert, e.to_string()))?;
        Ok(TlsListen {
            listen,
            config: Arc::new(config),
        })
    }
}

/// A running relay: its workers and their counters.
pub struct Relay {
    workers: Vec<JoinHandle<()>>,
    controls: Vec<(mpsc::Sender<worker::Control>, Arc<mio::Waker>)>,
    pub metrics: Arc<Metrics>,
}

impl Relay {
    /// Binds every worker's sockets, then starts them. Returns once all
    /// listen, so a caller can print "ready".
    pub fn start(config: &RelayConfig, stop: Arc<AtomicBool>) -> Result<Relay, RelayError> {
        let workers = config.workers.max(1);
        let port_count = usize::from(config.ports.end() - config.ports.start()) + 1;
        if config.ports.is_empty() || port_count < workers {
            return Err(RelayError::TooFewPorts(config.ports.clone(), workers));
        }
        // SO_REUSEPORT would let this relay silently share its port with
        // another process of the same user (a second relay, say) and split
        // the traffic. A plain bind first makes that an "in use" error.
        drop(
            std::net::UdpSocket::bind(config.listen).map_err(|source| RelayError::Listen {
                addr: config.listen,
                source,
            })?,
        );
        // The same for TURN over TCP on the same port, and over TLS.
        for addr in std::iter::once(config.listen).chain(config.tls.as_ref().map(|t| t.listen)) {
            drop(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| RelayError::Listen { addr, source })?,
            );
        }
        let seed = random_seed().map_err(RelayError::Random)?;
        let peers = PeerPolicy {
            allow_loopback: config.allow_loopback_peers,
            allowed: config.allow_peers.clone(),
            own: own_addresses(config),
            listen_port: config.listen.port(),
        };
        tracing::debug!(own = ?peers.own, allowed = ?peers.allowed, "peer policy");
        let metrics = Arc::new(Metrics::new(workers));
        // EVEN-PORT reservations are redeemed by whichever worker the
        // client's second socket hashes to.
        let reservations = Arc::new(postern_turn::server::Reservations::default());
        let mut handles = Vec::with_capacity(workers);
        let mut controls = Vec::with_capacity(workers);
        for index in 0..workers {
            let mut core =
                ServerConfig::new(&config.realm, &config.auth_secret, config.public_ipv4);
            core.relay_ipv6 = config.public_ipv6;
            core.ports = config.ports.clone();
            core.shard = u16::try_from(index).unwrap_or(u16::MAX);
            core.shards = u16::try_from(workers).unwrap_or(u16::MAX);
            core.max_allocations_per_user = config.max_allocations_per_user;
            core.max_bps_per_allocation = config.max_bps_per_allocation;
            core.peers = peers.clone();
            core.reservations = Arc::clone(&reservations);
            let (control, receiver) = mpsc::channel();
            let worker = worker::Worker::bind(
                config.listen,
                config.tls.clone(),
                core,
                seed,
                index,
                Arc::clone(&metrics),
                receiver,
            )?;
            controls.push((control, worker.waker()));
            let stop = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || worker.run(&stop))
                .map_err(RelayError::Thread)?;
            handles.push(handle);
        }
        Ok(Relay {
            workers: handles,
            controls,
            metrics,
        })
    }

    /// The portal revoked these devices (`ids`: the id part of their TURN
    /// REST usernames, `expiry:id`): every worker ends their allocations at
    /// once and refuses their credentials that expire no later than
    /// `not_after_unix` (all those issued before the revocation), while
    /// credentials issued later still work. Worth sending for any device
    /// whose access ends before its relay credentials do.
    pub fn revoke(&self, ids: &[String], not_after_unix: u64) {
        let ids: Arc<[String]> = ids.into();
        for (control, waker) in &self.controls {
            let revoke = worker::Control::Revoke {
                ids: Arc::clone(&ids),
                not_after_unix,
            };
            if control.send(revoke).is_ok()
                && let Err(error) = waker.wake()
            {
                tracing::warn!(%error, "cannot wake a relay worker; it applies the revocation within 200 ms");
            }
        }
    }

    /// Waits for the workers to stop (after the stop flag is set).
    pub fn join(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

/// The relay host's addresses, which peers may not use: the listening and
/// public addresses and every interface address (the host's services
/// listen on those too).
fn own_addresses(config: &RelayConfig) -> Vec<IpAddr> {
    let mut own: Vec<IpAddr> = [
        Some(config.listen.ip()),
        config.public_ipv4.map(IpAddr::V4),
        config.public_ipv6.map(IpAddr::V6),
    ]
    .into_iter()
    .flatten()
    .collect();
    match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => {
            for interface in interfaces {
                let Some(address) = interface.address else {
                    continue;
                };
                let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                    (Some(v4), _) => IpAddr::V4(v4.ip()),
                    (_, Some(v6)) => IpAddr::V6(v6.ip()),
                    _ => continue,
                };
                own.push(ip);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list the host's addresses; only the listening and public addresses count as the relay's own")
        }
    }
    own.retain(|ip| !ip.is_unspecified());
    own.sort_unstable();
    own.dedup();
    own
}

fn random_seed() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

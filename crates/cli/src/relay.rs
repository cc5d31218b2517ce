//! `postern relay`: the STUN/TURN relay daemon.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use postern_relay::{Relay, RelayConfig, serve_metrics};

use crate::args::RelayArgs;
use crate::daemon;

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    if args.portal.is_some() {
        eprintln!(
            "postern relay --portal: not available in this build (the portal is not built yet); use --auth-secret"
        );
        return Ok(ExitCode::from(2));
    }
    let secret = args.auth_secret.unwrap_or_default();
    if secret.is_empty() {
        bail!("--auth-secret must not be empty");
    }
    if args.realm.is_empty() {
        bail!("--realm must not be empty");
    }
    let mut public_ipv4 = None;
    let mut public_ipv6 = None;
    for ip in &args.public_ip {
        let slot_taken = match ip {
            IpAddr::V4(v4) => public_ipv4.replace(*v4).is_some(),
            IpAddr::V6(v6) => public_ipv6.replace(*v6).is_some(),
        };
        if slot_taken {
            bail!("--public-ip takes at most one IPv4 and one IPv6 address");
        }
    }
    let workers = args
        .workers
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = RelayConfig {
        listen: args.listen,
        public_ipv4,
        public_ipv6,
        ports: args.ports.0.clone(),
        realm: args.realm,
        auth_secret: secret.into_bytes(),
        workers,
        max_allocations_per_user: args.max_allocations_per_user,
        max_bps_per_allocation: args.max_bps,
        allow_loopback_peers: args.allow_loopback_peers,
    };
    daemon::init_logging(args.daemon.log_format);
    let signals = daemon::block_stop_signals().context("cannot block signals")?;
    let stop = Arc::new(AtomicBool::new(false));
    let relay = Relay::start(&config, Arc::clone(&stop))?;
    if let Some(addr) = args.daemon.metrics {
        serve_metrics(addr, Arc::clone(&relay.metrics))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    tracing::info!(
        listen = %config.listen,
        public_ip = ?args.public_ip,
        ports = ?config.ports,
        workers,
        metrics = ?args.daemon.metrics,
        "relay ready"
    );
    let signal = daemon::wait_for_stop(&signals).context("waiting for a signal")?;
    tracing::info!(?signal, "stopping");
    stop.store(true, Ordering::Relaxed);
    relay.join();
    Ok(ExitCode::SUCCESS)
}

//! `postern relay`: the STUN/TURN relay daemon.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use postern_relay::{Relay, RelayConfig, TlsListen, serve_metrics};

use crate::args::RelayArgs;
use crate::daemon;

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let trust = match &args.portal {
        Some(portal) => Some(args.trust.trust_for(portal)?),
        None => None,
    };
    let secret = args.auth_secret.clone().unwrap_or_default();
    if args.portal.is_none() && secret.is_empty() {
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
        allow_peers: args.allow_peer.clone(),
        tls: match (args.tls_listen, &args.tls_cert, &args.tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(TlsListen::load(listen, cert, key)?),
            _ => None,
        },
    };
    daemon::init_logging(args.daemon.log_format);
    for (public, family) in [
        (public_ipv4.is_some(), true),
        (public_ipv6.is_some(), false),
    ] {
        // The portal announces each public address with the listening
        // port: a family the socket does not serve would be announced but
        // never answer. `[::]` serves both.
        let served = args.listen.is_ipv4() == family
            || (args.listen.ip().is_unspecified() && args.listen.is_ipv6());
        if public && !served {
            tracing::warn!(
                listen = %args.listen,
                "--public-ip has an {} address but --listen does not serve that family: devices cannot reach the relay there; listen on [::]:{}",
                if family { "IPv4" } else { "IPv6" },
                args.listen.port()
            );
        }
    }
    if let (Some(portal), Some(trust)) = (&args.portal, trust) {
        let token = crate::device::read_token(&args.token)?;
        let metrics = args.daemon.metrics;
        let tls = args
            .tls_listen
            .map(|listen| postern_model::protocol::RelayTls {
                port: listen.port(),
                name: args.tls_name.clone(),
            });
        return portal_mode(portal, trust, &token, config, &args.public_ip, tls, metrics);
    }
    let signals = daemon::block_stop_signals().context("cannot block signals")?;
    let stop = Arc::new(AtomicBool::new(false));
    let relay = Relay::start(&config, Arc::clone(&stop))?;
    if let Some(addr) = args.daemon.metrics {
        serve_metrics(addr, Arc::clone(&relay.metrics))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    tracing::info!(
        listen = %config.listen,
        tls_listen = ?args.tls_listen,
        public_ip = ?args.public_ip,
        ports = ?config.ports,
        workers,
        allow_peer = ?config.allow_peers,
        metrics = ?args.daemon.metrics,
        "relay ready"
    );
    let signal = daemon::wait_for_stop(&signals).context("waiting for a signal")?;
    tracing::info!(?signal, "stopping");
    stop.store(true, Ordering::Relaxed);
    relay.join();
    Ok(ExitCode::SUCCESS)
}

/// Registers with the portal, takes the TURN secret it answers with, and
/// serves; re-registers after every reconnect so the portal lists it again.
fn portal_mode(
    portal: &str,
    trust: postern_sys::trust::PortalTrust,
    token: &str,
    mut config: RelayConfig,
    public_ip: &[IpAddr],
    tls: Option<postern_model::protocol::RelayTls>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    use postern_model::protocol::{PortalToRelay, RelayToPortal};
    use postern_sys::channel::{self, ChannelConfig, Incoming, Party};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let mut channel = channel::open(ChannelConfig {
            portal: portal.to_string(),
            party: Party::Relay,
            token: token.to_string(),
            // The portal refuses versions outside its window (HTTP 426).
            query: vec![("version".into(), env!("CARGO_PKG_VERSION").into())],
            trust,
        })?;
        let register = serde_json::to_string(&RelayToPortal::Register {
            public_addresses: public_ip.to_vec(),
            port: config.listen.port(),
            tls,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut running: Option<(Relay, String)> = None;
        let signal = daemon::stop_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                incoming = channel.incoming.recv() => match incoming {
                    None => bail!("the portal channel stopped"),
                    Some(Incoming::Unauthorized) => bail!(
                        "the portal refused the relay token (401): make a new one with `postern portal relay-token`"
                    ),
                    Some(Incoming::VersionRefused(reason)) => {
                        bail!("the portal refused this version (426): {reason}")
                    }
                    Some(Incoming::Connected) => {
                        tracing::info!("connected to the portal; registering");
                        let _ = channel.outgoing.send(register.clone()).await;
                    }
                    Some(Incoming::Lost { error, retry_in }) => tracing::warn!(
                        %error, retry_in_ms = retry_in.as_millis() as u64,
                        "portal connection lost; relaying goes on"
                    ),
                    Some(Incoming::Text(text)) => match serde_json::from_str::<PortalToRelay>(&text) {
                        Ok(PortalToRelay::Registered { relay_id, auth_secret }) => match &running {
                            None => {
                                config.auth_secret = auth_secret.clone().into_bytes();
                                let relay = Relay::start(&config, Arc::clone(&stop))?;
                                if let Some(addr) = metrics {
                                    serve_metrics(addr, Arc::clone(&relay.metrics))
                                        .with_context(|| format!("cannot serve metrics on {addr}"))?;
                                }
                                tracing::info!(%relay_id, listen = %config.listen, public_ip = ?public_ip, "relay registered and ready");
                                running = Some((relay, auth_secret));
                            }
                            Some((_, secret)) if *secret != auth_secret => tracing::warn!(
                                "the portal's TURN secret changed; restart the relay to use it"
                            ),
                            Some(_) => tracing::info!(%relay_id, "registered again"),
                        },
                        Ok(PortalToRelay::RevokeCredentials { ids, not_after }) => {
                            if let Some((relay, _)) = &running {
                                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                                let not_after = u64::try_from(not_after.as_second()).unwrap_or(0);
                                tracing::info!(devices = ids.len(), not_after, "credentials revoked");
                                relay.revoke(&ids, not_after);
                            }
                        }
                        Ok(PortalToRelay::Disconnect { reason }) => {
                            tracing::warn!(?reason, "the portal disconnected this relay")
                        }
                        Ok(PortalToRelay::Error { message, .. }) => {
                            tracing::warn!(%message, "the portal reported an error")
                        }
                        Ok(PortalToRelay::Init {}) | Err(_) => {}
                    },
                },
            }
        }
        tracing::info!("stopping");
        stop.store(true, Ordering::Relaxed);
        if let Some((relay, _)) = running {
            relay.join();
        }
        Ok(ExitCode::SUCCESS)
    })
}

//! `postern gateway`, `postern client up` and `postern client status`: flag
//! handling around the device loop of `postern-device`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use postern_device::DeviceConfig;
use postern_sys::metrics::DeviceMetrics;

use crate::args::{
    ClientUpArgs, DaemonOptions, DeviceOptions, GatewayArgs, PortalTrustArgs, TokenSource,
};
use crate::daemon;

/// The token from `--token` or `--token-file`.
pub fn read_token(source: &TokenSource) -> anyhow::Result<String> {
    let token = match (&source.token, &source.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        (None, None) => bail!("give --token or --token-file"),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "postern-device".into())
}

fn need_root(command: &str) -> anyhow::Result<()> {
    if !postern_sys::is_root() {
        bail!("{command} needs root (it creates a TUN interface and routes)");
    }
    Ok(())
}

/// Serves `/metrics` on `--metrics ADDR` for a device daemon.
fn device_metrics(
    daemon: &DaemonOptions,
    role: &'static str,
) -> anyhow::Result<Option<Arc<DeviceMetrics>>> {
    let Some(address) = daemon.metrics else {
        return Ok(None);
    };
    let metrics = DeviceMetrics::new(role);
    let published = Arc::clone(&metrics);
    postern_sys::metrics::serve(address, move || published.render())
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    Ok(Some(metrics))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// The checks and set-up both device daemons share: the portal URL, root,
/// the token, logging and metrics.
/// Where the portal is, how it is trusted, and the token for it.
struct PortalFlags<'a> {
    url: String,
    trust: &'a PortalTrustArgs,
    token: &'a TokenSource,
    /// The daemon changes the system (a TUN, routes): it needs root.
    root: bool,
}

fn device_config(
    role: &'static str,
    portal: PortalFlags<'_>,
    name: Option<String>,
    port: u16,
    device: DeviceOptions,
    daemon: &DaemonOptions,
) -> anyhow::Result<DeviceConfig> {
    let trust = portal.trust.trust_for(&portal.url)?;
    if portal.root {
        need_root(if role == "gateway" {
            "postern gateway"
        } else {
            "postern client up"
        })?;
    }
    let token = read_token(portal.token)?;
    daemon::init_logging(daemon.log_format);
    let metrics = device_metrics(daemon, role)?;
    Ok(DeviceConfig {
        portal: portal.url,
        trust,
        token,
        name: name.unwrap_or_else(host_name),
        port,
        state_dir: device.state.dir,
        interface: device.interface,
        metrics,
        firewall_changes: true,
    })
}

/// `postern gateway check`: the host firewall's verdict on forwarding.
pub fn gateway_check(interface: &str) -> anyhow::Result<ExitCode> {
    let blocking = postern_sys::host_firewall::diagnose(interface);
    if blocking.is_empty() {
        println!(
            "forwarding: not blocked by iptables (nf_tables or legacy), ufw, nftables or firewalld; the gateway changes nothing here"
        );
    }
    for blocked in &blocking {
        println!(
            "forwarding: blocked by {} ({}); the gateway adds, unless --no-firewall-changes:",
            blocked.firewall, blocked.reason
        );
        for command in blocked.commands(interface) {
            println!("  {command}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let Some(portal) = args.portal.clone() else {
        bail!("give the portal's URL with --portal (or POSTERN_PORTAL)");
    };
    let config = device_config(
        "gateway",
        PortalFlags {
            url: portal,
            trust: &args.trust,
            token: &args.token,
            root: true,
        },
        args.name,
        args.port,
        args.device,
        &args.daemon,
    )?;
    let config = DeviceConfig {
        firewall_changes: !args.no_firewall_changes,
        ..config
    };
    runtime()?.block_on(postern_device::run_gateway(config, daemon::stop_signal()))?;
    Ok(ExitCode::SUCCESS)
}

pub fn client_up(mut args: ClientUpArgs) -> anyhow::Result<ExitCode> {
    // Without a token or portal, use what `postern client sign-in` stored.
    let signed_in = crate::sign_in::read_record(&args.device.state.dir);
    if args.token.token.is_none() && args.token.token_file.is_none() {
        let stored = args.device.state.dir.join(crate::sign_in::TOKEN_FILE);
        if !stored.exists() {
            bail!(
                "give --token or --token-file, or sign in first with `postern client sign-in` \
                 (no token in {})",
                stored.display()
            );
        }
        args.token.token_file = Some(stored);
    }
    let portal = match (args.portal.take(), signed_in) {
        (Some(portal), _) => portal,
        (None, Some(record)) => record.portal,
        (None, None) => bail!("give --portal (or sign in first with `postern client sign-in`)"),
    };
    let device = device_config(
        "client",
        PortalFlags {
            url: portal,
            trust: &args.trust,
            token: &args.token,
            root: !args.userspace,
        },
        args.name,
        args.port,
        args.device,
        &args.daemon,
    )?;
    let options = postern_device::ClientOptions {
        status_socket: args.status_socket,
        local_networks_win: args.local_networks_win,
        socks5: args.userspace.then_some(args.socks5),
        dns: postern_device::DnsSettings {
            upstreams: args.dns_upstream,
            system: match (args.no_system_dns, args.resolv_conf) {
                (true, _) => postern_device::SystemDnsMode::Off,
                (false, Some(path)) => postern_device::SystemDnsMode::File(path),
                (false, None) => postern_device::SystemDnsMode::Auto,
            },
        },
    };
    if args.userspace {
        if !args.socks5.ip().is_loopback() {
            tracing::warn!(listen = %args.socks5, "the SOCKS5 proxy asks for no password: anyone who can reach {} uses this client's access", args.socks5);
        }
    } else {
        report_incoming(&device.interface);
    }
    runtime()?.block_on(postern_device::run_client(
        device,
        options,
        daemon::stop_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The client changes nothing in the host's input filtering (a firewall
/// that refuses new connections is the admin's choice); it says when that
/// filtering would drop the replies the tunnel depends on.
fn report_incoming(tunnel: &str) {
    for incoming in postern_sys::host_firewall::diagnose_input(tunnel) {
        if incoming.replies_pass {
            tracing::info!(
                "{} refuses new incoming connections ({}); replies pass, so the tunnel carries every connection this device opens",
                incoming.firewall,
                incoming.reason
            );
        } else {
            tracing::warn!(
                "{} drops incoming packets ({}) and accepts no replies before that: the gateway's and the relay's UDP answers are dropped, so no direct path works and the tunnel can only run relayed over TCP or TLS; add: {}",
                incoming.firewall,
                incoming.reason,
                incoming.fix
            );
        }
    }
}

/// `postern client internet on|off`: remembered in the state directory,
/// and told to a running daemon, which applies it at once.
pub fn client_internet(on: bool, state_dir: &Path, socket: &Path) -> anyhow::Result<ExitCode> {
    let word = if on { "on" } else { "off" };
    postern_device::internet::save(state_dir, on).with_context(|| {
        format!(
            "cannot remember the choice in {} (run as root?)",
            state_dir.display()
        )
    })?;
    let command = postern_device::status::Command::Internet(on);
    match runtime()?.block_on(postern_device::status::ask(socket, command)) {
        Ok(status) => match status.status.internet {
            Some(now) => println!("internet resource: {now}"),
            None => println!(
                "internet resource: {word} (remembered; no internet resource is granted to this client now)"
            ),
        },
        Err(postern_device::status::QueryError::Connect { .. }) => {
            println!(
                "internet resource: {word} (remembered; applies when `postern client up` starts)"
            )
        }
        Err(error) => return Err(error.into()),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn client_status(json: bool, socket: &Path) -> anyhow::Result<ExitCode> {
    let status = runtime()?.block_on(postern_device::status::query(socket))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", postern_device::status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

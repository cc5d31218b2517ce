//! The command line of SPEC.md section 3. Every daemon flag can also come from
//! a `POSTERN_*` environment variable (`--portal` = `POSTERN_PORTAL`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::values::{PortRange, parse_network, parse_port_range, parse_portal_url, parse_upstream};

/// Postern: zero-trust access to private resources over WireGuard.
///
/// One binary runs every part: the portal (control plane), gateways next to
/// resources, relays for peers that cannot reach each other, and the client.
#[derive(Debug, Parser)]
#[command(name = "postern", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the portal (control plane), or set up its database
    Portal(Box<PortalArgs>),
    /// Run a gateway: connects out to the portal and forwards authorized traffic
    Gateway(GatewayArgs),
    /// Run a STUN/TURN relay, registered with a portal or standalone
    Relay(RelayArgs),
    /// Run and control the client on this machine
    Client(ClientArgs),
    /// Show the whole system in network namespaces on this machine (root)
    Demo(DemoArgs),
    /// Administer an account from files
    Admin(AdminArgs),
}

/// How daemons write their logs to stderr.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// Flags every daemon has.
#[derive(Debug, Args)]
pub struct DaemonOptions {
    /// Log format on stderr
    #[arg(long, env = "POSTERN_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, env = "POSTERN_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PortalArgs {
    #[command(subcommand)]
    pub command: Option<PortalCommand>,
    /// Database URL: sqlite://PATH (created if missing) or postgres://...
    #[arg(
        long,
        env = "POSTERN_DATABASE",
        value_name = "URL",
        default_value = "sqlite://./postern-data/postern.db"
    )]
    pub database: String,
    /// Address to serve the UI, REST API, SCIM and the channels on
    #[arg(
        long,
        env = "POSTERN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) for serving HTTPS and WSS on
    /// --listen itself, instead of plain HTTP; needs --tls-key. Both files
    /// are read again on SIGHUP (a bad file keeps the old certificate)
    #[arg(
        long,
        env = "POSTERN_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1); needs
    /// --tls-cert
    #[arg(
        long,
        env = "POSTERN_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Get the certificate for HTTPS and WSS from an ACME CA (Let's Encrypt
    /// unless --acme-directory) for this DNS name; repeat or separate with
    /// commas for more names. The CA checks each name with tls-alpn-01 on
    /// its port 443, which must reach --listen. Using it accepts the CA's
    /// terms of service. Renewed with a third of the certificate's life left
    #[arg(
        long,
        env = "POSTERN_ACME_DOMAIN",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = crate::values::parse_acme_domain,
        conflicts_with = "tls_cert"
    )]
    pub acme_domain: Vec<String>,
    /// The ACME CA's directory URL (for example Let's Encrypt's staging
    /// https://acme-staging-v02.api.letsencrypt.org/directory)
    #[arg(
        long,
        env = "POSTERN_ACME_DIRECTORY",
        value_name = "URL",
        default_value = postern_portal::serve::acme::LETS_ENCRYPT,
        value_parser = crate::values::parse_acme_directory
    )]
    pub acme_directory: String,
    /// Contact address for the ACME account (optional)
    #[arg(long, env = "POSTERN_ACME_EMAIL", value_name = "ADDRESS")]
    pub acme_email: Option<String>,
    /// Trust only this PEM CA certificate for the ACME server's own HTTPS
    /// (a private ACME CA such as step-ca); default: the system's roots
    #[arg(long, env = "POSTERN_ACME_CA_FILE", value_name = "PATH")]
    pub acme_ca_file: Option<PathBuf>,
    /// Where the ACME account key and the certificate are kept across
    /// restarts (keys mode 0600). Default: acme/ beside the SQLite
    /// database, or ./postern-data/acme
    #[arg(long, env = "POSTERN_ACME_CACHE", value_name = "DIR")]
    pub acme_cache: Option<PathBuf>,
    /// The URL users and daemons reach the portal at (links, OIDC redirects)
    #[arg(long, env = "POSTERN_EXTERNAL_URL", value_parser = parse_portal_url, value_name = "URL")]
    pub external_url: Option<String>,
    /// MaxMind-format GeoIP database for country conditions
    #[arg(long, env = "POSTERN_GEOIP_DB", value_name = "PATH")]
    pub geoip_db: Option<PathBuf>,
    /// Reverse proxies in front of the portal (addresses or CIDRs; repeat
    /// or separate with commas). Only a request whose TCP peer is in one of
    /// them has its client address taken from --proxy-header, walked from
    /// the right past trusted proxies. Default: none, the headers are
    /// ignored and the client is the TCP peer
    #[arg(
        long,
        env = "POSTERN_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies append the client address to:
    /// x-forwarded-for or forwarded (RFC 7239 for=). Only this one is read:
    /// a proxy passes the other through as the client wrote it
    #[arg(
        long,
        env = "POSTERN_PROXY_HEADER",
        value_name = "HEADER",
        default_value = "x-forwarded-for",
        requires = "trusted_proxies"
    )]
    pub proxy_header: postern_portal::client_ip::ForwardedHeader,
    /// File with the key that seals identity-provider secrets (base64 of 32
    /// bytes); created (mode 0600) if missing. Default: secret.key beside the
    /// SQLite database, or ./postern-data/secret.key
    #[arg(
        long,
        env = "POSTERN_SECRET_KEY_FILE",
        value_name = "PATH",
        conflicts_with = "secret_key"
    )]
    pub secret_key_file: Option<PathBuf>,
    /// The secret key itself (base64 of 32 bytes), for several portal nodes
    /// that must share it; only from the environment
    #[arg(long, env = "POSTERN_SECRET_KEY", hide = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// SMTP server for sign-in codes: smtp://HOST:PORT,
    /// smtp://USER:PASS@HOST:587?tls=required or smtps://HOST:465; without
    /// it codes are logged (development mail mode)
    #[arg(
        long,
        env = "POSTERN_SMTP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,
    /// File holding the SMTP password, for an --smtp-url with a user and no
    /// password (a password in --smtp-url shows in ps)
    #[arg(
        long,
        env = "POSTERN_SMTP_PASSWORD_FILE",
        value_name = "PATH",
        requires = "smtp_url",
        conflicts_with = "smtp_password"
    )]
    pub smtp_password_file: Option<PathBuf>,
    /// The SMTP password itself, for an --smtp-url with a user and no
    /// password; only from the environment
    #[arg(
        long,
        env = "POSTERN_SMTP_PASSWORD",
        hide = true,
        hide_env_values = true,
        requires = "smtp_url"
    )]
    pub smtp_password: Option<String>,
    /// Sender of sign-in codes
    #[arg(
        long,
        env = "POSTERN_SMTP_FROM",
        value_name = "ADDRESS",
        default_value = "Postern <postern@localhost>"
    )]
    pub smtp_from: String,
    /// Client devices one user or service account may register; past it a
    /// new device is refused (HTTP 403 saying so) until an admin deletes
    /// unused ones
    #[arg(
        long,
        env = "POSTERN_MAX_DEVICES_PER_ACTOR",
        value_name = "N",
        default_value_t = postern_portal::state::Limits::default().devices_per_actor,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_devices_per_actor: u32,
    /// Days the audit, session and flow logs are kept; older entries are
    /// deleted in the background, hourly
    #[arg(
        long,
        env = "POSTERN_LOG_RETENTION_DAYS",
        value_name = "DAYS",
        default_value_t = postern_portal::retention::DEFAULT_DAYS,
        value_parser = clap::value_parser!(u32).range(1..=36_500)
    )]
    pub log_retention_days: u32,
    /// Devices one token may register (the clients of a service account's
    /// token, the gateways of a site's token)
    #[arg(
        long,
        env = "POSTERN_MAX_DEVICES_PER_TOKEN",
        value_name = "N",
        default_value_t = postern_portal::state::Limits::default().devices_per_token,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_devices_per_token: u32,
    /// Messages a client or relay channel may send per second, with bursts
    /// of ten times that (gateways may send ten times more); a channel over
    /// it is slowed down, and one that keeps flooding for 10 s is
    /// disconnected
    #[arg(
        long,
        env = "POSTERN_CHANNEL_MESSAGE_RATE",
        value_name = "N",
        default_value_t = postern_portal::state::Limits::default().channel_rate.messages_per_second,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub channel_message_rate: u32,
    #[command(flatten)]
    pub daemon: DaemonOptions,
}

#[derive(Debug, Subcommand)]
pub enum PortalCommand {
    /// Create an account and its first admin; prints an admin API token
    Init {
        #[arg(
            long,
            env = "POSTERN_DATABASE",
            value_name = "URL",
            default_value = "sqlite://./postern-data/postern.db"
        )]
        database: String,
        /// Short name of the account, used in URLs
        #[arg(long, value_name = "SLUG")]
        account: String,
        /// Email address of the first admin
        #[arg(long, value_name = "EMAIL")]
        admin_email: String,
    },
    /// Write a consistent copy of an SQLite database while the portal runs
    /// (PostgreSQL: use pg_dump); keep it with the secret key
    Backup {
        #[arg(
            long,
            env = "POSTERN_DATABASE",
            value_name = "URL",
            default_value = "sqlite://./postern-data/postern.db"
        )]
        database: String,
        /// The backup file to create (it must not exist)
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Copy a backup into a new, empty database (SQLite or PostgreSQL);
    /// an older backup is migrated forward on the way
    Restore {
        /// The database to restore into (created if missing; must be empty)
        #[arg(long, env = "POSTERN_DATABASE", value_name = "URL")]
        database: String,
        /// A file written by `postern portal backup`
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
    },
    /// Print a token that a relay uses to register with this portal
    RelayToken {
        #[arg(
            long,
            env = "POSTERN_DATABASE",
            value_name = "URL",
            default_value = "sqlite://./postern-data/postern.db"
        )]
        database: String,
    },
}

/// A bearer token given inline or in a file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TokenSource {
    /// Token to authenticate with (prefer --token-file: arguments are visible in ps)
    #[arg(
        long,
        env = "POSTERN_TOKEN",
        // Tokens are base64url: they may start with "-".
        allow_hyphen_values = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the token
    #[arg(long, env = "POSTERN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// How a daemon trusts the portal it connects to.
#[derive(Debug, Args)]
pub struct PortalTrustArgs {
    /// PEM file of CA certificates to trust for an https:// portal, besides
    /// the system's (for a portal with a certificate from a private CA)
    #[arg(long, env = "POSTERN_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Accept a plain http:// portal that is not on loopback; tokens, the
    /// TURN secret and preshared keys then cross the network in clear text
    /// (for labs and tests only)
    #[arg(long, env = "POSTERN_INSECURE_HTTP")]
    pub insecure_http: bool,
}

impl PortalTrustArgs {
    /// The trust the flags describe, with the portal URL checked against it.
    pub fn trust_for(&self, portal: &str) -> anyhow::Result<postern_sys::trust::PortalTrust> {
        let trust =
            postern_sys::trust::PortalTrust::new(self.ca_file.as_deref(), self.insecure_http)?;
        trust.check(portal)?;
        Ok(trust)
    }
}

#[derive(Debug, Args)]
// `postern gateway check` needs neither the portal nor a token: both are
// checked when the gateway runs.
#[command(
    args_conflicts_with_subcommands = true,
    mut_group("TokenSource", |group| group.required(false))
)]
pub struct GatewayArgs {
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
    /// Portal URL (https://; http:// only on loopback or with --insecure-http)
    #[arg(long, env = "POSTERN_PORTAL", value_parser = parse_portal_url, value_name = "URL")]
    pub portal: Option<String>,
    #[command(flatten)]
    pub trust: PortalTrustArgs,
    #[command(flatten)]
    pub token: TokenSource,
    /// Name shown in the portal (default: the host name)
    #[arg(long, env = "POSTERN_NAME")]
    pub name: Option<String>,
    /// UDP port for WireGuard and ICE (0 = any)
    #[arg(
        long,
        env = "POSTERN_PORT",
        value_name = "PORT",
        default_value_t = 51820
    )]
    pub port: u16,
    /// Never change the host's firewall. By default, where iptables (ufw's
    /// and Docker's included), an nftables table of the admin's or
    /// firewalld would drop what the gateway forwards, the gateway lets its
    /// tunnel through (two narrow rules, or the tunnel in firewalld's
    /// trusted zone at runtime) and undoes it at exit; with this it only
    /// says, at start, what blocks forwarding and what to add
    #[arg(long, env = "POSTERN_NO_FIREWALL_CHANGES")]
    pub no_firewall_changes: bool,
    #[command(flatten)]
    pub device: DeviceOptions,
    #[command(flatten)]
    pub daemon: DaemonOptions,
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Say whether this host's firewall would drop what a gateway forwards,
    /// and the rules that let its tunnel through (what the gateway adds
    /// unless --no-firewall-changes); changes nothing
    Check {
        /// The tunnel interface the rules would name
        #[arg(long, env = "POSTERN_INTERFACE", default_value = "postern0")]
        interface: String,
    },
}

/// Where the device id and the sign-in token live (root only).
#[derive(Debug, Args)]
pub struct StateDir {
    /// Directory for the device id and the token of `client sign-in`
    /// (client-token, mode 0600); /var/lib/postern for root, else
    /// $XDG_STATE_HOME/postern (~/.local/state/postern)
    #[arg(
        long = "state-dir",
        env = "POSTERN_STATE_DIR",
        value_name = "DIR",
        default_value_os_t = crate::paths::state_dir()
    )]
    pub dir: PathBuf,
}

/// Where a device daemon keeps its state and names its interface.
#[derive(Debug, Args)]
pub struct DeviceOptions {
    #[command(flatten)]
    pub state: StateDir,
    /// Name of the tunnel interface
    #[arg(
        long,
        env = "POSTERN_INTERFACE",
        value_name = "NAME",
        default_value = "postern0"
    )]
    pub interface: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["portal", "auth_secret"])))]
// The relay token (from `postern portal relay-token`) only in portal mode.
#[command(
    mut_group("TokenSource", |group| group.required(false)),
    mut_arg("token", |arg| arg.conflicts_with("auth_secret")),
    mut_arg("token_file", |arg| arg.conflicts_with("auth_secret"))
)]
pub struct RelayArgs {
    /// Portal to register with (portal mode; needs --token-file or --token)
    #[arg(long, env = "POSTERN_PORTAL", value_parser = parse_portal_url, value_name = "URL", requires = "TokenSource")]
    pub portal: Option<String>,
    #[command(flatten)]
    pub trust: PortalTrustArgs,
    #[command(flatten)]
    pub token: TokenSource,
    /// Shared secret for TURN REST credentials (standalone mode)
    #[arg(
        long,
        env = "POSTERN_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "portal"
    )]
    pub auth_secret: Option<String>,
    /// Address for STUN/TURN, over UDP and over TCP on the same port (TURN
    /// over TCP, for clients on networks that drop UDP)
    #[arg(
        long,
        env = "POSTERN_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:3478"
    )]
    pub listen: SocketAddr,
    /// Public address that relayed candidates advertise; give it twice (an
    /// IPv4 and an IPv6 address) to relay both families
    #[arg(
        long,
        env = "POSTERN_PUBLIC_IP",
        value_name = "IP",
        required = true,
        value_delimiter = ','
    )]
    pub public_ip: Vec<IpAddr>,
    /// UDP port range for allocations, LO-HI
    #[arg(long, env = "POSTERN_PORTS", value_parser = parse_port_range, value_name = "LO-HI", default_value = "49152-65535")]
    pub ports: PortRange,
    /// Realm of the long-term credentials
    #[arg(long, env = "POSTERN_REALM", default_value = "postern")]
    pub realm: String,
    /// Worker threads (default: one per CPU)
    #[arg(long, env = "POSTERN_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Allocations one username may hold at once
    #[arg(
        long,
        env = "POSTERN_MAX_ALLOCATIONS_PER_USER",
        value_name = "N",
        default_value_t = 10
    )]
    pub max_allocations_per_user: usize,
    /// Bits per second one allocation may relay each way (0: no limit)
    #[arg(long, env = "POSTERN_MAX_BPS", value_name = "BPS", default_value_t = 0)]
    pub max_bps: u64,
    /// Allow relaying to 127.0.0.0/8 and ::1 (test setups only)
    #[arg(long, env = "POSTERN_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,
    /// Let peers in this private network (RFC 1918, 100.64.0.0/10,
    /// fc00::/7) be relayed to; repeat or separate with commas. Peers on
    /// the relay's own addresses need the exact address (a /32 or /128);
    /// loopback, link-local (169.254.0.0/16, fe80::/10), multicast and
    /// unspecified peers are always refused
    #[arg(
        long,
        env = "POSTERN_ALLOW_PEER",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub allow_peer: Vec<ipnet::IpNet>,
    /// Also accept TURN over TLS here (RFC 8656 section 3.1), for clients
    /// on networks that let only HTTPS out: 0.0.0.0:443 is the usual
    /// choice. Needs --tls-cert and --tls-key
    #[arg(
        long,
        env = "POSTERN_TLS_LISTEN",
        value_name = "ADDR",
        requires_all = ["tls_cert", "tls_key"]
    )]
    pub tls_listen: Option<std::net::SocketAddr>,
    /// The relay's certificate chain (PEM) for --tls-listen
    #[arg(
        long,
        env = "POSTERN_TLS_CERT",
        value_name = "PATH",
        requires = "tls_listen"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM)
    #[arg(
        long,
        env = "POSTERN_TLS_KEY",
        value_name = "PATH",
        requires = "tls_listen"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name devices check in the relay's certificate (portal mode);
    /// without it they check its public address
    #[arg(
        long,
        env = "POSTERN_TLS_NAME",
        value_name = "NAME",
        requires = "tls_listen"
    )]
    pub tls_name: Option<String>,
    #[command(flatten)]
    pub daemon: DaemonOptions,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Connect: bring up the tunnel interface and the DNS resolver (root;
    /// with --userspace no root: a SOCKS5 proxy instead)
    Up(Box<ClientUpArgs>),
    /// Sign in through the browser and store the token for `client up`
    SignIn {
        /// Portal URL (https://; http:// only on loopback or with --insecure-http)
        #[arg(long, env = "POSTERN_PORTAL", value_parser = parse_portal_url, value_name = "URL")]
        portal: String,
        #[command(flatten)]
        trust: PortalTrustArgs,
        /// Account slug
        #[arg(long, env = "POSTERN_ACCOUNT", value_name = "SLUG")]
        account: String,
        /// Print the sign-in URL instead of opening a browser
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        state: StateDir,
        /// Seconds to wait for the browser
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
    },
    /// Revoke the stored token at the portal and delete it
    SignOut {
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        trust: PortalTrustArgs,
    },
    /// Turn the internet resource (full tunnel) on or off; remembered
    /// across restarts, applied at once to a running daemon
    Internet {
        /// on: all traffic but the local networks and the exclusions goes
        /// through the tunnel (when an admin granted the internet
        /// resource); off: only the other resources do
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        dir: StateDir,
        #[command(flatten)]
        socket: StatusSocket,
    },
    /// Show resources, connections and paths (direct or relayed)
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: StatusSocket,
    },
}

/// Where a running client daemon answers (`client status`, `client
/// internet`).
#[derive(Debug, Args)]
pub struct StatusSocket {
    /// Unix socket of the running daemon [default: /run/postern/client.sock
    /// for root; for a user $XDG_RUNTIME_DIR/postern/client.sock, or
    /// root's when the user runs no client]
    #[arg(
        long = "status-socket",
        env = "POSTERN_STATUS_SOCKET",
        value_name = "PATH"
    )]
    pub path: Option<PathBuf>,
}

/// `postern client up`.
#[derive(Debug, Args)]
// Without --token or --token-file, the token of `postern client sign-in`.
#[command(mut_group("TokenSource", |group| group.required(false)))]
pub struct ClientUpArgs {
    /// Portal URL (default: the one of `postern client sign-in`)
    #[arg(long, env = "POSTERN_PORTAL", value_parser = parse_portal_url, value_name = "URL")]
    pub portal: Option<String>,
    #[command(flatten)]
    pub trust: PortalTrustArgs,
    #[command(flatten)]
    pub token: TokenSource,
    /// UDP port for WireGuard and ICE (0 = any)
    #[arg(
        long,
        env = "POSTERN_PORT",
        value_name = "PORT",
        default_value_t = 51820
    )]
    pub port: u16,
    /// Name shown in the portal (default: the host name)
    #[arg(long, env = "POSTERN_NAME")]
    pub name: Option<String>,
    /// Unix socket that `postern client status` asks
    /// (/run/postern/client.sock for root, else
    /// $XDG_RUNTIME_DIR/postern/client.sock)
    #[arg(
        long,
        env = "POSTERN_STATUS_SOCKET",
        value_name = "PATH",
        default_value_os_t = crate::paths::status_socket()
    )]
    pub status_socket: PathBuf,
    /// Run without root: no TUN interface, no routes, no DNS changes.
    /// Apps reach resources through a SOCKS5 proxy (--socks5) that carries
    /// their connections with a TCP/IP stack inside the client; names
    /// given to the proxy (curl --socks5-hostname, socks5h://) resolve
    /// through the client, so DNS resources work by name. Destinations
    /// that are no resource are refused ("not allowed")
    #[arg(long, env = "POSTERN_USERSPACE")]
    pub userspace: bool,
    /// Where the userspace client's SOCKS5 proxy listens. It asks for no
    /// password: on loopback it serves only this user's processes (and
    /// root's); on any other address, whoever reaches it
    #[arg(
        long,
        env = "POSTERN_SOCKS5",
        value_name = "ADDR",
        default_value = "127.0.0.1:1080",
        requires = "userspace"
    )]
    pub socks5: SocketAddr,
    /// Resolver for names that are not resources (repeat for more;
    /// default: the nameservers resolv.conf had before)
    #[arg(long, env = "POSTERN_DNS_UPSTREAM", value_name = "IP[:PORT]", value_delimiter = ',', value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Take this resolv.conf over while the client runs (written back byte
    /// for byte when it stops); default: systemd-resolved if it manages DNS,
    /// else /etc/resolv.conf
    #[arg(
        long,
        env = "POSTERN_RESOLV_CONF",
        value_name = "PATH",
        conflicts_with_all = ["no_system_dns", "userspace"]
    )]
    pub resolv_conf: Option<PathBuf>,
    /// Leave the system's DNS settings alone (the stub still answers on
    /// 100.100.111.1)
    #[arg(long, env = "POSTERN_NO_SYSTEM_DNS")]
    pub no_system_dns: bool,
    /// Where a resource overlaps a network this host is on (home and office
    /// both on 192.168.1.0/24), let the local network win; by default the
    /// tunnel does (the admin configured the resource). Either way the
    /// host's default gateway, its DNS servers and the portal stay local;
    /// `postern client status` lists each overlap
    #[arg(long, env = "POSTERN_LOCAL_NETWORKS_WIN", conflicts_with = "userspace")]
    pub local_networks_win: bool,
    #[command(flatten)]
    pub device: DeviceOptions,
    #[command(flatten)]
    pub daemon: DaemonOptions,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the scenario once, print what was verified, exit 0 or 1
    #[arg(long)]
    pub check: bool,
    /// Symmetric NATs on both sides: hole punching fails, the relay carries the traffic
    #[arg(long)]
    pub symmetric: bool,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make the account's sites, resources, groups and policies match a YAML
    /// file: the changes are printed, then made in one transaction (an error
    /// changes nothing and names the file's line)
    Apply {
        /// The declaration (YAML: sites, resources, groups, policies; see
        /// `postern admin export` for the shape)
        file: PathBuf,
        /// Also delete the sites, resources, static groups and policies the
        /// file does not name
        #[arg(long)]
        prune: bool,
        /// Print the changes without making them
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Print the account's sites, resources, groups and policies as a YAML
    /// file that `apply` maps to no change
    Export {
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// The portal and the admin API token the admin commands use.
#[derive(Debug, Args)]
pub struct AdminConnection {
    /// Portal URL (http:// or https://)
    #[arg(long, env = "POSTERN_PORTAL", value_parser = parse_portal_url, value_name = "URL")]
    pub portal: String,
    /// Admin API token (a read-scoped one suffices for export)
    #[arg(
        long,
        env = "POSTERN_TOKEN",
        allow_hyphen_values = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    #[command(flatten)]
    pub trust: PortalTrustArgs,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("postern").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Review L6: the relay's token can come from a file, as the devices'
    /// does, so that it is not in ps.
    #[test]
    fn the_relay_token_comes_inline_or_from_a_file_in_portal_mode_only() {
        let relay = |extra: &[&str]| {
            let mut args = vec!["relay", "--public-ip", "198.18.0.3"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Relay(relay) => relay,
                other => panic!("{other:?}"),
            })
        };
        let from_file = relay(&["--portal", "http://p.test", "--token-file", "/r.token"]).unwrap();
        assert_eq!(from_file.portal.as_deref(), Some("http://p.test"));
        assert_eq!(
            from_file.token.token_file.as_deref(),
            Some(Path::new("/r.token"))
        );
        assert_eq!(from_file.token.token, None);
        let inline = relay(&["--portal", "http://p.test", "--token", "-t"]).unwrap();
        assert_eq!(inline.token.token.as_deref(), Some("-t"));
        // Portal mode needs a token; not two; and standalone mode none.
        assert!(relay(&["--portal", "http://p.test"]).is_err());
        assert!(
            relay(&[
                "--portal",
                "http://p.test",
                "--token",
                "t",
                "--token-file",
                "/r.token"
            ])
            .is_err()
        );
        assert!(relay(&["--auth-secret", "s", "--token-file", "/r.token"]).is_err());
        let standalone = relay(&["--auth-secret", "s"]).unwrap();
        assert!(standalone.token.token.is_none() && standalone.token.token_file.is_none());
    }

    #[test]
    fn gateways_need_a_token_and_client_up_may_use_the_stored_one() {
        // A gateway's portal and token are checked when it runs (the
        // integration test `cli.rs` sees the one-line error), so that
        // `gateway check` needs neither.
        let gateway = |args: &[&str]| match parse(args).unwrap().command {
            Command::Gateway(gateway) => gateway,
            other => panic!("{other:?}"),
        };
        let missing = gateway(&["gateway", "--portal", "http://p.test"]);
        assert!(missing.token.token.is_none() && missing.token.token_file.is_none());
        assert!(matches!(
            gateway(&["gateway", "check"]).command,
            Some(GatewayCommand::Check { .. })
        ));
        assert!(parse(&["gateway", "check", "--portal", "http://p.test"]).is_err());
        assert!(parse(&["gateway", "--portal", "http://p.test", "--token-file", "/t"]).is_ok());
        assert!(
            parse(&[
                "gateway",
                "--portal",
                "http://p.test",
                "--token",
                "t",
                "--token-file",
                "/t"
            ])
            .is_err()
        );
        assert!(parse(&["client", "up"]).is_ok());
        assert!(parse(&["client", "up", "--token", "t", "--token-file", "/t"]).is_err());
    }

    /// Review L6: the SMTP password from a file (or the environment), not
    /// from argv.
    #[test]
    fn the_smtp_password_comes_from_a_file() {
        let portal = |extra: &[&str]| {
            let mut args = vec!["portal"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Portal(portal) => *portal,
                other => panic!("{other:?}"),
            })
        };
        let args = portal(&[
            "--smtp-url",
            "smtp://mailer@mail.test:587?tls=required",
            "--smtp-password-file",
            "/etc/postern/smtp-password",
        ])
        .unwrap();
        assert_eq!(
            args.smtp_password_file.as_deref(),
            Some(Path::new("/etc/postern/smtp-password"))
        );
        // Useless without a server.
        assert!(portal(&["--smtp-password-file", "/p"]).is_err());
    }
}

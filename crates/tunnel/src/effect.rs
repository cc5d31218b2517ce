//! What a role machine asks of its I/O shell, and what the shell feeds back
//! (docs/architecture.md, layout): the interface, routes, DNS and firewall
//! set-up as data, and the few pieces of I/O only the shell can do (answering
//! an app's DNS query, asking resolvers). The shell applies these and knows
//! nothing of the protocol; the machines do no I/O and read no clock.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use postern_model::protocol::DisconnectReason;

/// An app's DNS query as the shell numbered it: the machine answers each
/// exactly once ([`Effect::DnsAnswer`] or [`Effect::ForwardDns`]), so the
/// shell can forget where to send the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// A lookup the machine asked the shell for; the result comes back with
/// the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// The tunnel interface: its addresses and the prefix each gets (a gateway
/// takes the whole device range so replies to clients route into the
/// tunnel; a client takes host routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    pub ipv4: Ipv4Addr,
    pub ipv4_prefix: u8,
    pub ipv6: Ipv6Addr,
    pub ipv6_prefix: u8,
}

/// How the client's DNS is wired: the stub listens on `sentinels` (given to
/// the tunnel interface so the kernel delivers queries locally), the system
/// is pointed at it, and the names below route to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub sentinels: Vec<IpAddr>,
    /// The account's search domain (F25).
    pub search_domain: Option<String>,
    /// The domains of the DNS resources (systemd-resolved routes only
    /// these to the stub).
    pub routing_domains: Vec<String>,
    /// Resolvers the portal configured for other names (empty: the
    /// system's).
    pub upstreams: Vec<IpAddr>,
}

/// Why the daemon must stop: the portal refused its credentials for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    pub reason: DisconnectReason,
    /// What the operator does about it.
    pub advice: &'static str,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            DisconnectReason::TokenRevoked => "the token was revoked",
            DisconnectReason::TokenExpired => "the token expired",
            DisconnectReason::Overloaded => "the connection was overloaded",
            DisconnectReason::Shutdown => "the portal shut down",
            DisconnectReason::DuplicateDevice => "another device with this device id is connected",
        };
        write!(
            f,
            "the portal disconnected this device: {why}; {}",
            self.advice
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Create the tunnel interface (once).
    Interface(TunConfig),
    /// Route exactly these prefixes into the tunnel (the previous set is
    /// replaced).
    Routes {
        routes: BTreeSet<IpNet>,
        /// Prefixes inside the routes kept on the host's own path (the
        /// internet resource's exclusions, the portal's and relays'
        /// addresses).
        exclusions: BTreeSet<IpNet>,
    },
    /// Serve DNS on the sentinels and point the system at them (the first
    /// time), or update systemd-resolved's domains (later). Upstreams and
    /// a resolv.conf are set once, at the first: a search domain changed
    /// later reaches resolv.conf at the client's next start.
    Dns(DnsConfig),
    /// Forward IP between the tunnel and the site, masquerading these
    /// sources.
    Masquerade(Vec<IpNet>),
    /// The answer to an app's query; `None` drops it (not a DNS query).
    DnsAnswer {
        query: QueryId,
        answer: Option<Vec<u8>>,
    },
    /// Ask the upstream resolvers and answer the app (SERVFAIL when none
    /// answers): the name is none of Postern's.
    ForwardDns { query: QueryId, bytes: Vec<u8> },
    /// Resolve a name's A and AAAA records with the system's resolver;
    /// answer with [`Input::Resolved`].
    Resolve { lookup: LookupId, name: String },
    /// Pass a DNS query to the system's resolvers as it is; answer with
    /// [`Input::ResolverAnswer`].
    AskResolvers { lookup: LookupId, query: Vec<u8> },
    /// Access to a resource ended (revoked, the resource removed): these
    /// flows the apps had open through it are forgotten, nothing answers
    /// them any more. A userspace network stack closes their connections
    /// at once; the kernel's TCP would only time out.
    FlowsEnded(Vec<crate::flows::EndedFlow>),
    /// Stop the daemon.
    Stop(Stop),
}

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub addresses: Vec<IpAddr>,
    /// How long the answers are good for.
    pub valid_for: Duration,
}

/// What the shell feeds a machine besides datagrams, packets and portal
/// messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An app's query to the stub.
    DnsQuery { query: QueryId, bytes: Vec<u8> },
    /// The result of [`Effect::Resolve`]: the addresses, or why none.
    Resolved {
        lookup: LookupId,
        result: Result<Resolution, String>,
    },
    /// The result of [`Effect::AskResolvers`] (`None`: nobody answered).
    ResolverAnswer {
        lookup: LookupId,
        answer: Option<Vec<u8>>,
    },
    /// The portal channel came up (true) or was lost (false).
    PortalConnected(bool),
    /// The host's own addresses (a gateway never forwards to them).
    HostAddresses(Vec<IpAddr>),
    /// The host moved to another network, or woke from a suspend
    /// (`woke`): gather again from `locals` (the socket's addresses as
    /// peers should see them on this host, one per family) and restart ICE
    /// with every peer.
    NetworkChanged { locals: Vec<SocketAddr>, woke: bool },
    /// The user turned the internet resource on or off (a client).
    Internet(bool),
}

//! NAT routers that behave like home and office routers.

use crate::error::Result;
use crate::host::{Host, Interface};

/// How a router maps inside endpoints to outside ports (RFC 4787 terms).
///
/// Both kinds filter as a home router does: only replies to traffic sent from
/// inside come back in (Linux conntrack: address- and port-dependent
/// filtering), and nothing unsolicited reaches the LAN or the router itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping ("cone"): one inside socket keeps one
    /// outside port whatever it talks to (masquerade with port preservation).
    /// Hole punching works through it.
    Cone,
    /// Endpoint-dependent mapping ("symmetric"): every new destination gets a
    /// fresh random outside port (masquerade `fully-random`, iptables'
    /// `--random-fully`). Hole punching fails; a relay is needed.
    Symmetric,
    /// No translation and no filtering: a plain router (the LAN's prefix is
    /// routed on the WAN side). For benchmarks that compare tunnels with
    /// the bare path.
    Routed,
}

/// A NAT router: a host forwarding between a LAN and a WAN interface.
#[derive(Clone, Debug)]
pub struct Router {
    pub host: Host,
    pub wan: Interface,
    pub lan: Interface,
    pub kind: NatKind,
}

impl Router {
    /// Turns on forwarding and loads the NAT and filter rules.
    pub(crate) fn configure(
        host: Host,
        wan: Interface,
        lan: Interface,
        kind: NatKind,
    ) -> Result<Self> {
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        host.nft(&ruleset(&wan.name, &lan.name, kind))?;
        Ok(Router {
            host,
            wan,
            lan,
            kind,
        })
    }
}

/// The nftables ruleset of a NAT router. IPv4 is masqueraded; IPv6 is routed
/// without translation but filtered the same way.
fn ruleset(wan: &str, lan: &str, kind: NatKind) -> String {
    let flags = match kind {
        NatKind::Cone => "",
        NatKind::Symmetric => " fully-random",
        NatKind::Routed => {
            return "table inet plab_router {\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n  }\n}\n".to_string();
        }
    };
    format!(
        "table inet plab_router {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta nfproto ipv4 oifname \"{wan}\" masquerade{flags}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"{lan}\" oifname \"{wan}\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{wan}\" ct state established,related accept
    iifname \"{wan}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
    iifname \"{wan}\" drop
  }}
}}
"
    )
}

//! NAT routers that behave like home and office routers.

use crate::error::Result;
use crate::host::{Host, Interface};

/// How a router maps inside endpoints to outside ports and filters what
/// comes back (RFC 4787 terms): the kinds a deployment meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping ("cone"): one inside socket keeps one
    /// outside port whatever it talks to (masquerade with port
    /// preservation); address- and port-dependent filtering (Linux
    /// conntrack: only replies come back in), and the router's own WAN
    /// input firewalled, as home routers ship. Hole punching works.
    Cone,
    /// [`NatKind::Cone`] on a router whose own WAN input is not firewalled
    /// (a bare Linux or Docker host doing masquerade): an unsolicited
    /// packet to a port nothing listens on is answered with ICMP, and the
    /// conntrack entry it leaves makes the router map a later outgoing
    /// packet to that peer to another port (a clash).
    ConeOpenWan,
    /// Endpoint-independent mapping and filtering ("full cone"): anything
    /// sent to a mapped port reaches the inside host. Emulated for a LAN
    /// with one such host ([`Router::forward_unsolicited_to`]): Linux has no
    /// full-cone NAT of its own.
    FullCone,
    /// Endpoint-dependent mapping ("symmetric"): every new destination gets a
    /// fresh random outside port (masquerade `fully-random`, iptables'
    /// `--random-fully`). Hole punching fails; a relay is needed.
    Symmetric,
    /// A cone NAT behind a carrier's cone NAT (CGNAT, 100.64.0.0/10): two
    /// mappings to open, two hops before the internet.
    Double,
    /// No translation and no filtering ("open"): a plain router, the LAN's
    /// prefix routed on the WAN side. Also for benchmarks that compare
    /// tunnels with the bare path.
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

impl Router {
    /// Drops every UDP datagram from the LAN to the WAN (a guest or
    /// corporate network that lets only TCP out).
    pub fn block_udp(&self) -> Result<()> {
        self.host.nft(&format!(
            "table inet plab_no_udp {{
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    iifname \"{lan}\" meta l4proto udp drop
  }}
}}
",
            lan = self.lan.name
        ))
    }

    /// Drops TCP from the LAN to `port` on the WAN side (a network that
    /// lets only some services out).
    pub fn block_tcp_port(&self, port: u16) -> Result<()> {
        self.host.nft(&format!(
            "table inet plab_no_tcp_{port} {{
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    iifname \"{lan}\" tcp dport {port} drop
  }}
}}
",
            lan = self.lan.name
        ))
    }

    /// Full cone: new UDP flows arriving on the WAN go to `inside`, port
    /// unchanged (masquerade preserves ports, so a peer that learnt a
    /// mapping reaches the socket behind it).
    pub fn forward_unsolicited_to(&self, inside: std::net::IpAddr) -> Result<()> {
        self.host.nft(&format!(
            "table ip plab_full_cone {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{wan}\" meta l4proto udp ct state new dnat to {inside}
  }}
}}
",
            wan = self.wan.name
        ))
    }
}

/// The nftables ruleset of a NAT router. IPv4 is masqueraded; IPv6 is routed
/// without translation but filtered the same way.
fn ruleset(wan: &str, lan: &str, kind: NatKind) -> String {
    let flags = match kind {
        NatKind::Symmetric => " fully-random",
        NatKind::Routed => {
            return "table inet plab_router {\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n  }\n}\n".to_string();
        }
        _ => "",
    };
    // Port-restricted filtering lets in replies; full cone also what its
    // DNAT sent on to the inside host.
    let full_cone = if kind == NatKind::FullCone {
        "    ct status dnat accept\n"
    } else {
        ""
    };
    // Home routers drop unsolicited WAN input; a bare Linux host answers it.
    let wan_input = if kind == NatKind::ConeOpenWan {
        String::new()
    } else {
        format!(
            "    iifname \"{wan}\" ct state established,related accept
    iifname \"{wan}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
    iifname \"{wan}\" drop
"
        )
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
{full_cone}    iifname \"{lan}\" oifname \"{wan}\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
{wan_input}  }}
}}
"
    )
}

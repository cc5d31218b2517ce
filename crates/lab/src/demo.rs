//! The whole system in one lab (SPEC F33): a portal and a relay on a public
//! segment, a client behind a home NAT, gateways and a web server behind an
//! office NAT, all real `postern` processes, configured through the REST
//! API like an admin would. `postern demo` holds it up; the end-to-end tests
//! drive it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::http::{self, Response, WebServer};
use crate::pki::{CertificateFiles, TestCa, Validity};
use crate::{Host, Lab, LabProcess, NatKind, Router};

pub const PORTAL: &str = "198.18.0.2:8080";
pub const RELAY_IP: &str = "198.18.0.3";
pub const WEB: &str = "10.0.1.80:80";
/// The office web server's IPv6 address the demo's IPv6 resource names.
pub const WEB_V6: &str = "[fd10::3]:80";
pub const ACCOUNT: &str = "demo";
/// The office's DNS server: only the gateways use it.
pub const OFFICE_DNS: &str = "10.0.1.53:53";
/// A "public" DNS server on the internet segment: the client's resolver
/// before Postern takes over.
pub const PUBLIC_DNS: &str = "198.18.0.4:53";
/// The DNS resource's pattern and a name under it the office resolves.
pub const DNS_PATTERN: &str = "*.apps.corp.test";
pub const DNS_NAME: &str = "web.apps.corp.test";
/// What the demo's resources let through: the web server's port and ping.
pub const WEB_FILTERS: &str = r#"[{"protocol":"tcp","ports":"80"},{"protocol":"icmp"}]"#;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `postern` binary to run in the hosts.
    pub postern: PathBuf,
    pub home_nat: NatKind,
    pub office_nat: NatKind,
    /// Gateways in the office (1 or 2).
    pub gateways: usize,
    /// The client on the office LAN, behind the gateways' NAT, instead of
    /// at home.
    pub client_in_office: bool,
    /// Whether the internet and the sites have IPv6 (besides the office's
    /// private fd10::/64, which only the tunnel reaches).
    pub ipv6: Ipv6Internet,
}

/// IPv6 on the lab's internet, in the benchmarking prefix 2001:2::/48 (the
/// twin of 198.18.0.0/15): routed to each site without translation, behind
/// the site routers' stateful firewalls (only replies come in), as ISPs
/// and home routers ship it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv6Internet {
    /// IPv4 only outside (the office LAN's ULA resources aside).
    #[default]
    Off,
    /// Both sites, the portal and the relay dual-stack.
    DualStack,
    /// The same, but the office's hosts have no IPv4 route out: the
    /// gateways reach the portal and relay over IPv6 only.
    OfficeOnlyIpv6,
}

/// The lab's public IPv6 addresses and prefixes.
mod v6 {
    pub const PORTAL: &str = "2001:2::2";
    pub const RELAY: &str = "2001:2::3";
    pub const DNS: &str = "2001:2::4";
    pub const HOME_ISP: &str = "2001:2::10";
    pub const OFFICE_ISP: &str = "2001:2::20";
    /// Each ISP's access segment (ISP ::1, site router ::2) and the site's
    /// LAN prefix (router ::1).
    pub const HOME_ACCESS: &str = "2001:2:1::";
    pub const OFFICE_ACCESS: &str = "2001:2:2::";
    pub const HOME_LAN: &str = "2001:2:10::";
    pub const OFFICE_LAN: &str = "2001:2:20::";
}

/// The network: hosts and routers, nothing running yet.
pub struct Topology {
    pub lab: Lab,
    pub portal: Host,
    pub relay: Host,
    pub client: Host,
    pub gateways: Vec<Host>,
    pub web: Host,
    pub nat_home: Router,
    pub nat_office: Router,
    /// The carrier's NAT in front of the home NAT ([`NatKind::Double`]).
    pub nat_carrier: Option<Router>,
    /// Each site's ISP: the routed hop between its NAT and the internet
    /// segment.
    pub isp_home: Host,
    pub isp_office: Host,
    /// The "public" DNS server's host on the internet segment.
    pub dns: Host,
    pub home: crate::Switch,
    pub office: crate::Switch,
    /// The "public" segment, 198.18.0.0/24.
    pub internet: crate::Switch,
    pub ipv6: Ipv6Internet,
}

fn invalid(what: impl Into<String>) -> LabError {
    LabError::Invalid(what.into())
}

/// The access segments between each site's NAT and its ISP's router, and
/// the ISP routers' addresses on the internet segment.
const HOME_ACCESS: &str = "198.18.10.0/24";
const HOME_ISP: &str = "198.18.0.10";
const OFFICE_ACCESS: &str = "198.18.20.0/24";
const OFFICE_ISP: &str = "198.18.0.20";
const HOME_LAN: &str = "192.168.1.0/24";
const OFFICE_LAN: &str = "10.0.1.0/24";

impl Topology {
    /// A host on the internet segment learns the way to both sites' access
    /// segments (and to a routed site's LAN) through their ISPs.
    pub fn route_to_sites(&self, host: &Host) -> Result<()> {
        route_to_sites(
            host,
            self.nat_home.kind == NatKind::Routed,
            self.nat_office.kind == NatKind::Routed,
        )?;
        if self.ipv6 != Ipv6Internet::Off {
            route_to_sites_v6(host)?;
        }
        Ok(())
    }
}

/// A host on the internet segment reaches each site's IPv6 prefixes
/// through its ISP.
fn route_to_sites_v6(host: &Host) -> Result<()> {
    for (prefix, isp) in [
        (v6::HOME_ACCESS, v6::HOME_ISP),
        (v6::HOME_LAN, v6::HOME_ISP),
        (v6::OFFICE_ACCESS, v6::OFFICE_ISP),
        (v6::OFFICE_LAN, v6::OFFICE_ISP),
    ] {
        host.add_route(&format!("{prefix}/64"), ip(isp)?)?;
    }
    Ok(())
}

/// Adds an IPv6 address (no duplicate detection: usable at once).
fn add_v6(host: &Host, interface: &str, cidr: &str) -> Result<()> {
    host.ip(&["addr", "add", cidr, "dev", interface, "nodad"])?;
    Ok(())
}

/// IPv6 for a site: its router gets `access`::2 on the WAN (default route
/// via the ISP's ::1) and `lan`::1 on the LAN, and its ISP routes the LAN
/// prefix to it. Routed, not translated; the router's ruleset already
/// filters IPv6 as it does IPv4 (only replies come in).
fn site_v6(router: &Router, isp: &Host, access: &str, lan: &str) -> Result<()> {
    add_v6(&router.host, &router.wan.name, &format!("{access}2/64"))?;
    add_v6(&router.host, &router.lan.name, &format!("{lan}1/64"))?;
    router.host.set_default_route(ip(&format!("{access}1"))?)?;
    isp.add_route(&format!("{lan}/64"), ip(&format!("{access}2"))?)?;
    Ok(())
}

/// The lab's IPv6 internet ([`Ipv6Internet`]) on a built topology.
fn public_ipv6(net: &Topology, client_in_office: bool) -> Result<()> {
    if net.nat_carrier.is_some() {
        return Err(invalid(
            "IPv6 in the lab has no carrier NAT (NatKind::Double)",
        ));
    }
    for (host, address) in [
        (&net.portal, v6::PORTAL),
        (&net.relay, v6::RELAY),
        (&net.dns, v6::DNS),
    ] {
        add_v6(host, "eth0", &format!("{address}/64"))?;
        route_to_sites_v6(host)?;
    }
    // Each ISP: the internet segment on eth0, its access segment on eth1;
    // the other site's prefixes through the other ISP.
    for (isp, public, access, other_site, other_isp) in [
        (
            &net.isp_home,
            v6::HOME_ISP,
            v6::HOME_ACCESS,
            [v6::OFFICE_ACCESS, v6::OFFICE_LAN],
            v6::OFFICE_ISP,
        ),
        (
            &net.isp_office,
            v6::OFFICE_ISP,
            v6::OFFICE_ACCESS,
            [v6::HOME_ACCESS, v6::HOME_LAN],
            v6::HOME_ISP,
        ),
    ] {
        isp.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        add_v6(isp, "eth0", &format!("{public}/64"))?;
        add_v6(isp, "eth1", &format!("{access}1/64"))?;
        for prefix in other_site {
            isp.add_route(&format!("{prefix}/64"), ip(other_isp)?)?;
        }
    }
    site_v6(&net.nat_home, &net.isp_home, v6::HOME_ACCESS, v6::HOME_LAN)?;
    site_v6(
        &net.nat_office,
        &net.isp_office,
        v6::OFFICE_ACCESS,
        v6::OFFICE_LAN,
    )?;
    let (client_lan, client_address) = if client_in_office {
        (v6::OFFICE_LAN, "50")
    } else {
        (v6::HOME_LAN, "10")
    };
    add_v6(
        &net.client,
        "eth0",
        &format!("{client_lan}{client_address}/64"),
    )?;
    net.client
        .set_default_route(ip(&format!("{client_lan}1"))?)?;
    for (n, gateway) in net.gateways.iter().enumerate() {
        add_v6(gateway, "eth0", &format!("{}{}/64", v6::OFFICE_LAN, 11 + n))?;
        gateway.set_default_route(ip(&format!("{}1", v6::OFFICE_LAN))?)?;
        if net.ipv6 == Ipv6Internet::OfficeOnlyIpv6 {
            gateway.ip(&["-4", "route", "del", "default"])?;
        }
    }
    Ok(())
}

fn ip(text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| invalid(format!("not an address: {text}")))
}

/// An open (routed) site's LAN: its own ISP routes it to the site's
/// router, the other ISP to that ISP.
fn route_open_site(
    router: &Router,
    lan: &str,
    (own_isp, own_isp_address): (&Host, &str),
    other_isp: &Host,
) -> Result<()> {
    let wan = router
        .wan
        .ipv4()
        .ok_or_else(|| invalid("a site router has no WAN address"))?;
    own_isp.add_route(lan, wan)?;
    other_isp.add_route(lan, ip(own_isp_address)?)?;
    Ok(())
}

fn route_to_sites(host: &Host, home_routed: bool, office_routed: bool) -> Result<()> {
    let home = ip(HOME_ISP)?;
    let office = ip(OFFICE_ISP)?;
    host.add_route(HOME_ACCESS, home)?;
    host.add_route(OFFICE_ACCESS, office)?;
    if home_routed {
        host.add_route(HOME_LAN, home)?;
    }
    if office_routed {
        host.add_route(OFFICE_LAN, office)?;
    }
    Ok(())
}

/// An ISP's router: on the internet segment at `public`, on an access
/// segment of its own at `access` (.1 of it), forwarding without NAT or
/// filtering. A routed hop, as the internet always has between two
/// sites: a packet's TTL runs out here, not at the far site's router.
fn isp(
    lab: &Lab,
    name: &str,
    internet: &crate::Switch,
    public: &str,
    access: &str,
) -> Result<(Host, crate::Switch)> {
    let host = lab.add_host(name)?;
    lab.connect(&host, internet, &[&format!("{public}/24")])?;
    let segment = lab.add_switch(&format!("{name}-access"))?;
    let gateway = access.replace(".0/24", ".1/24");
    lab.connect(&host, &segment, &[&gateway])?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    Ok((host, segment))
}

/// A site's NAT (`kind`) on `access`, its LAN at `lan_address`; a
/// [`NatKind::Double`] gets a carrier NAT in between (100.64.0.0/24).
/// Returns the site's router and the carrier's.
fn site_nat(
    lab: &Lab,
    name: &str,
    access: (&crate::Switch, &str),
    lan: (&crate::Switch, &str),
    kind: NatKind,
) -> Result<(Router, Option<Router>)> {
    let (segment, prefix) = access;
    let isp_address: IpAddr = prefix
        .replace(".0/24", ".1")
        .parse()
        .map_err(|_| invalid("access prefix"))?;
    let wan_address = prefix.replace(".0/24", ".2/24");
    if kind == NatKind::Double {
        let carrier_lan = lab.add_switch(&format!("{name}-cgn"))?;
        let carrier = lab.add_nat_router(
            &format!("{name}-carrier"),
            segment,
            &wan_address,
            &carrier_lan,
            "100.64.0.1/24",
            NatKind::Cone,
        )?;
        carrier.host.set_default_route(isp_address)?;
        let router = lab.add_nat_router(
            name,
            &carrier_lan,
            "100.64.0.2/24",
            lan.0,
            lan.1,
            NatKind::Double,
        )?;
        let carrier_address = carrier
            .lan
            .ipv4()
            .ok_or_else(|| invalid("the carrier NAT has no LAN address"))?;
        router.host.set_default_route(carrier_address)?;
        return Ok((router, Some(carrier)));
    }
    let router = lab.add_nat_router(name, segment, &wan_address, lan.0, lan.1, kind)?;
    router.host.set_default_route(isp_address)?;
    Ok((router, None))
}

/// Builds the demo's network. `client_in_office` puts the client on the
/// office LAN, behind the same NAT as the gateways (host candidates must
/// win there).
pub fn topology(
    home_nat: NatKind,
    office_nat: NatKind,
    gateways: usize,
    client_in_office: bool,
    ipv6: Ipv6Internet,
) -> Result<Topology> {
    let lab = Lab::new()?;
    let internet = lab.add_switch("internet")?;
    let portal = lab.add_host("portal")?;
    lab.connect(&portal, &internet, &["198.18.0.2/24"])?;
    let relay = lab.add_host("relay")?;
    lab.connect(&relay, &internet, &["198.18.0.3/24"])?;
    let dns = lab.add_host("dns")?;
    lab.connect(&dns, &internet, &["198.18.0.4/24"])?;
    let (isp_home, home_access) = isp(&lab, "isp-home", &internet, HOME_ISP, HOME_ACCESS)?;
    let (isp_office, office_access) =
        isp(&lab, "isp-office", &internet, OFFICE_ISP, OFFICE_ACCESS)?;
    let home = lab.add_switch("home")?;
    let (nat_home, nat_carrier) = site_nat(
        &lab,
        "nat-home",
        (&home_access, HOME_ACCESS),
        (&home, "192.168.1.1/24"),
        home_nat,
    )?;
    nat_home.host.ip(&[
        "addr",
        "add",
        "fd20::1/64",
        "dev",
        &nat_home.lan.name,
        "nodad",
    ])?;
    let office = lab.add_switch("office")?;
    let (nat_office, _) = site_nat(
        &lab,
        "nat-office",
        (&office_access, OFFICE_ACCESS),
        (&office, "10.0.1.1/24"),
        office_nat,
    )?;
    let client = lab.add_host("client")?;
    if client_in_office {
        lab.connect(&client, &office, &["10.0.1.50/24", "fd10::50/64"])?;
    } else {
        // Dual-stack like a real home LAN: the laptop has a global-looking
        // IPv6 address of its own that must never become a tunnel source.
        lab.connect(&client, &home, &["192.168.1.10/24", "fd20::10/64"])?;
    }
    let mut gateway_hosts = Vec::new();
    for n in 1..=gateways.clamp(1, 9) {
        let host = lab.add_host(&format!("gateway-{n}"))?;
        lab.connect(
            &host,
            &office,
            &[
                &format!("10.0.1.{}/24", 10 + n),
                &format!("fd10::{}/64", 10 + n),
            ],
        )?;
        gateway_hosts.push(host);
    }
    let web = lab.add_host("web")?;
    lab.connect(
        &web,
        &office,
        &[
            "10.0.1.80/24",
            "10.0.1.53/24",
            "fd10::80/64",
            "fd10::3/64",
            "fd10::53/64",
        ],
    )?;
    let home_lan = nat_home
        .lan
        .ipv4()
        .ok_or_else(|| invalid("nat-home has no LAN address"))?;
    let office_lan = nat_office
        .lan
        .ipv4()
        .ok_or_else(|| invalid("nat-office has no LAN address"))?;
    client.set_default_route(if client_in_office {
        office_lan
    } else {
        home_lan
    })?;
    for host in gateway_hosts.iter().chain([&web]) {
        host.set_default_route(office_lan)?;
    }
    if home_nat == NatKind::FullCone {
        nat_home.forward_unsolicited_to(ip("192.168.1.10")?)?;
    }
    if office_nat == NatKind::FullCone {
        nat_office.forward_unsolicited_to(ip("10.0.1.11")?)?;
    }
    let home_routed = home_nat == NatKind::Routed;
    let office_routed = office_nat == NatKind::Routed;
    for host in [&portal, &relay, &dns] {
        route_to_sites(host, home_routed, office_routed)?;
    }
    // Each ISP knows the other site's segments through the other ISP, and
    // a routed site's LAN through that site's router.
    isp_home.add_route(OFFICE_ACCESS, ip(OFFICE_ISP)?)?;
    isp_office.add_route(HOME_ACCESS, ip(HOME_ISP)?)?;
    if home_routed {
        route_open_site(&nat_home, HOME_LAN, (&isp_home, HOME_ISP), &isp_office)?;
    }
    if office_routed {
        route_open_site(
            &nat_office,
            OFFICE_LAN,
            (&isp_office, OFFICE_ISP),
            &isp_home,
        )?;
    }
    let net = Topology {
        lab,
        portal,
        relay,
        client,
        gateways: gateway_hosts,
        web,
        nat_home,
        nat_office,
        nat_carrier,
        isp_home,
        isp_office,
        dns,
        home,
        office,
        internet,
        ipv6,
    };
    if ipv6 != Ipv6Internet::Off {
        public_ipv6(&net, client_in_office)?;
    }
    Ok(net)
}

/// What the admin configured.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub admin_token: String,
    pub site_id: String,
    pub resource_id: String,
    pub group_id: String,
    pub policy_id: String,
    pub actor_id: String,
    pub gateway_token: String,
    pub client_token: String,
    /// The DNS resource (`*.apps.corp.test`, tcp/80) and its policy.
    pub dns_resource_id: String,
    pub dns_policy_id: String,
    /// The IPv6 resource `fd10::3` (tcp/80, ICMP).
    pub ipv6_resource_id: String,
}

/// The running demo. Dropping it stops every process and removes the lab.
pub struct Demo {
    pub options: DemoOptions,
    pub setup: Setup,
    pub web_server: WebServer,
    pub office_dns: crate::dns::DnsServer,
    pub public_dns: crate::dns::DnsServer,
    /// The portal, then the relay.
    pub processes: Vec<LabProcess>,
    pub gateway_processes: Vec<Option<LabProcess>>,
    pub client_process: Option<LabProcess>,
    /// The lab's CA and the portal's certificate from it.
    pub pki: DemoPki,
    data: PathBuf,
    /// The portal's `--external-url`, if it has one.
    external_url: Option<String>,
    // Last: the lab goes after the processes in it.
    pub net: Topology,
}

/// The client's first interface: on the home switch.
const CLIENT_HOME_LINK: &str = "eth0";

/// Another network for the client ([`Demo::add_cafe`]).
pub struct Cafe {
    pub router: Router,
    /// The client's interface on the cafe's switch.
    pub link: crate::host::Interface,
}

/// `--token-file=PATH` for `token`, written to a new file `path` (0600):
/// tokens on a command line show in `ps`, and the demo is what people copy.
fn token_file_arg(path: &Path, token: &str) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // The mode applies only to a file this call creates.
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{token}")?;
    Ok(format!("--token-file={}", path.display()))
}

/// A string field of a JSON object.
fn json_field(body: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get(field)?.as_str().map(str::to_string)
}

/// The `data` array of a list answer (or the array itself).
fn json_items(body: &str) -> Vec<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut object) => match object.remove("data") {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The portal serves HTTPS with a certificate from the lab's CA; the
/// daemons trust the CA through `--ca-file`.
pub struct DemoPki {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub portal: CertificateFiles,
    /// The relay's, for TURN over TLS on port 443.
    pub relay: CertificateFiles,
    /// For the lab's own requests to the portal.
    pub tls: Arc<rustls::ClientConfig>,
}

impl DemoPki {
    fn new(data: &Path) -> Result<DemoPki> {
        let ca = TestCa::new("Postern demo CA")?;
        let ca_file = ca.write_ca(&data.join("ca.pem"))?;
        let portal_ip = PORTAL.split(':').next().unwrap_or(PORTAL);
        let portal = ca.write_server(
            data,
            "portal",
            &[portal_ip, v6::PORTAL, "portal.demo.test"],
            Validity::Current,
        )?;
        let relay = ca.write_server(
            data,
            "relay",
            &[RELAY_IP, v6::RELAY, "relay.demo.test"],
            Validity::Current,
        )?;
        let tls = ca.client_config()?;
        Ok(DemoPki {
            ca,
            ca_file,
            portal,
            relay,
            tls,
        })
    }

    /// The daemons' flag for the CA.
    pub fn ca_arg(&self) -> String {
        format!("--ca-file={}", self.ca_file.display())
    }
}

impl Demo {
    /// Builds the lab, starts portal, relay, gateways and client, and
    /// configures the account; returns once the client has its resources.
    pub fn start(options: DemoOptions) -> Result<Demo> {
        let mut demo = Demo::start_without_client(options)?;
        demo.client_process = Some(demo.spawn_client()?);
        demo.wait_for_client(Duration::from_secs(20))?;
        Ok(demo)
    }

    /// Like [`Demo::start`] without the client: a test starts its own
    /// (another kind of client, as another user).
    pub fn start_without_client(options: DemoOptions) -> Result<Demo> {
        let mut demo = Demo::build(options, None)?;
        demo.configure()?;
        for n in 0..demo.net.gateways.len() {
            let process = demo.spawn_gateway(n)?;
            demo.gateway_processes.push(Some(process));
        }
        demo.wait_for_gateways(demo.net.gateways.len(), Duration::from_secs(20))?;
        Ok(demo)
    }

    /// Builds the lab and starts the portal and the relay only: an empty
    /// account (its admin `admin@demo.test`), no gateway, no client. The
    /// portal knows its external URL (`https://198.18.0.2:8080`), as a
    /// deployment does, so the console's commands name it. A test
    /// configures the account as an admin would and starts the daemons
    /// itself ([`Demo::spawn_postern`], [`Demo::start_client`] once
    /// [`Setup::client_token`] and [`Setup::resource_id`] are set).
    pub fn start_unconfigured(options: DemoOptions) -> Result<Demo> {
        Demo::build(options, Some(format!("https://{PORTAL}")))
    }

    /// The lab, its servers, the portal and the relay.
    fn build(options: DemoOptions, external_url: Option<String>) -> Result<Demo> {
        let net = topology(
            options.home_nat,
            options.office_nat,
            options.gateways,
            options.client_in_office,
            options.ipv6,
        )?;
        let data = net.lab.log_dir().join("data");
        std::fs::create_dir_all(&data)?;
        // Dual-stack: every address of the web host, IPv4 and IPv6.
        let web_server = WebServer::start(
            &net.web,
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 80)),
        )?;
        let office_dns = crate::dns::DnsServer::start(
            &net.web,
            OFFICE_DNS
                .parse()
                .map_err(|_| invalid("office DNS address"))?,
            &[
                (DNS_NAME, IpAddr::from([10, 0, 1, 80])),
                (DNS_NAME, IpAddr::from([0xfd10, 0, 0, 0, 0, 0, 0, 0x80])),
                // For patterns other than the demo's own (tests add resources).
                ("db1.corp.test", IpAddr::from([10, 0, 1, 80])),
                ("internal.corp.test", IpAddr::from([10, 0, 1, 80])),
                ("a.b.internal.corp.test", IpAddr::from([10, 0, 1, 80])),
            ],
        )?;
        let public_dns = crate::dns::DnsServer::start(
            &net.dns,
            PUBLIC_DNS
                .parse()
                .map_err(|_| invalid("public DNS address"))?,
            &[
                ("portal.demo.test", IpAddr::from([198, 18, 0, 2])),
                ("relay.demo.test", IpAddr::from([198, 18, 0, 3])),
            ],
        )?;
        for gateway in &net.gateways {
            gateway.set_resolv_conf(&format!(
                "# the office's resolver\nnameserver {}\n",
                OFFICE_DNS.trim_end_matches(":53")
            ))?;
        }
        let pki = DemoPki::new(&data)?;
        let mut demo = Demo {
            options,
            pki,
            setup: Setup::default(),
            web_server,
            office_dns,
            public_dns,
            processes: Vec::new(),
            gateway_processes: Vec::new(),
            client_process: None,
            data,
            external_url,
            net,
        };
        demo.start_portal()?;
        Ok(demo)
    }

    fn database(&self) -> String {
        format!("sqlite://{}/postern.db", self.data.display())
    }

    fn postern(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.options.postern)
            .args(args)
            .output()
            .map_err(|source| LabError::Spawn {
                command: format!("postern {}", args.join(" ")),
                source,
            })?;
        if !output.status.success() {
            return Err(LabError::CommandFailed {
                command: format!("postern {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Starts `postern ARGS` in `host` (tests start daemons the demo does
    /// not have).
    pub fn spawn_postern(&self, host: &Host, args: &[&str]) -> Result<LabProcess> {
        host.spawn(self.command(host, args))
    }

    fn command(&self, host: &Host, args: &[&str]) -> Command {
        let mut command = host.command(&self.options.postern);
        command.args(args).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        command
    }

    fn start_portal(&mut self) -> Result<()> {
        let database = self.database();
        self.setup.admin_token = self.postern(&[
            "portal",
            "init",
            "--database",
            &database,
            "--account",
            ACCOUNT,
            "--admin-email",
            "admin@demo.test",
        ])?;
        let relay_token = self.postern(&["portal", "relay-token", "--database", &database])?;
        let portal = self.spawn_portal()?;
        self.processes.push(portal);
        let url = format!("https://{PORTAL}");
        let ca_arg = self.pki.ca_arg();
        let token = token_file_arg(&self.data.join("relay.token"), &relay_token)?;
        // With IPv6, `[::]` serves both families.
        let (listen, public) = if self.net.ipv6 == Ipv6Internet::Off {
            (RELAY_IP.to_string(), RELAY_IP.to_string())
        } else {
            ("[::]".to_string(), format!("{RELAY_IP},{}", v6::RELAY))
        };
        let relay = self.command(
            &self.net.relay,
            &[
                "relay",
                "--portal",
                &url,
                &ca_arg,
                &token,
                "--listen",
                &format!("{listen}:3478"),
                "--public-ip",
                &public,
                "--tls-listen",
                &format!("{listen}:443"),
                "--tls-cert",
                &self.pki.relay.certificate.to_string_lossy(),
                "--tls-key",
                &self.pki.relay.key.to_string_lossy(),
                "--metrics",
                &format!("{RELAY_IP}:9100"),
            ],
        );
        self.processes.push(self.net.relay.spawn(relay)?);
        Ok(())
    }

    /// A second relay on the internet segment at `address` (without TLS),
    /// registered with the portal like the first; its link delays what it
    /// sends by `delay`. Its process stays up with the demo's.
    pub fn add_relay(&mut self, address: &str, delay: Duration) -> Result<Host> {
        let host = self.net.lab.add_host("relay-2")?;
        let link = self
            .net
            .lab
            .connect(&host, &self.net.internet, &[&format!("{address}/24")])?;
        self.net.route_to_sites(&host)?;
        if !delay.is_zero() {
            self.net
                .lab
                .impair(&link, crate::Impairment::delay(delay))?;
        }
        let database = self.database();
        let relay_token = self.postern(&["portal", "relay-token", "--database", &database])?;
        let url = format!("https://{PORTAL}");
        let ca_arg = self.pki.ca_arg();
        let token = token_file_arg(&self.data.join("relay-2.token"), &relay_token)?;
        let listen = format!("{address}:3478");
        let relay = self.command(
            &host,
            &[
                "relay",
                "--portal",
                &url,
                &ca_arg,
                &token,
                "--listen",
                &listen,
                "--public-ip",
                address,
            ],
        );
        self.processes.push(host.spawn(relay)?);
        Ok(host)
    }

    /// Delays what the first relay sends by `delay` (a relay far away).
    pub fn delay_relay(&self, delay: Duration) -> Result<()> {
        let link = crate::host::Interface {
            host: self.net.relay.clone(),
            name: "eth0".into(),
            addresses: Vec::new(),
        };
        self.net.lab.impair(&link, crate::Impairment::delay(delay))
    }

    /// A REST call from inside the portal's host.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> std::result::Result<Response, String> {
        let address: SocketAddr = PORTAL.parse().map_err(|_| "portal address".to_string())?;
        let token = self.setup.admin_token.clone();
        let tls = Arc::clone(&self.pki.tls);
        let (method, path, json) = (
            method.to_string(),
            path.to_string(),
            json.map(str::to_string),
        );
        self.net
            .portal
            .enter(move || {
                http::request_tls(
                    address,
                    &tls,
                    &method,
                    &path,
                    Some(&token),
                    json.as_deref(),
                    Duration::from_secs(10),
                )
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// A REST call that must succeed; returns the body.
    pub fn api_ok(&self, method: &str, path: &str, json: Option<&str>) -> Result<String> {
        let response = self.api(method, path, json).map_err(invalid)?;
        if !(200..300).contains(&response.status) {
            return Err(invalid(format!(
                "{method} {path} answered {}: {}",
                response.status,
                response.text()
            )));
        }
        Ok(response.text())
    }

    /// A resource of the demo's site (`filters` is JSON) and a policy that
    /// gives it to the Engineering group; returns their ids.
    pub fn add_resource(
        &self,
        name: &str,
        kind: &str,
        address: &str,
        filters: &str,
    ) -> Result<(String, String)> {
        let body = serde_json::json!({
            "name": name,
            "type": kind,
            "address": address,
            "site_id": self.setup.site_id,
            "filters": serde_json::from_str::<serde_json::Value>(filters)
                .map_err(|e| invalid(format!("filters {filters:?}: {e}")))?,
        });
        let resource = self.api_ok("POST", "/api/v1/resources", Some(&body.to_string()))?;
        let resource_id =
            json_field(&resource, "id").ok_or_else(|| invalid(format!("no id in {resource}")))?;
        let body = serde_json::json!({
            "group_id": self.setup.group_id,
            "resource_id": resource_id,
            "description": format!("Engineering reaches {name}"),
        });
        let policy = self.api_ok("POST", "/api/v1/policies", Some(&body.to_string()))?;
        let policy_id =
            json_field(&policy, "id").ok_or_else(|| invalid(format!("no id in {policy}")))?;
        Ok((resource_id, policy_id))
    }

    fn configure(&mut self) -> Result<()> {
        let id =
            |body: &str| json_field(body, "id").ok_or_else(|| invalid(format!("no id in {body}")));
        let site = self.api_ok("POST", "/api/v1/sites", Some(r#"{"name":"Office"}"#))?;
        self.setup.site_id = id(&site)?;
        let token = self.api_ok(
            "POST",
            &format!("/api/v1/sites/{}/gateway_tokens", self.setup.site_id),
            Some("{}"),
        )?;
        self.setup.gateway_token =
            json_field(&token, "token").ok_or_else(|| invalid("no gateway token"))?;
        let group = self.api_ok("POST", "/api/v1/groups", Some(r#"{"name":"Engineering"}"#))?;
        self.setup.group_id = id(&group)?;
        (self.setup.resource_id, self.setup.policy_id) =
            self.add_resource("Office web server", "ip", "10.0.1.80", WEB_FILTERS)?;
        let actor = self.api_ok(
            "POST",
            "/api/v1/actors",
            Some(r#"{"name":"demo laptop","role":"service_account"}"#),
        )?;
        self.setup.actor_id = id(&actor)?;
        self.api_ok(
            "PUT",
            &format!("/api/v1/groups/{}/members", self.setup.group_id),
            Some(&format!(r#"{{"actor_ids":["{}"]}}"#, self.setup.actor_id)),
        )?;
        let token = self.api_ok(
            "POST",
            &format!("/api/v1/actors/{}/tokens", self.setup.actor_id),
            Some("{}"),
        )?;
        self.setup.client_token =
            json_field(&token, "token").ok_or_else(|| invalid("no client token"))?;
        (self.setup.dns_resource_id, self.setup.dns_policy_id) =
            self.add_resource("Office apps", "dns", DNS_PATTERN, WEB_FILTERS)?;
        (self.setup.ipv6_resource_id, _) =
            self.add_resource("Office web server (IPv6)", "ip", "fd10::3", WEB_FILTERS)?;
        self.api_ok(
            "PATCH",
            "/api/v1/account",
            Some(r#"{"search_domain":"corp.test"}"#),
        )?;
        Ok(())
    }

    /// Starts gateway `n` (0-based) in its host.
    pub fn spawn_gateway(&self, n: usize) -> Result<LabProcess> {
        self.spawn_gateway_with(n, &[])
    }

    /// [`Demo::spawn_gateway`] with `extra` arguments.
    pub fn spawn_gateway_with(&self, n: usize, extra: &[&str]) -> Result<LabProcess> {
        let host = &self.net.gateways[n];
        let state = self.data.join(host.name());
        let url = if self.net.ipv6 == Ipv6Internet::OfficeOnlyIpv6 {
            format!("https://[{}]:8080", v6::PORTAL)
        } else {
            format!("https://{PORTAL}")
        };
        let ca_arg = self.pki.ca_arg();
        let token = token_file_arg(&self.data.join("gateway.token"), &self.setup.gateway_token)?;
        let command = self.command(
            host,
            &[
                "gateway",
                "--portal",
                &url,
                &ca_arg,
                &token,
                "--name",
                host.name(),
                "--state-dir",
                &state.to_string_lossy(),
                "--metrics",
                &format!("10.0.1.{}:9100", 11 + n),
                // Each its own port: two gateways behind one NAT on the same
                // port collide in the NAT's port table, and the second then
                // gets a fresh port per destination (symmetric behaviour,
                // relayed paths), as it would in a real office.
                "--port",
                &(51820 + 10 * n).to_string(),
            ],
        );
        let mut command = command;
        command.args(extra);
        host.spawn(command)
    }

    pub fn status_socket(&self) -> PathBuf {
        self.data.join("client.sock")
    }

    fn spawn_client(&self) -> Result<LabProcess> {
        self.spawn_client_with(&[])
    }

    /// Starts the client again (after [`Demo::stop_client`] or
    /// [`Demo::kill_client`]) with `extra` arguments, and waits until it has
    /// its resources and routes.
    pub fn start_client(&mut self, extra: &[&str]) -> Result<()> {
        self.client_process = Some(self.spawn_client_with(extra)?);
        self.wait_for_client(Duration::from_secs(20))
    }

    /// Kills the client (SIGKILL): what it set up stays behind.
    pub fn kill_client(&mut self) -> Result<()> {
        if let Some(mut process) = self.client_process.take() {
            process.kill()?;
        }
        Ok(())
    }

    fn spawn_client_with(&self, extra: &[&str]) -> Result<LabProcess> {
        let state = self.data.join("client");
        let resolv_conf = self.client_resolv_conf()?;
        let url = format!("https://{PORTAL}");
        let ca_arg = self.pki.ca_arg();
        let socket = self.status_socket();
        let token = token_file_arg(&self.data.join("client.token"), &self.setup.client_token)?;
        let command = self.command(
            &self.net.client,
            &[
                "client",
                "up",
                "--portal",
                &url,
                &ca_arg,
                &token,
                "--name",
                "laptop",
                "--state-dir",
                &state.to_string_lossy(),
                "--status-socket",
                &socket.to_string_lossy(),
                "--metrics",
                if self.options.client_in_office {
                    "10.0.1.50:9100"
                } else {
                    "192.168.1.10:9100"
                },
                "--resolv-conf",
                &resolv_conf.to_string_lossy(),
            ],
        );
        let mut command = command;
        command.args(extra);
        self.net.client.spawn(command)
    }

    /// Where the client host's resolv.conf lives (see
    /// [`Demo::client_resolv_conf`]).
    pub fn client_resolv_conf_path(&self) -> PathBuf {
        Path::new("/etc/netns")
            .join(self.net.client.namespace())
            .join("resolv.conf")
    }

    /// The client host's own resolv.conf (never the machine's): the public
    /// DNS server, as a home router would hand out.
    pub fn client_resolv_conf(&self) -> Result<PathBuf> {
        self.net.client.set_resolv_conf(&format!(
            "# the home network's resolver\nnameserver {}\n",
            PUBLIC_DNS.trim_end_matches(":53")
        ))
    }

    /// Waits until `count` gateways are online at the portal.
    pub fn wait_for_gateways(&self, count: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let body = self.api_ok(
                "GET",
                &format!("/api/v1/sites/{}/gateways", self.setup.site_id),
                None,
            )?;
            let online = json_items(&body)
                .iter()
                .filter(|g| g["online"].as_bool() == Some(true))
                .count();
            if online >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .gateway_processes
                    .iter()
                    .flatten()
                    .map(|p| format!("{}:\n{}", p.label(), p.stderr()))
                    .collect();
                return Err(invalid(format!(
                    "{count} gateways never came online: {body}\n{}",
                    logs.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the client's status lists the web server and it routes
    /// the web server (and the IPv6 resource, if the demo has it) into its
    /// tunnel.
    pub fn wait_for_client(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(status) = self.client_status()
                && status.contains(&self.setup.resource_id)
                && self.routed_through_tunnel("10.0.1.80")
                && (self.setup.ipv6_resource_id.is_empty() || self.routed_through_tunnel("fd10::3"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .client_process
                    .as_ref()
                    .map(|p| p.stderr())
                    .unwrap_or_default();
                let client = &self.net.client;
                let routing = [
                    client.run("ip", &["route", "get", "10.0.1.80"]),
                    client.run("ip", &["-6", "route", "get", "fd10::3"]),
                    client.run("ip", &["rule"]),
                    client.run("ip", &["route", "show", "table", "all"]),
                ]
                .map(|r| r.unwrap_or_else(|e| e.to_string()))
                .join("\n");
                return Err(invalid(format!(
                    "the client never got its resources and routes; routing:\n{routing}\nits log:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the client routes `destination` into its tunnel interface
    /// (routes follow the resource list a moment after the status).
    fn routed_through_tunnel(&self, destination: &str) -> bool {
        self.net
            .client
            .run("ip", &["route", "get", destination])
            .is_ok_and(|route| route.contains("dev postern0"))
    }

    /// `postern client status --json` of the demo's client.
    pub fn client_status(&self) -> Result<String> {
        self.postern(&[
            "client",
            "status",
            "--json",
            "--status-socket",
            &self.status_socket().to_string_lossy(),
        ])
    }

    /// Downloads `size` bytes from the web server through the tunnel and
    /// checks every byte; returns how long it took.
    pub fn download(&self, size: u64, limit: Duration) -> Result<Duration> {
        let web: SocketAddr = WEB.parse().map_err(|_| invalid("web address"))?;
        self.download_from(web, size, limit)
    }

    /// Like [`Demo::download`] from any address (a DNS resource's proxy).
    pub fn download_from(&self, web: SocketAddr, size: u64, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        let response = self.net.client.enter(move || {
            http::request(web, "GET", &format!("/bytes/{size}"), None, None, limit)
        })??;
        let took = started.elapsed();
        if response.status != 200 {
            return Err(invalid(format!("download answered {}", response.status)));
        }
        if response.body.len() as u64 != size {
            return Err(invalid(format!(
                "downloaded {} of {size} bytes",
                response.body.len()
            )));
        }
        if let Some(at) = response
            .body
            .iter()
            .enumerate()
            .position(|(i, b)| *b != http::payload_byte(i as u64))
        {
            return Err(invalid(format!("the download differs at byte {at}")));
        }
        Ok(took)
    }

    /// A TCP connection from the client to `port` on the web server.
    pub fn connect(&self, port: u16, limit: Duration) -> std::io::Result<()> {
        let address = SocketAddr::new(IpAddr::from([10, 0, 1, 80]), port);
        self.net
            .client
            .enter(move || std::net::TcpStream::connect_timeout(&address, limit).map(|_| ()))
            .map_err(std::io::Error::other)?
    }

    /// Another client on the home network, signed in as a new service
    /// account that is (or is not) in the Engineering group.
    pub fn add_client(&self, name: &str, in_group: bool) -> Result<ExtraClient> {
        self.add_client_with(name, in_group, None)
    }

    /// Like [`Demo::add_client`]; with `resolvectl`, the client drives that
    /// program as if systemd-resolved managed DNS (`POSTERN_RESOLVECTL`)
    /// instead of taking a resolv.conf over.
    pub fn add_client_with(
        &self,
        name: &str,
        in_group: bool,
        resolvectl: Option<&Path>,
    ) -> Result<ExtraClient> {
        let number = 20 + self.net.lab.namespaces().len() as u8 % 200;
        let host = self.net.lab.add_host(name)?;
        self.net
            .lab
            .connect(&host, &self.net.home, &[&format!("192.168.1.{number}/24")])?;
        let home_lan = self
            .net
            .nat_home
            .lan
            .ipv4()
            .ok_or_else(|| invalid("nat-home has no LAN address"))?;
        host.set_default_route(home_lan)?;
        let actor = self.api_ok(
            "POST",
            "/api/v1/actors",
            Some(&format!(r#"{{"name":"{name}","role":"service_account"}}"#)),
        )?;
        let actor_id = json_field(&actor, "id").ok_or_else(|| invalid("no actor id"))?;
        if in_group {
            let members = self.api_ok(
                "GET",
                &format!("/api/v1/groups/{}/members", self.setup.group_id),
                None,
            )?;
            let mut ids: Vec<serde_json::Value> = json_items(&members)
                .iter()
                .filter_map(|m| m.get("id").cloned())
                .collect();
            ids.push(actor_id.clone().into());
            let body = serde_json::json!({ "actor_ids": ids }).to_string();
            self.api_ok(
                "PUT",
                &format!("/api/v1/groups/{}/members", self.setup.group_id),
                Some(&body),
            )?;
        }
        let token = self.api_ok(
            "POST",
            &format!("/api/v1/actors/{actor_id}/tokens"),
            Some("{}"),
        )?;
        let token = json_field(&token, "token").ok_or_else(|| invalid("no client token"))?;
        let socket = self.data.join(format!("{name}.sock"));
        let resolv_conf = host.set_resolv_conf(&format!(
            "nameserver {}\n",
            PUBLIC_DNS.trim_end_matches(":53")
        ))?;
        let state = self.data.join(name);
        let url = format!("https://{PORTAL}");
        let mut args = vec![
            "client".to_string(),
            "up".into(),
            "--portal".into(),
            url,
            self.pki.ca_arg(),
            token_file_arg(&self.data.join(format!("{name}.token")), &token)?,
            "--name".into(),
            name.into(),
            "--state-dir".into(),
            state.to_string_lossy().into_owned(),
            "--status-socket".into(),
            socket.to_string_lossy().into_owned(),
        ];
        if resolvectl.is_none() {
            args.push("--resolv-conf".into());
            args.push(resolv_conf.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = self.command(&host, &args);
        if let Some(program) = resolvectl {
            command.env("POSTERN_RESOLVECTL", program);
        }
        let process = host.spawn(command)?;
        Ok(ExtraClient {
            host,
            process,
            socket,
        })
    }

    /// Kills gateway `n` (0-based) with SIGKILL.
    pub fn kill_gateway(&mut self, n: usize) -> Result<()> {
        if let Some(mut process) = self.gateway_processes.get_mut(n).and_then(Option::take) {
            process.kill()?;
        }
        Ok(())
    }

    /// Stops gateway `n` gracefully (SIGTERM) and waits for it to exit;
    /// returns its log.
    pub fn stop_gateway(&mut self, n: usize) -> Result<String> {
        let Some(mut process) = self.gateway_processes.get_mut(n).and_then(Option::take) else {
            return Err(invalid(format!("gateway {n} is not running")));
        };
        process.signal(nix::sys::signal::Signal::SIGTERM)?;
        if process.wait_timeout(Duration::from_secs(5))?.is_none() {
            return Err(invalid("the gateway did not stop within 5 s of SIGTERM"));
        }
        Ok(process.stderr())
    }

    /// Starts the portal on the demo's database and waits for its API.
    fn spawn_portal(&self) -> Result<LabProcess> {
        let database = self.database();
        let command = self.command(
            &self.net.portal,
            &[
                "portal",
                "--database",
                &database,
                "--listen",
                // With IPv6, `[::]` serves both families.
                if self.net.ipv6 == Ipv6Internet::Off {
                    PORTAL
                } else {
                    "[::]:8080"
                },
                "--tls-cert",
                &self.pki.portal.certificate.to_string_lossy(),
                "--tls-key",
                &self.pki.portal.key.to_string_lossy(),
                "--metrics",
                "198.18.0.2:9100",
            ],
        );
        let mut command = command;
        if let Some(url) = &self.external_url {
            command.args(["--external-url", url]);
        }
        let process = self.net.portal.spawn(command)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.api("GET", "/api/v1/sites", None).map(|r| r.status) != Ok(200) {
            if Instant::now() > deadline {
                return Err(invalid(format!(
                    "the portal did not come up; its log:\n{}",
                    process.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    /// Starts the portal again after [`Demo::kill_portal`] (same database).
    pub fn restart_portal(&mut self) -> Result<()> {
        let portal = self.spawn_portal()?;
        if let Some(slot) = self.processes.first_mut() {
            *slot = portal;
        }
        Ok(())
    }

    /// Stops the client gracefully (SIGTERM) and waits for it to exit.
    pub fn stop_client(&mut self) -> Result<String> {
        let Some(mut process) = self.client_process.take() else {
            return Err(invalid("the client is not running"));
        };
        process.signal(nix::sys::signal::Signal::SIGTERM)?;
        if process.wait_timeout(Duration::from_secs(5))?.is_none() {
            return Err(invalid("the client did not stop within 5 s of SIGTERM"));
        }
        Ok(process.stderr())
    }

    /// Stops the portal (SIGKILL): the data plane must not notice.
    pub fn kill_portal(&mut self) -> Result<()> {
        if let Some(portal) = self.processes.first_mut() {
            portal.kill()?;
        }
        Ok(())
    }

    /// The client moves to another address on its network: its NAT maps it
    /// to a new public port, as after changing networks.
    pub fn roam_client(&self, address: &str) -> Result<()> {
        let client = &self.net.client;
        client.ip(&["addr", "flush", "dev", "eth0"])?;
        client.ip(&["addr", "add", address, "dev", "eth0"])?;
        let home_lan = self
            .net
            .nat_home
            .lan
            .ipv4()
            .ok_or_else(|| invalid("nat-home has no LAN address"))?;
        client.set_default_route(home_lan)?;
        Ok(())
    }

    /// A second network the client can move to, as a laptop goes from home
    /// to a cafe: its own switch and NAT router (`kind`) on the internet
    /// segment (198.18.0.30, LAN 172.16.5.0/24), and a second client
    /// interface on it, down until [`Demo::move_client_to`].
    pub fn add_cafe(&self, kind: NatKind) -> Result<Cafe> {
        let lab = &self.net.lab;
        let internet = &self.net.internet;
        let lan = lab.add_switch("cafe")?;
        let router = lab.add_nat_router(
            "nat-cafe",
            internet,
            "198.18.0.30/24",
            &lan,
            "172.16.5.1/24",
            kind,
        )?;
        self.net.route_to_sites(&router.host)?;
        let link = lab.connect(&self.net.client, &lan, &[])?;
        self.net
            .client
            .ip(&["link", "set", "dev", &link.name, "down"])?;
        Ok(Cafe { router, link })
    }

    /// The client leaves home for the cafe: its home link goes down (the
    /// laptop left the Wi-Fi), the cafe's comes up with 172.16.5.10 and the
    /// default route through the cafe's router.
    pub fn move_client_to(&self, cafe: &Cafe) -> Result<()> {
        let client = &self.net.client;
        client.ip(&["link", "set", "dev", CLIENT_HOME_LINK, "down"])?;
        client.ip(&["link", "set", "dev", &cafe.link.name, "up"])?;
        client.ip(&["addr", "replace", "172.16.5.10/24", "dev", &cafe.link.name])?;
        let via = cafe
            .router
            .lan
            .ipv4()
            .ok_or_else(|| invalid("nat-cafe has no LAN address"))?;
        client.set_default_route(via)
    }

    /// The cafe's link comes up as well, as a second way out (a phone
    /// tethered next to the Wi-Fi): its address and a default route that
    /// loses to home's (metric 600) while home's link is up.
    pub fn add_backup_link(&self, cafe: &Cafe) -> Result<()> {
        let client = &self.net.client;
        client.ip(&["link", "set", "dev", &cafe.link.name, "up"])?;
        client.ip(&["addr", "replace", "172.16.5.10/24", "dev", &cafe.link.name])?;
        let via = cafe
            .router
            .lan
            .ipv4()
            .ok_or_else(|| invalid("nat-cafe has no LAN address"))?
            .to_string();
        client.ip(&["route", "replace", "default", "via", &via, "metric", "600"])?;
        Ok(())
    }

    /// The client's home link goes down (the Wi-Fi dropped).
    pub fn drop_home_link(&self) -> Result<()> {
        self.net
            .client
            .ip(&["link", "set", "dev", CLIENT_HOME_LINK, "down"])?;
        Ok(())
    }

    /// And back home: the cafe's link goes down, home's comes up with its
    /// address and route as before.
    pub fn move_client_home(&self, cafe: &Cafe) -> Result<()> {
        let client = &self.net.client;
        client.ip(&["link", "set", "dev", &cafe.link.name, "down"])?;
        client.ip(&["link", "set", "dev", CLIENT_HOME_LINK, "up"])?;
        let via = self
            .net
            .nat_home
            .lan
            .ipv4()
            .ok_or_else(|| invalid("nat-home has no LAN address"))?;
        client.set_default_route(via)
    }

    /// Index of the gateway the client's tunnel goes to, from the client's
    /// status and the portal's gateway list.
    pub fn serving_gateway(&self) -> Result<usize> {
        let line = self.web_status().unwrap_or_default();
        let gateway_id = line["gateway"]
            .as_str()
            .ok_or_else(|| invalid(format!("no gateway in the status: {line}")))?
            .to_string();
        let gateways = self.api_ok(
            "GET",
            &format!("/api/v1/sites/{}/gateways", self.setup.site_id),
            None,
        )?;
        let name = json_items(&gateways)
            .into_iter()
            .find(|g| g["id"].as_str() == Some(gateway_id.as_str()))
            .and_then(|g| g["name"].as_str().map(str::to_string))
            .ok_or_else(|| invalid(format!("gateway {gateway_id} is not listed: {gateways}")))?;
        self.net
            .gateways
            .iter()
            .position(|h| h.name() == name)
            .ok_or_else(|| invalid(format!("no lab host runs gateway {name}")))
    }

    /// The Prometheus text a daemon serves on `address` inside `host`.
    pub fn scrape(&self, host: &Host, address: &str) -> Result<String> {
        let address: SocketAddr = address
            .parse()
            .map_err(|_| invalid(format!("{address} is not a socket address")))?;
        let response = host.enter(move || {
            http::request(
                address,
                "GET",
                "/metrics",
                None,
                None,
                Duration::from_secs(5),
            )
        })??;
        if response.status != 200 {
            return Err(invalid(format!(
                "{address}/metrics answered {}",
                response.status
            )));
        }
        Ok(response.text())
    }

    /// The client's path to its gateway now: direct, relayed, connecting, or
    /// none.
    pub fn path(&self) -> String {
        self.web_status()
            .and_then(|line| line["path"].as_str().map(str::to_string))
            .unwrap_or_else(|| "none".into())
    }

    /// A field of the client's path to its gateway as its status shows
    /// it: `peer` (the far end: the gateway's address, or a relayed one),
    /// `relay` (the relay a relayed path goes through); "none" if absent.
    pub fn path_detail(&self, field: &str) -> String {
        self.web_status()
            .and_then(|line| line[field].as_str().map(str::to_string))
            .unwrap_or_else(|| "none".into())
    }

    /// The client's status line of the web server resource.
    fn web_status(&self) -> Option<serde_json::Value> {
        let status = self.client_status().ok()?;
        let value: serde_json::Value = serde_json::from_str(&status).ok()?;
        value["resources"]
            .as_array()?
            .iter()
            .find(|line| line["id"].as_str() == Some(self.setup.resource_id.as_str()))
            .cloned()
    }

    /// Waits until the client's path is `expected` (ICE may nominate the
    /// relayed pair first and move to a direct one when its checks come
    /// through); how long that took, or the last path seen.
    pub fn wait_for_path(
        &self,
        expected: &str,
        limit: Duration,
    ) -> std::result::Result<Duration, String> {
        let started = Instant::now();
        loop {
            let path = self.path();
            if path == expected {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(path);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Log lines at WARN or ERROR from every daemon.
    pub fn problems(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// The relay's process (the second of [`Demo::processes`], after the
    /// portal), for its PID and CPU time.
    pub fn relay_process(&self) -> Option<&LabProcess> {
        self.processes.get(1)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .chain(self.gateway_processes.iter().flatten())
            .chain(self.client_process.iter())
            .map(|p| format!("--- {} ---\n{}", p.label(), p.stderr()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A client added by [`Demo::add_client`].
pub struct ExtraClient {
    pub host: Host,
    pub process: LabProcess,
    pub socket: PathBuf,
}

//! The real role machines on the simulated network: a client
//! (`ClientTunnel`, host 0) and the gateways of one site (`GatewayTunnel`,
//! hosts 1..) behind NATs, the relay (the real TURN core), the stub portal,
//! and the site behind the gateways: a resource host that echoes every
//! packet and a DNS server the gateways resolve with. No glue of the
//! daemons is copied here: the world only carries what the roles emit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use jiff::{SignedDuration, Timestamp};
use postern_model::protocol::{RelayInfo, ResourceDescription};
use postern_model::{
    Filter, PortRange, Protocol, PublicKey, RelayId, ResourceAddress, ResourceId, SiteId,
};
use postern_tunnel::client::{ClientConfig, ClientTunnel};
use postern_tunnel::effect::{Effect, Input, LookupId, QueryId, Resolution};
use postern_tunnel::gateway::GatewayTunnel;
use postern_tunnel::role::Role;
use postern_tunnel::wireguard::public_key;

use super::net::{Nat, Net, RELAY_IP};
use super::portal::{Portal, gateway_id, wire};

pub const CLIENT: usize = 0;
/// The site's web servers' subnet, and one of them.
pub const WEB: ResourceId = ResourceId::from_u128(100);
pub const WEB_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
/// The gateways' own address on the site's network.
pub const GATEWAY_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The site's DNS server answers after this long.
pub const RESOLVER_DELAY: Duration = Duration::from_millis(20);

/// The DNS server of the site: names, their addresses and TTL.
#[derive(Default)]
pub struct Site {
    pub records: HashMap<String, (Vec<IpAddr>, Duration)>,
    /// Lookups the gateways asked for: (when, host, name).
    pub lookups: Vec<(Instant, usize, String)>,
    /// The site's resolvers answer nothing passed through to them.
    pub resolvers_silent: bool,
    queue: Vec<(Instant, usize, Input)>,
}

impl Site {
    fn resolve(&mut self, host: usize, lookup: LookupId, name: String, now: Instant) {
        let key = name.trim_end_matches('.').to_string();
        let result = match self.records.get(&key) {
            Some((addresses, ttl)) => Ok(Resolution {
                addresses: addresses.clone(),
                valid_for: *ttl,
            }),
            None => Err("NXDOMAIN".to_string()),
        };
        self.lookups.push((now, host, key));
        self.queue.push((
            now + RESOLVER_DELAY,
            host,
            Input::Resolved { lookup, result },
        ));
    }

    /// A query passed through: answered with the question and no records,
    /// flagged authoritative so a test can tell it came from here.
    fn ask(&mut self, host: usize, lookup: LookupId, query: &[u8], now: Instant) {
        let answer = Message::from_vec(query)
            .ok()
            .filter(|_| !self.resolvers_silent)
            .and_then(|query| {
                let mut answer = Message::error_msg(
                    query.metadata.id,
                    OpCode::Query,
                    hickory_proto::op::ResponseCode::NoError,
                );
                answer.metadata.authoritative = true;
                answer.queries = query.queries;
                answer.to_vec().ok()
            });
        self.queue.push((
            now + RESOLVER_DELAY,
            host,
            Input::ResolverAnswer { lookup, answer },
        ));
    }

    fn due(&mut self, now: Instant) -> Vec<(usize, Input)> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.queue = later;
        due.into_iter().map(|(_, h, i)| (h, i)).collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.iter().map(|(at, _, _)| *at).min()
    }
}

pub struct World {
    pub net: Net,
    pub client: ClientTunnel,
    /// Host `h`'s gateway is `gateways[h - 1]`.
    pub gateways: Vec<GatewayTunnel>,
    pub portal: Portal,
    pub site: Site,
    /// What reached the resource host, by gateway host: (when, packet).
    pub forwarded: Vec<Vec<(Instant, Vec<u8>)>>,
    /// What reached the client's apps (replies, ICMP): (when, packet).
    pub at_app: Vec<(Instant, Vec<u8>)>,
    /// The client's answers to its apps' DNS queries.
    pub answers: HashMap<QueryId, Option<Vec<u8>>>,
    /// Queries the client sent upstream (not Postern's names).
    pub upstream: Vec<QueryId>,
    /// Everything else the client asked of its shell, in order.
    pub client_effects: Vec<Effect>,
    /// What each gateway asked of its shell (interface, masquerade...).
    pub gateway_effects: Vec<Vec<Effect>>,
    /// Whether the resource host echoes what it gets.
    pub echo: bool,
    /// The client's portal channel is down: what it says is lost.
    pub client_channel_down: bool,
    buffer: Vec<u8>,
    reply_buffer: Vec<u8>,
    next_query: u64,
    wall: Timestamp,
}

fn relay_info() -> RelayInfo {
    let config = Net::relay_config(uuid::Uuid::from_u128(1));
    RelayInfo {
        id: RelayId::from_u128(77),
        addresses: vec![config.server],
        username: config.username,
        password: config.password,
        expires_at: Timestamp::now() + SignedDuration::from_hours(1),
        tls: None,
    }
}

impl World {
    /// A client behind `nats[0]` and a gateway behind each further NAT,
    /// with `resources` offered to the client; everyone connected to the
    /// portal.
    pub fn new(nats: &[Nat], resources: Vec<ResourceDescription>) -> World {
        let net = Net::new(nats);
        let now = net.now;
        let secrets: Vec<[u8; 32]> = (0..nats.len()).map(|n| [n as u8 + 1; 32]).collect();
        let keys = secrets.iter().map(|s| PublicKey(public_key(*s))).collect();
        let mut portal = Portal::new(nats.len(), keys, vec![relay_info()]);
        for resource in resources {
            portal.resources.insert(resource.id, resource);
        }
        let client = ClientTunnel::new(
            &[Net::inside(CLIENT)],
            secrets[CLIENT],
            7,
            ClientConfig::default(),
        );
        let gateways = (1..nats.len())
            .map(|h| {
                let mut gateway = GatewayTunnel::new(&[Net::inside(h)], secrets[h], h as u64 + 7);
                gateway.handle_input(Input::HostAddresses(vec![IpAddr::V4(GATEWAY_HOST)]), now);
                gateway
            })
            .collect();
        let mut world = World {
            net,
            client,
            gateways,
            portal,
            site: Site::default(),
            forwarded: vec![Vec::new(); nats.len()],
            at_app: Vec::new(),
            answers: HashMap::new(),
            upstream: Vec::new(),
            client_effects: Vec::new(),
            gateway_effects: vec![Vec::new(); nats.len()],
            echo: true,
            client_channel_down: false,
            buffer: vec![0; 65_536],
            reply_buffer: vec![0; 65_536],
            next_query: 0,
            wall: Timestamp::now(),
        };
        world.portal.client_init(now);
        for host in 1..nats.len() {
            world.portal.gateway_init(host, now);
        }
        world.run_for(Duration::from_millis(100));
        world
    }

    pub fn now(&self) -> Instant {
        self.net.now
    }

    fn wall_at(&self, now: Instant) -> Timestamp {
        let elapsed = now.saturating_duration_since(self.net.started);
        self.wall + SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::ZERO)
    }

    pub fn gateway(&mut self, host: usize) -> &mut GatewayTunnel {
        &mut self.gateways[host - 1]
    }

    /// An app on the client sends a packet into the TUN.
    pub fn app_sends(&mut self, packet: &[u8]) {
        let now = self.net.now;
        let mut packet = packet.to_vec();
        if let Some((destination, n)) = self.client.encapsulate(&mut packet, now, &mut self.buffer)
        {
            self.net
                .send(CLIENT, destination, self.buffer[..n].to_vec());
        }
        self.collect(now);
    }

    /// An app asks the client's stub about `name`.
    pub fn app_asks(&mut self, name: &str, kind: RecordType) -> QueryId {
        let mut message = Message::new(
            0x4242 + self.next_query as u16,
            MessageType::Query,
            OpCode::Query,
        );
        message.metadata.recursion_desired = true;
        message
            .queries
            .push(Query::query(Name::from_ascii(name).expect("a name"), kind));
        self.app_asks_bytes(message.to_vec().expect("a query"))
    }

    pub fn app_asks_bytes(&mut self, bytes: Vec<u8>) -> QueryId {
        self.next_query += 1;
        let query = QueryId(self.next_query);
        let now = self.net.now;
        self.client
            .handle_input(Input::DnsQuery { query, bytes }, now);
        self.collect(now);
        query
    }

    /// The stub's answer to `query`, parsed, once it came.
    pub fn answer(&self, query: QueryId) -> Option<Message> {
        let bytes = self.answers.get(&query)?.as_ref()?;
        Message::from_vec(bytes).ok()
    }

    /// Whatever the roles queued goes where it goes.
    fn collect(&mut self, now: Instant) {
        while let Some(transmit) = self.client.poll_transmit() {
            self.net.send_transmit(CLIENT, transmit);
        }
        while let Some(packet) = self.client.poll_tun_packet() {
            self.at_app.push((now, packet));
        }
        while let Some(message) = self.client.poll_portal() {
            if !self.client_channel_down {
                self.portal.client_says(wire(message), now);
            }
        }
        while let Some(effect) = self.client.poll_effect() {
            match effect {
                Effect::DnsAnswer { query, answer } => {
                    self.answers.insert(query, answer);
                }
                Effect::ForwardDns { query, .. } => self.upstream.push(query),
                other => self.client_effects.push(other),
            }
        }
        for host in 1..self.net.down.len() {
            let gateway = &mut self.gateways[host - 1];
            while let Some(transmit) = gateway.poll_transmit() {
                self.net.send_transmit(host, transmit);
            }
            while let Some(message) = gateway.poll_portal() {
                self.portal.gateway_says(host, wire(message), now);
            }
            while let Some(effect) = gateway.poll_effect() {
                match effect {
                    Effect::Resolve { lookup, name } => self.site.resolve(host, lookup, name, now),
                    Effect::AskResolvers { lookup, query } => {
                        self.site.ask(host, lookup, &query, now)
                    }
                    other => self.gateway_effects[host].push(other),
                }
            }
        }
    }

    /// A host on the site sends `packet` into gateway `host`'s TUN (as the
    /// kernel would route it there).
    pub fn site_sends(&mut self, host: usize, packet: &[u8]) {
        let now = self.net.now;
        let mut packet = packet.to_vec();
        let gateway = &mut self.gateways[host - 1];
        if let Some((destination, n)) =
            gateway.encapsulate(&mut packet, now, &mut self.reply_buffer)
        {
            self.net
                .send(host, destination, self.reply_buffer[..n].to_vec());
        }
        self.collect(now);
    }

    /// What the resource host does with a packet a gateway forwarded: it
    /// answers it (source and destination swapped), through that gateway.
    fn site_receives(&mut self, host: usize, packet: Vec<u8>, now: Instant) {
        self.forwarded[host].push((now, packet.clone()));
        if !self.echo {
            return;
        }
        let mut reply = reply_to(&packet);
        let gateway = &mut self.gateways[host - 1];
        if let Some((destination, n)) = gateway.encapsulate(&mut reply, now, &mut self.reply_buffer)
        {
            self.net
                .send(host, destination, self.reply_buffer[..n].to_vec());
        }
    }

    pub fn step(&mut self) {
        self.step_within(None);
    }

    /// One step, never past `end`: the roles wake only when something is
    /// due (no periodic tick), so the next deadline may lie far beyond
    /// the time a test means to run for.
    fn step_within(&mut self, end: Option<Instant>) {
        let now = self.net.now;
        let wall = self.wall_at(now);
        let (to_client, to_gateways) = self.portal.due(now);
        for message in to_client {
            self.client.handle_portal(wire(message), now, wall);
        }
        for (host, message) in to_gateways {
            if !self.net.down[host] {
                self.gateways[host - 1].handle_portal(wire(message), now, wall);
            }
        }
        for (host, input) in self.site.due(now) {
            if !self.net.down[host] {
                self.gateways[host - 1].handle_input(input, now);
            }
        }
        for (host, source, payload) in self.net.due() {
            if host == CLIENT {
                if let Some(n) = self
                    .client
                    .decapsulate(source, &payload, now, &mut self.buffer)
                {
                    self.at_app.push((now, self.buffer[..n].to_vec()));
                }
            } else if let Some(n) =
                self.gateways[host - 1].decapsulate(source, &payload, now, &mut self.buffer)
            {
                let packet = self.buffer[..n].to_vec();
                self.site_receives(host, packet, now);
            }
        }
        self.client.handle_timeout(now);
        for host in 1..self.net.down.len() {
            if !self.net.down[host] {
                self.gateways[host - 1].handle_timeout(now);
            }
        }
        self.collect(now);
        let gateways = self
            .gateways
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !self.net.down[i + 1])
            .filter_map(|(_, g)| g.poll_timeout());
        let next = [
            self.client.poll_timeout(),
            self.net.next_arrival(),
            self.portal.next_due(),
            self.site.next_due(),
        ]
        .into_iter()
        .flatten()
        .chain(gateways)
        .min()
        .map(|next| end.map_or(next, |end| next.min(end)));
        self.net.advance(next);
    }

    pub fn run_for(&mut self, duration: Duration) {
        let end = self.net.now + duration;
        while self.net.now < end {
            self.step_within(Some(end));
        }
    }

    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&World) -> bool) -> bool {
        let end = self.net.now + limit;
        while self.net.now < end {
            self.step_within(Some(end));
            if done(self) {
                return true;
            }
        }
        false
    }

    pub fn forwarded_total(&self) -> usize {
        self.forwarded.iter().map(Vec::len).sum()
    }

    /// A gateway process restarts: a new key, nothing remembered; it
    /// reconnects to the portal, which voids its grants.
    pub fn restart_gateway(&mut self, host: usize) {
        let now = self.net.now;
        let secret = [host as u8 + 100; 32];
        self.gateways[host - 1] =
            GatewayTunnel::new(&[Net::inside(host)], secret, host as u64 + 70);
        self.gateways[host - 1]
            .handle_input(Input::HostAddresses(vec![IpAddr::V4(GATEWAY_HOST)]), now);
        self.portal
            .gateway_restarted(host, PublicKey(public_key(secret)), now);
    }

    /// The portal's view of a gateway and the network agree: it is gone.
    pub fn kill_gateway(&mut self, host: usize) {
        self.net.down[host] = true;
        self.portal.online[host] = false;
    }

    pub fn revive_gateway(&mut self, host: usize) {
        if self.net.down[host] {
            self.net.down[host] = false;
            self.portal.online[host] = true;
            // A killed process comes back as a new one.
            self.restart_gateway(host);
        }
    }

    /// The gateway `host` is for the client now, if any.
    pub fn granted_gateway(&self) -> Option<usize> {
        self.portal.grants.values().next().copied()
    }

    pub fn gateway_id(host: usize) -> postern_model::GatewayId {
        gateway_id(host)
    }
}

/// The same packet coming back from the resource.
pub fn reply_to(packet: &[u8]) -> Vec<u8> {
    let mut reply = packet.to_vec();
    // IPv4 only: the site's tests speak IPv4.
    if packet.first().map(|b| b >> 4) == Some(4) {
        reply[12..16].copy_from_slice(&packet[16..20]);
        reply[16..20].copy_from_slice(&packet[12..16]);
        if packet[9] == 6 || packet[9] == 17 {
            reply[20..22].copy_from_slice(&packet[22..24]);
            reply[22..24].copy_from_slice(&packet[20..22]);
        }
    }
    reply
}

/// A TCP packet from `source` to `destination`:`port`, with `tag` in its
/// payload (checksums are left zero: nothing here checks them).
pub fn tcp(source: Ipv4Addr, destination: Ipv4Addr, port: u16, tag: u8) -> Vec<u8> {
    let mut packet = vec![0u8; 44];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&44u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 6;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    packet[20..22].copy_from_slice(&40000u16.to_be_bytes());
    packet[22..24].copy_from_slice(&port.to_be_bytes());
    packet[43] = tag;
    packet
}

/// The web servers' subnet as a resource, its filter opening one TCP port.
pub fn web_on(port: u16) -> ResourceDescription {
    ResourceDescription {
        id: WEB,
        name: "web".into(),
        address: ResourceAddress::Cidr("10.0.0.0/24".parse().expect("a prefix")),
        address_description: None,
        filters: vec![Filter {
            protocol: Protocol::Tcp,
            ports: Some(PortRange {
                start: port,
                end: port,
            }),
        }],
        site_id: SiteId::from_u128(1),
    }
}

/// Whether the world's relay is where `address` points.
pub fn is_relay(address: IpAddr) -> bool {
    address == IpAddr::V4(RELAY_IP)
}

//! How the gateway core scales with its clients (issue 23: 5,000 authorized
//! clients on one gateway, with peer lookup, timers and memory that do not
//! grow per packet with the number of peers).
//!
//! For each N (10, 1,000 and 5,000 unless given) one `GatewayTunnel` gets N
//! clients the way real ones come: the portal authorizes each (its key,
//! addresses, a resource), candidates go both ways, ICE checks run and each
//! client does a real WireGuard handshake (boringtun, through
//! [`WireguardPeer`]) on a simulated network and a virtual clock. Then
//! random clients send steady UDP traffic to the resource and the resource
//! answers each packet. Only the gateway's own calls are timed, never the
//! simulated clients or network. Printed per N:
//!
//! - CPU per packet: `decapsulate` (client -> resource) and `encapsulate`
//!   (resource -> client), the median of 1 ms batches (the mean too), and
//!   `poll_timeout`, which the device loop calls once per turn (once per
//!   packet when packets come one at a time);
//! - timers: `handle_timeout` calls per virtual second (the loop wakes at
//!   each deadline, rounded up to tokio's millisecond), CPU per call and
//!   per peer and second;
//! - memory: heap bytes per peer (a counting allocator: what dropping the
//!   gateway frees), heap allocations per packet, and how the whole
//!   process's heap moved over the measured traffic (every flow is opened
//!   in the warm-up).
//!
//! `cargo run --release -p postern-tunnel --example gateway-peers [N...]`;
//! `POSTERN_BENCH_RATE` sets packets per virtual second each way (20,000),
//! `POSTERN_BENCH_SECONDS` the measured virtual seconds (5),
//! `POSTERN_BENCH_WARMUP` the virtual seconds of traffic before (1, plus
//! what opening every flow takes; past 30 s the gateway's memory of STUN
//! checks it sent is full, and the heap holds still).

// The counting allocator is the one unsafe thing here.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, GatewayToPortal, IceCredentials, Interface, PairIce, Peer, PortalToGateway,
    ResourceDescription,
};
use postern_model::{ClientId, PresharedKey, PublicKey, ResourceAddress, ResourceId, SiteId};
use postern_tunnel::gateway::GatewayTunnel;
use postern_tunnel::ice::{IceSession, RelayRtt, is_stun};
use postern_tunnel::role::Role;
use postern_tunnel::wireguard::{Action, WireguardPeer, public_key};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes straight to the system allocator; only counters
// are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(pointer, layout, size) };
        if !moved.is_null() {
            LIVE.fetch_add(size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const GATEWAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 51820);
const GATEWAY_SECRET: [u8; 32] = [7; 32];
const RESOURCE: ResourceId = ResourceId::from_u128(1);
/// The size of the test packets (IPv4 + UDP + payload).
const PACKET: usize = 128;
/// Room for one packet in a batch.
const SLOT: usize = 2048;
/// The clients' own WireGuard timer step (untimed).
const CLIENT_TICK: Duration = Duration::from_millis(200);
/// Flows each client keeps open (source ports).
const FLOWS_PER_CLIENT: u64 = 4;

struct Client {
    address: SocketAddr,
    tunnel: Ipv4Addr,
    ice: IceSession,
    wireguard: WireguardPeer,
    next_tick: Instant,
    wake: Option<Instant>,
    replies: u64,
    /// The handshake was answered; until then a new initiation goes out
    /// every second (an answer under load is a cookie, which boringtun
    /// takes without retrying before its own 5 s).
    established: bool,
    initiated: Instant,
}

/// CPU spent in the gateway's calls while measuring.
#[derive(Default)]
struct Spent {
    decapsulate: Duration,
    decapsulated: u64,
    decapsulate_allocations: u64,
    /// ns per packet of each batch: the median shrugs off the moments
    /// another process had the core.
    decapsulate_batches: Vec<f64>,
    forwarded: u64,
    encapsulate: Duration,
    encapsulated: u64,
    encapsulate_allocations: u64,
    encapsulate_batches: Vec<f64>,
    sealed: u64,
    poll: Duration,
    polls: u64,
    timeout: Duration,
    timeouts: u64,
    /// The longest single `handle_timeout`.
    longest_timeout: Duration,
    /// Everything else of the gateway's: handshakes, STUN, keepalives.
    other: Duration,
}

struct World {
    gateway: GatewayTunnel,
    clients: Vec<Client>,
    by_address: HashMap<SocketAddr, usize>,
    by_id: HashMap<ClientId, usize>,
    start: Instant,
    now: Instant,
    /// Datagrams in flight (no latency): from, to, bytes.
    net: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    wakes: BinaryHeap<Reverse<(Instant, usize)>>,
    scratch: Vec<u8>,
    slots: Vec<u8>,
    spent: Spent,
    measuring: bool,
    rng: u64,
    /// The last time the gateway's timers ran (the loop never spins).
    last_timeout: Option<Instant>,
    /// Flows opened so far, client by client.
    opened: u64,
}

fn client_address(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from_bits(Ipv4Addr::new(198, 18, 0, 1).to_bits() + i as u32);
    SocketAddr::new(IpAddr::V4(ip), 40000)
}

fn client_tunnel(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::from_bits(Ipv4Addr::new(100, 64, 1, 0).to_bits() + i as u32);
    let v6 = Ipv6Addr::from_bits(
        Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 1, 0).to_bits() + i as u128,
    );
    (v4, v6)
}

fn client_secret(i: usize) -> [u8; 32] {
    let mut secret = [0x11u8; 32];
    // Past byte 0, whose low bits X25519 clears.
    secret[1..9].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    secret
}

fn psk(i: usize) -> [u8; 32] {
    let mut key = [0x22u8; 32];
    key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    key
}

fn pair_ice(i: usize) -> PairIce {
    let side = |tag: &str| IceCredentials {
        username_fragment: format!("{tag}{i}uf"),
        password: format!("{tag}{i}-password-0123456789abcdef"),
    };
    PairIce {
        client: side("c"),
        gateway: side("g"),
    }
}

fn resource() -> ResourceDescription {
    ResourceDescription {
        id: RESOURCE,
        name: "site".into(),
        address: ResourceAddress::Cidr("10.0.0.0/8".parse().expect("a prefix")),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    }
}

/// A UDP packet from `source` to `destination` of [`PACKET`] bytes.
fn udp(into: &mut [u8], source: (Ipv4Addr, u16), destination: (Ipv4Addr, u16)) {
    into[..PACKET].fill(0);
    into[0] = 0x45;
    into[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    into[8] = 64;
    into[9] = 17;
    into[12..16].copy_from_slice(&source.0.octets());
    into[16..20].copy_from_slice(&destination.0.octets());
    into[20..22].copy_from_slice(&source.1.to_be_bytes());
    into[22..24].copy_from_slice(&destination.1.to_be_bytes());
    into[24..26].copy_from_slice(&((PACKET - 20) as u16).to_be_bytes());
}

impl World {
    fn new(now: Instant) -> World {
        let mut gateway = GatewayTunnel::new(&[GATEWAY], GATEWAY_SECRET, 1);
        gateway.handle_portal(
            PortalToGateway::Init {
                interface: Interface {
                    ipv4: Ipv4Addr::new(100, 64, 0, 1),
                    ipv6: Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, 1),
                    dns_upstreams: vec![],
                    search_domain: None,
                },
                relays: vec![],
                authorizations: vec![],
            },
            now,
            Timestamp::now(),
        );
        World {
            gateway,
            clients: Vec::new(),
            by_address: HashMap::new(),
            by_id: HashMap::new(),
            start: now,
            now,
            net: VecDeque::new(),
            wakes: BinaryHeap::new(),
            scratch: vec![0; SLOT],
            slots: Vec::new(),
            spent: Spent::default(),
            measuring: false,
            rng: 0x9e37_79b9_7f4a_7c15,
            last_timeout: None,
            opened: 0,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Times one of the gateway's slow-path calls.
    fn other<T>(&mut self, call: impl FnOnce(&mut GatewayTunnel, Instant) -> T) -> T {
        let started = Instant::now();
        let result = call(&mut self.gateway, self.now);
        if self.measuring {
            self.spent.other += started.elapsed();
        }
        result
    }

    /// The portal authorizes client `i`, which then sends its candidate and
    /// starts its checks and handshake.
    fn add_client(&mut self, i: usize) {
        let id = ClientId::from_u128(i as u128 + 1);
        let (v4, v6) = client_tunnel(i);
        let ice = pair_ice(i);
        let authorization = Authorization {
            client: Peer {
                id,
                public_key: PublicKey(public_key(client_secret(i))),
                ipv4: v4,
                ipv6: v6,
            },
            resource: resource(),
            preshared_key: PresharedKey(psk(i)),
            ice: ice.clone(),
            expires_at: None,
        };
        let address = client_address(i);
        let mut session = IceSession::new(&ice.client, &ice.gateway, true, RelayRtt::default());
        let candidate = session
            .add_host(address)
            .expect("a host candidate")
            .expect("a new candidate");
        session.handle_timeout(self.now);
        let index = self.clients.len();
        self.clients.push(Client {
            address,
            tunnel: v4,
            ice: session,
            wireguard: WireguardPeer::new(
                client_secret(i),
                public_key(GATEWAY_SECRET),
                psk(i),
                i as u32 + 1,
            ),
            next_tick: self.now,
            wake: None,
            replies: 0,
            established: false,
            initiated: self.now,
        });
        self.by_address.insert(address, index);
        self.by_id.insert(id, index);
        let wall = Timestamp::now();
        self.other(|gateway, now| {
            gateway.handle_portal(
                PortalToGateway::Authorize {
                    reference: format!("r{i}"),
                    authorization: Box::new(authorization),
                },
                now,
                wall,
            )
        });
        self.drain_gateway();
        self.other(|gateway, now| {
            gateway.handle_portal(
                PortalToGateway::IceCandidates {
                    peer_id: id,
                    candidates: vec![candidate],
                },
                now,
                wall,
            )
        });
        self.drain_gateway();
        // The handshake starts with an empty packet (a keepalive once it is
        // done).
        let mut buffer = std::mem::take(&mut self.scratch);
        if let Ok(Action::Network(n)) =
            self.clients[index]
                .wireguard
                .send(&[], self.now, &mut buffer)
        {
            self.net.push_back((address, GATEWAY, buffer[..n].to_vec()));
        }
        self.scratch = buffer;
        self.client_ice(index);
        self.pump();
    }

    /// What the gateway has for the network and the portal.
    fn drain_gateway(&mut self) {
        while let Some(transmit) = self.gateway.poll_transmit() {
            self.net
                .push_back((GATEWAY, transmit.destination, transmit.payload));
        }
        while let Some(message) = self.gateway.poll_portal() {
            if let GatewayToPortal::IceCandidates {
                peer_id,
                candidates,
            } = message
                && let Some(&index) = self.by_id.get(&peer_id)
            {
                for candidate in candidates {
                    let _ = self.clients[index].ice.add_remote(&candidate);
                }
                self.client_ice(index);
            }
        }
        while self.gateway.poll_effect().is_some() {}
        while self.gateway.poll_tun_packet().is_some() {}
    }

    /// Client `index`'s ICE output onto the network, its next wake noted.
    fn client_ice(&mut self, index: usize) {
        let client = &mut self.clients[index];
        while let Some(transmit) = client.ice.poll_transmit() {
            self.net
                .push_back((transmit.source, transmit.destination, transmit.payload));
        }
        while client.ice.poll_event().is_some() {}
        let wake = client
            .ice
            .poll_timeout()
            .map_or(client.next_tick, |at| at.min(client.next_tick));
        if client.wake != Some(wake) {
            client.wake = Some(wake);
            self.wakes.push(Reverse((wake, index)));
        }
    }

    /// Delivers everything in flight, and what it makes the ends send.
    fn pump(&mut self) {
        while let Some((from, to, datagram)) = self.net.pop_front() {
            if to == GATEWAY {
                let mut out = std::mem::take(&mut self.scratch);
                // Only slow-path datagrams come this way (STUN, handshakes,
                // keepalives); data is timed in `traffic`.
                self.other(|gateway, now| gateway.decapsulate(from, &datagram, now, &mut out));
                self.scratch = out;
                self.drain_gateway();
            } else if let Some(&index) = self.by_address.get(&to) {
                self.client_receive(index, from, &datagram);
            }
        }
    }

    fn client_receive(&mut self, index: usize, from: SocketAddr, datagram: &[u8]) {
        let now = self.now;
        if is_stun(datagram) {
            let client = &mut self.clients[index];
            client.ice.handle_stun(now, from, client.address, datagram);
            self.client_ice(index);
            return;
        }
        let mut buffer = std::mem::take(&mut self.scratch);
        let client = &mut self.clients[index];
        let mut action = client
            .wireguard
            .receive(Some(from.ip()), datagram, now, &mut buffer);
        loop {
            match action {
                Ok(Action::Network(n)) => {
                    // The initiator answers a handshake response with a
                    // keepalive (or what it queued).
                    client.established = true;
                    self.net
                        .push_back((client.address, GATEWAY, buffer[..n].to_vec()));
                    action = client.wireguard.flush(&mut buffer);
                }
                Ok(Action::Tunnel(_)) => {
                    client.replies += 1;
                    break;
                }
                _ => break,
            }
        }
        self.scratch = buffer;
    }

    /// A client's timers: ICE checks, WireGuard keepalives and retries.
    fn client_timeout(&mut self, index: usize) {
        let now = self.now;
        let mut buffer = std::mem::take(&mut self.scratch);
        let client = &mut self.clients[index];
        client.wake = None;
        client.ice.handle_timeout(now);
        if now >= client.next_tick {
            client.next_tick = now + CLIENT_TICK;
            let action = if !client.established
                && now.saturating_duration_since(client.initiated) >= Duration::from_secs(1)
            {
                client.initiated = now;
                client.wireguard.probe(now, &mut buffer)
            } else {
                client.wireguard.tick(now, &mut buffer)
            };
            if let Ok(Action::Network(n)) = action {
                self.net
                    .push_back((client.address, GATEWAY, buffer[..n].to_vec()));
            }
        }
        self.scratch = buffer;
        self.client_ice(index);
    }

    /// `count` packets from random clients to the resource, and the
    /// resource's answer to each: the gateway's two calls timed apart.
    fn traffic(&mut self, count: usize) {
        let now = self.now;
        let mut datagrams = Vec::with_capacity(count);
        let mut packet = [0u8; PACKET];
        let mut buffer = std::mem::take(&mut self.scratch);
        for _ in 0..count {
            // Every client's flows are opened in turn first (the warm-up),
            // so the measured packets open none.
            let total = self.clients.len() as u64 * FLOWS_PER_CLIENT;
            let (index, flow) = if self.opened < total {
                self.opened += 1;
                (
                    ((self.opened - 1) / FLOWS_PER_CLIENT) as usize,
                    (self.opened - 1) % FLOWS_PER_CLIENT,
                )
            } else {
                (
                    (self.random() % self.clients.len() as u64) as usize,
                    self.random() % FLOWS_PER_CLIENT,
                )
            };
            let client = &mut self.clients[index];
            let target = Ipv4Addr::from_bits(
                Ipv4Addr::new(10, 1, 0, 0).to_bits() + (index as u32 % 4096) * 4 + flow as u32,
            );
            udp(
                &mut packet,
                (client.tunnel, 10_000 + flow as u16),
                (target, 7),
            );
            if let Ok(Action::Network(n)) = client.wireguard.send(&packet, now, &mut buffer) {
                datagrams.push((client.address, buffer[..n].to_vec()));
            }
        }
        self.scratch = buffer;
        self.slots.resize(count.max(1) * SLOT, 0);
        let mut lengths = vec![0usize; datagrams.len()];
        let allocations = ALLOCATIONS.load(Relaxed);
        let started = Instant::now();
        for (k, (source, datagram)) in datagrams.iter().enumerate() {
            let slot = &mut self.slots[k * SLOT..(k + 1) * SLOT];
            lengths[k] = self
                .gateway
                .decapsulate(*source, datagram, now, slot)
                .unwrap_or(0);
        }
        let spent = started.elapsed();
        let allocated = ALLOCATIONS.load(Relaxed) - allocations;
        if self.measuring {
            self.spent.decapsulate += spent;
            if !datagrams.is_empty() {
                self.spent
                    .decapsulate_batches
                    .push(spent.as_nanos() as f64 / datagrams.len() as f64);
            }
            self.spent.decapsulated += datagrams.len() as u64;
            self.spent.decapsulate_allocations += allocated;
        }
        self.drain_gateway();
        // The resource answers: addresses and ports swapped.
        let mut answers = Vec::with_capacity(datagrams.len());
        for (k, &length) in lengths.iter().enumerate() {
            if length == 0 {
                continue;
            }
            let slot = &mut self.slots[k * SLOT..k * SLOT + length];
            for (a, b) in [(12, 16), (13, 17), (14, 18), (15, 19), (20, 22), (21, 23)] {
                slot.swap(a, b);
            }
            answers.push(k);
        }
        let mut sealed = vec![vec![0u8; SLOT]; answers.len()];
        let mut destinations = Vec::with_capacity(answers.len());
        let allocations = ALLOCATIONS.load(Relaxed);
        let started = Instant::now();
        for (j, &k) in answers.iter().enumerate() {
            let answer = &mut self.slots[k * SLOT..k * SLOT + lengths[k]];
            destinations.push(self.gateway.encapsulate(answer, now, &mut sealed[j]));
        }
        let spent = started.elapsed();
        let allocated = ALLOCATIONS.load(Relaxed) - allocations;
        if self.measuring {
            self.spent.encapsulate += spent;
            if !answers.is_empty() {
                self.spent
                    .encapsulate_batches
                    .push(spent.as_nanos() as f64 / answers.len() as f64);
            }
            self.spent.encapsulated += answers.len() as u64;
            self.spent.encapsulate_allocations += allocated;
            self.spent.forwarded += answers.len() as u64;
        }
        for (j, destination) in destinations.into_iter().enumerate() {
            if let Some((to, n)) = destination {
                if self.measuring {
                    self.spent.sealed += 1;
                }
                self.net.push_back((GATEWAY, to, sealed[j][..n].to_vec()));
            }
        }
        self.drain_gateway();
    }

    /// Runs the world to `end`: each turn polls the gateway's deadline (as
    /// the device loop does), then handles what is due: the gateway's
    /// timers, the clients', a batch of traffic every millisecond.
    fn run(&mut self, end: Instant, rate: usize) {
        let batch = rate / 1000;
        let mut next_batch = self.now;
        loop {
            let started = Instant::now();
            let deadline = self.gateway.poll_timeout();
            if self.measuring {
                self.spent.poll += started.elapsed();
                self.spent.polls += 1;
            }
            // tokio's timer fires on whole milliseconds.
            let gateway_at = deadline.map(|at| {
                let since = at.saturating_duration_since(self.start);
                let mut at = self.start + Duration::from_millis(since.as_millis() as u64);
                if at < self.start + since {
                    at += Duration::from_millis(1);
                }
                match self.last_timeout {
                    Some(last) if at <= last => last + Duration::from_millis(1),
                    _ => at,
                }
            });
            while let Some(Reverse((at, index))) = self.wakes.peek().copied() {
                if self.clients[index].wake == Some(at) {
                    break;
                }
                self.wakes.pop();
            }
            let client_at = self.wakes.peek().map(|Reverse((at, _))| *at);
            let traffic_at = (batch > 0).then_some(next_batch);
            let Some(next) = [gateway_at, client_at, traffic_at]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if gateway_at.is_some_and(|at| at <= self.now) {
                self.last_timeout = Some(self.now);
                let started = Instant::now();
                self.gateway.handle_timeout(self.now);
                if self.measuring {
                    let spent = started.elapsed();
                    self.spent.timeout += spent;
                    self.spent.timeouts += 1;
                    self.spent.longest_timeout = self.spent.longest_timeout.max(spent);
                }
                self.drain_gateway();
            }
            while let Some(Reverse((at, index))) = self.wakes.peek().copied() {
                if at > self.now {
                    break;
                }
                self.wakes.pop();
                if self.clients[index].wake == Some(at) {
                    self.client_timeout(index);
                }
            }
            if traffic_at.is_some_and(|at| at <= self.now) {
                next_batch = self.now + Duration::from_millis(1);
                self.traffic(batch);
            }
            self.pump();
        }
        self.now = self.now.max(end);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn ns(spent: Duration, count: u64) -> f64 {
    spent.as_nanos() as f64 / count.max(1) as f64
}

struct Figures {
    peers: usize,
    decapsulate: f64,
    encapsulate: f64,
    poll: f64,
    bytes_per_peer: f64,
    gateway_bytes: usize,
}

fn measure(peers: usize, rate: usize, seconds: u64, warmup: u64) -> Figures {
    let start = Instant::now();
    let mut world = World::new(start);
    // Clients come 100 to a virtual 10 ms (10,000 a second).
    let wall = Instant::now();
    for i in 0..peers {
        world.add_client(i);
        if i % 100 == 99 {
            let end = world.now + Duration::from_millis(10);
            world.run(end, 0);
        }
    }
    // Handshakes the gateway's load limit answered with a cookie are
    // retried after a second; settle.
    let end = world.now + Duration::from_secs(3);
    world.run(end, 0);
    let connected = world.clients.iter().filter(|c| c.established).count();
    let setup = wall.elapsed();
    // Warm up with traffic (opening every flow), then measure.
    let opening = (peers as u64 * FLOWS_PER_CLIENT).div_ceil(rate.max(1) as u64);
    let end = world.now + Duration::from_secs(opening + warmup);
    world.run(end, rate);
    // The batch figures' room, before the heap is read.
    let batches = seconds as usize * 1000 + 16;
    world.spent.decapsulate_batches.reserve(batches);
    world.spent.encapsulate_batches.reserve(batches);
    let live_start = LIVE.load(Relaxed);
    for client in &mut world.clients {
        client.replies = 0;
    }
    world.measuring = true;
    let wall = Instant::now();
    let end = world.now + Duration::from_secs(seconds);
    world.run(end, rate);
    world.measuring = false;
    let measured = wall.elapsed();
    world.pump();
    let live_end = LIVE.load(Relaxed);
    let gauges = world.gateway.gauges();
    let replies: u64 = world.clients.iter().map(|c| c.replies).sum();
    // What the gateway holds: what dropping it frees.
    let before_empty = LIVE.load(Relaxed);
    let replacement = GatewayTunnel::new(&[GATEWAY], GATEWAY_SECRET, 1);
    let before_drop = LIVE.load(Relaxed);
    let empty_gateway = before_drop - before_empty;
    let gateway = std::mem::replace(&mut world.gateway, replacement);
    let dropped = gateway.dropped().clone();
    let errors = gateway.errors().clone();
    drop(gateway);
    let gateway_bytes = before_drop - LIVE.load(Relaxed);
    let decapsulate_median = median(&mut world.spent.decapsulate_batches);
    let encapsulate_median = median(&mut world.spent.encapsulate_batches);
    let s = &world.spent;
    let decapsulate = ns(s.decapsulate, s.decapsulated);
    let encapsulate = ns(s.encapsulate, s.encapsulated);
    let poll = ns(s.poll, s.polls);
    let per_second = |d: Duration| d.as_secs_f64() * 1e3 / seconds as f64;
    let bytes_per_peer = gateway_bytes.saturating_sub(empty_gateway) as f64 / peers as f64;
    println!("== {peers} peers ==");
    println!(
        "  setup: {connected}/{peers} clients connected (ICE + WireGuard handshake) in {:.1} s wall; gateway has {} peers, {} clients authorized at the end",
        setup.as_secs_f64(),
        gauges.peers,
        gauges.entries
    );
    println!(
        "  traffic: {} packets each way over {seconds} virtual s ({} per s), {} forwarded, {} answers sealed, {} delivered to clients; {:.1} s wall",
        s.decapsulated,
        rate,
        s.forwarded,
        s.sealed,
        replies,
        measured.as_secs_f64()
    );
    println!(
        "  client -> resource (decapsulate): {decapsulate_median:.0} ns/packet (median of 1 ms batches; mean {decapsulate:.0}), {:.2} allocations/packet",
        s.decapsulate_allocations as f64 / s.decapsulated.max(1) as f64
    );
    println!(
        "  resource -> client (encapsulate): {encapsulate_median:.0} ns/packet (median; mean {encapsulate:.0}), {:.2} allocations/packet",
        s.encapsulate_allocations as f64 / s.encapsulated.max(1) as f64
    );
    println!(
        "  poll_timeout (once per loop turn): {poll:.0} ns/call over {} calls",
        s.polls
    );
    println!(
        "  per packet at one packet per loop turn: {:.0} ns in, {:.0} ns out",
        decapsulate_median + poll,
        encapsulate_median + poll
    );
    println!(
        "  handle_timeout: {:.0} calls/virtual s, {:.1} us/call (longest {:.0} us), {:.2} ms CPU/virtual s = {:.0} ns per peer per s",
        s.timeouts as f64 / seconds as f64,
        ns(s.timeout, s.timeouts) / 1e3,
        s.longest_timeout.as_secs_f64() * 1e6,
        per_second(s.timeout),
        s.timeout.as_nanos() as f64 / seconds as f64 / peers as f64
    );
    println!(
        "  other gateway calls (STUN, keepalives, handshakes): {:.2} ms CPU/virtual s",
        per_second(s.other)
    );
    let total = s.decapsulate + s.encapsulate + s.poll + s.timeout + s.other;
    println!(
        "  all gateway CPU: {:.1} ms/virtual s = {:.1}% of a core at {rate} packets/s each way; {:.0} ns per packet all-in",
        per_second(total),
        per_second(total) / 10.0,
        ns(total, s.decapsulated + s.encapsulated)
    );
    println!(
        "  memory: gateway holds {:.1} MiB = {bytes_per_peer:.0} bytes/peer (empty gateway {:.0} KiB); live heap over the measured traffic {:+} bytes",
        gateway_bytes as f64 / 1048576.0,
        empty_gateway as f64 / 1024.0,
        live_end as i64 - live_start as i64
    );
    let show = |name: &str, counters: &postern_tunnel::counters::Counters| {
        if counters.total() > 0 {
            let list: Vec<String> = counters.iter().map(|(r, n)| format!("{r}={n}")).collect();
            println!("  {name}: {}", list.join(" "));
        }
    };
    show("gateway drops", &dropped);
    show("gateway errors", &errors);
    Figures {
        peers,
        decapsulate: decapsulate_median,
        encapsulate: encapsulate_median,
        poll,
        bytes_per_peer,
        gateway_bytes,
    }
}

fn main() {
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![10, 1_000, 5_000];
    }
    let rate = std::env::var("POSTERN_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let seconds = std::env::var("POSTERN_BENCH_SECONDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let warmup = std::env::var("POSTERN_BENCH_WARMUP")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let figures: Vec<Figures> = counts
        .iter()
        .map(|&n| measure(n, rate, seconds, warmup))
        .collect();
    if let (Some(first), Some(last)) = (figures.first(), figures.last())
        && figures.len() > 1
    {
        println!("== {} vs {} peers ==", last.peers, first.peers);
        println!(
            "  per packet (with its poll_timeout): in x{:.2}, out x{:.2}; data path alone: in x{:.2}, out x{:.2}; poll_timeout x{:.2}",
            (last.decapsulate + last.poll) / (first.decapsulate + first.poll),
            (last.encapsulate + last.poll) / (first.encapsulate + first.poll),
            last.decapsulate / first.decapsulate,
            last.encapsulate / first.encapsulate,
            last.poll / first.poll
        );
        println!(
            "  bytes per peer: {:.0} at {} peers, {:.0} at {}; marginal {:.0}",
            first.bytes_per_peer,
            first.peers,
            last.bytes_per_peer,
            last.peers,
            (last.gateway_bytes as f64 - first.gateway_bytes as f64)
                / (last.peers as f64 - first.peers as f64)
        );
    }
}

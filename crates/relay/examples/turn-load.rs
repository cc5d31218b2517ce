//! A TURN load generator for `bench/relay.sh`: opens N allocations on a
//! relay (TURN REST credentials), binds a channel from each to one UDP sink,
//! then blasts ChannelData for a fixed time and counts what the sink gets.
//!
//!     turn-load --server 127.0.0.1:3478 --secret S [--allocations 8]
//!               [--seconds 10] [--size 1200] [--segments 16] [--threads 1]
//!               [--pid RELAY_PID]
//!
//! Sends use GSO, `--segments` datagrams per system call (1: one datagram per
//! call, as a client without GSO sends); a list (`16,1`) gives allocation i
//! the i-th entry, cyclically: a mixed load. The sender threads
//! (`--threads`) share the allocations, each sending one call per
//! allocation in turn, so one-datagram clients arrive interleaved as
//! independent clients' datagrams do; with too few threads the generator,
//! not the relay, is the limit. The sink receives with recvmmsg/GRO.
//! Prints `result packets=.. sent=.. seconds=.. pps=.. gbps=.. delivered=..%`
//! (gbps counts the payloads delivered), `s16_pps=..` per segment count
//! for a list, and with `--pid` the relay's CPU time over the measured
//! window, `relay_cpu_ticks=..` (utime + stime, in clock ticks).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_turn::client::{Client, ClientEvent};
use postern_turn::credentials::{rest_password, rest_username};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

struct Options {
    server: SocketAddr,
    secret: String,
    allocations: usize,
    seconds: u64,
    size: usize,
    /// Datagrams per send call, by allocation (cyclically).
    segments: Vec<usize>,
    threads: usize,
    pid: Option<u32>,
}

fn options() -> Result<Options, String> {
    let mut server = None;
    let mut secret = None;
    let (mut allocations, mut seconds, mut size, mut segments) = (8, 10, 1200, vec![16]);
    let (mut threads, mut pid) = (1, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => server = Some(value()?.parse().map_err(|e| format!("--server: {e}"))?),
            "--secret" => secret = Some(value()?),
            "--allocations" => {
                allocations = value()?
                    .parse()
                    .map_err(|e| format!("--allocations: {e}"))?
            }
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--size" => size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--segments" => {
                segments = value()?
                    .split(',')
                    .map(|n| n.parse::<usize>().map(|n| n.clamp(1, 64)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--segments: {e}"))?
            }
            "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--pid" => pid = Some(value()?.parse().map_err(|e| format!("--pid: {e}"))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(1..=1400).contains(&size) {
        return Err("--size must be 1-1400".into());
    }
    Ok(Options {
        server: server.ok_or("--server is required")?,
        secret: secret.ok_or("--secret is required")?,
        allocations: allocations.max(1),
        seconds: seconds.max(1),
        size,
        segments,
        threads: threads.clamp(1, 64),
        pid,
    })
}

/// An allocation with a channel to the sink: its socket, the ChannelData
/// header to use and its relayed address (where the sink sees it from).
struct Sender {
    socket: UdpSocket,
    header: [u8; 4],
    relayed: SocketAddr,
}

/// Allocates and binds a channel to `sink`.
fn allocate(options: &Options, index: usize, sink: SocketAddr) -> Result<Sender, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3600;
    let username = rest_username(expiry, &format!("load-{index}"));
    let password = rest_password(options.secret.as_bytes(), &username);
    let mut client = Client::new(
        options.server,
        &username,
        &password,
        index as u64 + 1,
        Instant::now(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1500];
    let mut relayed = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!("allocation {index}: no channel within 10 s"));
        }
        while let Some(datagram) = client.poll_transmit() {
            socket
                .send_to(&datagram, options.server)
                .map_err(|e| e.to_string())?;
        }
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            client.handle_packet(&buf[..n], Instant::now());
        }
        client.handle_timeout(Instant::now());
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Allocated { relayed: at, .. } => {
                    relayed = Some(at);
                    client.bind_channel(sink, Instant::now());
                }
                ClientEvent::ChannelBound { number, .. } => {
                    let len = u16::try_from(options.size).map_err(|e| e.to_string())?;
                    return Ok(Sender {
                        socket,
                        header: postern_turn::channel::header(number, len),
                        relayed: relayed.ok_or("a channel before the allocation")?,
                    });
                }
                ClientEvent::Failed { code, reason } => {
                    return Err(format!("allocation {index}: {code} {reason}"));
                }
                _ => {}
            }
        }
    }
}

/// The relay's CPU time so far (utime + stime of all its threads), in
/// clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// One allocation's socket and what it sends per call.
struct Blast {
    socket: UdpSocket,
    state: UdpSocketState,
    batch: Vec<u8>,
    frame_len: usize,
}

impl Blast {
    /// One send call; the datagrams it carried.
    fn send(&self, server: SocketAddr) -> u64 {
        if self.batch.len() == self.frame_len {
            // A client without GSO: one plain send (the socket is
            // connected to the relay).
            return u64::from(self.socket.send(&self.batch).is_ok());
        }
        let transmit = Transmit {
            destination: server,
            ecn: None,
            contents: &self.batch,
            segment_size: Some(self.frame_len),
            src_ip: None,
        };
        match self.state.try_send((&self.socket).into(), &transmit) {
            Ok(()) => (self.batch.len() / self.frame_len) as u64,
            Err(_) => 0,
        }
    }
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("turn-load: {message}");
            std::process::exit(1);
        }
    };
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind the sink");
    let sink_addr = sink.local_addr().expect("sink address");
    let sink_state = UdpSocketState::new((&sink).into()).expect("sink socket state");
    let _ = sink_state.set_recv_buffer_size((&sink).into(), 8 << 20);

    let mut senders = Vec::new();
    for index in 0..options.allocations {
        match allocate(&options, index, sink_addr) {
            Ok(sender) => senders.push(sender),
            Err(message) => {
                eprintln!("turn-load: {message}");
                std::process::exit(1);
            }
        }
    }
    eprintln!(
        "turn-load: {} allocations with channels to {sink_addr}",
        senders.len()
    );
    // Which class (entry of --segments) each relayed address is.
    let classes = options.segments.len();
    let class_of: HashMap<SocketAddr, usize> = senders
        .iter()
        .enumerate()
        .map(|(index, sender)| (sender.relayed, index % classes))
        .collect();

    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered: Arc<Vec<AtomicU64>> =
        Arc::new((0..classes).map(|_| AtomicU64::new(0)).collect());
    let sink_thread = {
        let (counting, stop, delivered) = (
            Arc::clone(&counting),
            Arc::clone(&stop),
            Arc::clone(&delivered),
        );
        std::thread::spawn(move || {
            let mut storage = vec![0u8; 32 * 65_536];
            let mut metas = [RecvMeta::default(); 32];
            let _ = sink.set_nonblocking(false);
            let _ = sink.set_read_timeout(Some(Duration::from_millis(50)));
            while !stop.load(Ordering::Relaxed) {
                let mut chunks = storage.chunks_exact_mut(65_536);
                let mut slices: [IoSliceMut<'_>; 32] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                if let Ok(n) = sink_state.recv((&sink).into(), &mut slices, &mut metas)
                    && counting.load(Ordering::Relaxed)
                {
                    for meta in &metas[..n] {
                        let packets = if meta.stride == 0 {
                            1
                        } else {
                            meta.len.div_ceil(meta.stride) as u64
                        };
                        let from = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
                        let class = class_of.get(&from).copied().unwrap_or(0);
                        delivered[class].fetch_add(packets, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // Each allocation's send: a GSO batch of its `segments` ChannelData
    // messages, or one message.
    let frame_len = 4 + options.size;
    let mut blasts: Vec<Vec<Blast>> = (0..options.threads).map(|_| Vec::new()).collect();
    for (index, sender) in senders.into_iter().enumerate() {
        let Sender { socket, header, .. } = sender;
        socket
            .connect(options.server)
            .expect("connect to the relay");
        let state = UdpSocketState::new((&socket).into()).expect("sender socket state");
        let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
        let segments = options.segments[index % classes]
            .min(state.max_gso_segments())
            .max(1);
        let mut batch = Vec::with_capacity(segments * frame_len);
        for _ in 0..segments {
            batch.extend_from_slice(&header);
            batch.resize(batch.len() + options.size, 0x5A);
        }
        // Every thread gets allocations of every class.
        blasts[(index / classes) % options.threads].push(Blast {
            socket,
            state,
            batch,
            frame_len,
        });
    }
    // Warm up for a second, then count for the measured time.
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs(options.seconds);
    let start = Instant::now();
    let server = options.server;
    let senders_stop = Arc::new(AtomicBool::new(false));
    // A thread without allocations (more threads than allocations) is not
    // started: it would spin, taking CPU from the relay.
    let threads: Vec<_> = blasts
        .into_iter()
        .filter(|blasts| !blasts.is_empty())
        .map(|blasts| {
            let (counting, stop) = (Arc::clone(&counting), Arc::clone(&senders_stop));
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let counted = counting.load(Ordering::Relaxed);
                    for blast in &blasts {
                        let n = blast.send(server);
                        if counted {
                            sent += n;
                        }
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(warmup.saturating_sub(start.elapsed()));
    let cpu_before = options.pid.and_then(cpu_ticks);
    let measure_start = Instant::now();
    counting.store(true, Ordering::Relaxed);
    std::thread::sleep(measured);
    let cpu_after = options.pid.and_then(cpu_ticks);
    let elapsed = measure_start.elapsed();
    // Senders stop; in-flight datagrams land, then counting stops.
    senders_stop.store(true, Ordering::Relaxed);
    let sent: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    std::thread::sleep(Duration::from_millis(200));
    counting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = sink_thread.join();
    let by_class: Vec<u64> = delivered
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .collect();
    let packets: u64 = by_class.iter().sum();
    let seconds = elapsed.as_secs_f64();
    let pps = packets as f64 / seconds;
    let gbps = pps * options.size as f64 * 8.0 / 1e9;
    let mut line = format!(
        "result packets={packets} sent={sent} seconds={seconds:.2} pps={pps:.0} gbps={gbps:.3} delivered={:.1}%",
        100.0 * packets as f64 / sent.max(1) as f64
    );
    if classes > 1 {
        for (segments, packets) in options.segments.iter().zip(&by_class) {
            line += &format!(" s{segments}_pps={:.0}", *packets as f64 / seconds);
        }
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        line += &format!(" relay_cpu_ticks={}", after.saturating_sub(before));
    }
    println!("{line}");
}

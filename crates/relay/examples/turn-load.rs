//! A TURN load generator for `bench/relay.sh`: opens N allocations on a
//! relay (TURN REST credentials), binds a channel from each to one UDP sink,
//! then blasts ChannelData for a fixed time and counts what the sink gets.
//!
//!     turn-load --server 127.0.0.1:3478 --secret S [--allocations 8]
//!               [--seconds 10] [--size 1200] [--segments 16]
//!
//! Sends use GSO, `--segments` datagrams per system call (1: one datagram per
//! call, as a client without GSO sends), and the sink receives with
//! recvmmsg/GRO, so the generator and the sink outpace the relay under test.
//! Prints `result packets=.. seconds=.. pps=.. gbps=..` (gbps counts the
//! 1200-byte payloads delivered).

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
    segments: usize,
}

fn options() -> Result<Options, String> {
    let mut server = None;
    let mut secret = None;
    let (mut allocations, mut seconds, mut size, mut segments) = (8, 10, 1200, 16);
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
            "--segments" => segments = value()?.parse().map_err(|e| format!("--segments: {e}"))?,
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
        segments: segments.clamp(1, 64),
    })
}

/// Allocates and binds a channel to `sink`; returns the socket and the
/// ChannelData header to use.
fn allocate(
    options: &Options,
    index: usize,
    sink: SocketAddr,
) -> Result<(UdpSocket, [u8; 4]), String> {
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
                ClientEvent::Allocated { .. } => {
                    client.bind_channel(sink, Instant::now());
                }
                ClientEvent::ChannelBound { number, .. } => {
                    let len = u16::try_from(options.size).map_err(|e| e.to_string())?;
                    return Ok((socket, postern_turn::channel::header(number, len)));
                }
                ClientEvent::Failed { code, reason } => {
                    return Err(format!("allocation {index}: {code} {reason}"));
                }
                _ => {}
            }
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

    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
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
                if let Ok(n) = sink_state.recv((&sink).into(), &mut slices, &mut metas) {
                    let packets: u64 = metas[..n]
                        .iter()
                        .map(|m| {
                            if m.stride == 0 {
                                1
                            } else {
                                m.len.div_ceil(m.stride) as u64
                            }
                        })
                        .sum();
                    if counting.load(Ordering::Relaxed) {
                        delivered.fetch_add(packets, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // The frames: one GSO batch per socket of `segments` ChannelData messages.
    let segments = options.segments;
    let frame_len = 4 + options.size;
    let mut batches: Vec<(UdpSocket, UdpSocketState, Vec<u8>)> = Vec::new();
    for (socket, header) in senders {
        let state = UdpSocketState::new((&socket).into()).expect("sender socket state");
        let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
        let segments = segments.min(state.max_gso_segments()).max(1);
        let mut batch = Vec::with_capacity(segments * frame_len);
        for _ in 0..segments {
            batch.extend_from_slice(&header);
            batch.resize(batch.len() + options.size, 0x5A);
        }
        batches.push((socket, state, batch));
    }
    // Warm up for a second, then count for the measured time.
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs(options.seconds);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut measure_start = None;
    while start.elapsed() < warmup + measured {
        if measure_start.is_none() && start.elapsed() >= warmup {
            counting.store(true, Ordering::Relaxed);
            measure_start = Some(Instant::now());
            sent = 0;
        }
        for (socket, state, batch) in &batches {
            let transmit = Transmit {
                destination: options.server,
                ecn: None,
                contents: batch,
                segment_size: (batch.len() > frame_len).then_some(frame_len),
                src_ip: None,
            };
            if state.try_send(socket.into(), &transmit).is_ok() {
                sent += (batch.len() / frame_len) as u64;
            }
        }
    }
    let elapsed = measure_start.map_or(measured, |t| t.elapsed());
    // Let in-flight datagrams land, then stop counting.
    std::thread::sleep(Duration::from_millis(200));
    counting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = sink_thread.join();
    let packets = delivered.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64();
    let pps = packets as f64 / seconds;
    let gbps = pps * options.size as f64 * 8.0 / 1e9;
    println!(
        "result packets={packets} sent={sent} seconds={seconds:.2} pps={pps:.0} gbps={gbps:.3} delivered={:.1}%",
        100.0 * packets as f64 / sent.max(1) as f64
    );
}

//! Time to first byte for a never-used resource (`bench/ttfb.sh`, issue 6):
//! from the client's first SYN to a resource it has not reached before to
//! the first byte of the HTTP answer, over 30 resources, with cone NATs
//! (direct path) and with symmetric NATs on both sides (relayed). The first
//! packet waits for the portal's decision, the gateway's authorization and,
//! for the first resource of a gateway, ICE and the WireGuard handshake.
//!
//!     ttfb --postern PATH [--runs N]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions};
use postern_lab::http::WebServer;

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let mut postern = None;
    let mut runs = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--postern", Some(path)) => postern = Some(PathBuf::from(path)),
            ("--runs", Some(n)) => match n.parse() {
                Ok(n) if (1..=200).contains(&n) => runs = n,
                _ => {
                    eprintln!("--runs takes 1 to 200");
                    return ExitCode::from(1);
                }
            },
            _ => {
                eprintln!("usage: ttfb --postern PATH [--runs N]");
                return ExitCode::from(1);
            }
        }
    }
    let Some(postern) = postern else {
        eprintln!("usage: ttfb --postern PATH [--runs N]");
        return ExitCode::from(1);
    };
    let mut ok = true;
    for (label, nat, goal) in [
        ("direct", NatKind::Cone, 50.0),
        ("relayed", NatKind::Symmetric, 100.0),
    ] {
        match measure(&postern, nat, runs) {
            Ok(mut samples) => {
                // The first run also waits for ICE and the WireGuard handshake.
                let first = samples.first().copied().unwrap_or_default();
                samples.sort_by(f64::total_cmp);
                let p50 = percentile(&samples, 50.0);
                let p99 = percentile(&samples, 99.0);
                println!(
                    "ttfb {label:<8} p50 {p50:6.1} ms  p99 {p99:6.1} ms  (first resource, with ICE and handshake: {first:.1} ms; {} runs; goal p50 < {goal} ms: {})",
                    samples.len(),
                    if p50 < goal { "met" } else { "NOT met" }
                );
            }
            Err(error) => {
                eprintln!("ttfb {label}: {error}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds to first byte for `runs` fresh resources.
fn measure(postern: &std::path::Path, nat: NatKind, runs: usize) -> Result<Vec<f64>, Failure> {
    let demo = Demo::start(DemoOptions {
        postern: postern.to_path_buf(),
        home_nat: nat,
        office_nat: nat,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })?;
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for n in 0..runs {
        let address = format!("10.0.1.{}", 100 + n);
        demo.net
            .web
            .ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        servers.push(WebServer::start(
            &demo.net.web,
            format!("{address}:80").parse()?,
        )?);
        demo.add_resource(
            &format!("web {n}"),
            "ip",
            &address,
            r#"[{"protocol":"tcp","ports":"80"}]"#,
        )?;
        targets.push(format!("{address}:80").parse::<SocketAddr>()?);
    }
    // The client must know them all (routes) before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while demo.client_status()?.matches("\"id\"").count() < runs + 1 {
        if Instant::now() > deadline {
            return Err("the client never listed every resource".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut samples = Vec::new();
    for target in targets {
        let took = demo.net.client.enter(move || first_byte(target))??;
        samples.push(took.as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Connect (the first SYN), send a GET, wait for the first byte.
fn first_byte(target: SocketAddr) -> std::io::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    Ok(started.elapsed())
}

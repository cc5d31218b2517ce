//! DNS stub throughput and latency (`bench/dns.sh`, issue 7): dnsperf
//! against the client's stub on 100.100.111.1 in the demo's lab, for
//! resource names (answered by the stub with proxy addresses) and for
//! forwarded names (asked of the lab's "public" resolver). Prints queries/s
//! at full load and p50/p99 latency at a fixed rate.
//!
//!     dnsperf --postern PATH [--seconds N] [--rate QPS]

use std::path::PathBuf;
use std::process::ExitCode;

use postern_lab::NatKind;
use postern_lab::demo::{Demo, DemoOptions};

type Failure = Box<dyn std::error::Error>;

struct Options {
    postern: PathBuf,
    seconds: u32,
    rate: u32,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        postern: PathBuf::new(),
        seconds: 10,
        rate: 50_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--postern" => options.postern = value.into(),
            "--seconds" => {
                options.seconds = value.parse().map_err(|_| "--seconds takes a number")?
            }
            "--rate" => options.rate = value.parse().map_err(|_| "--rate takes a number")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.postern.as_os_str().is_empty() {
        return Err("usage: dnsperf --postern PATH [--seconds N] [--rate QPS]".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(1);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dnsperf: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(options: &Options) -> Result<(), Failure> {
    let demo = Demo::start(DemoOptions {
        postern: options.postern.clone(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })?;
    let dir = demo.data_dir().to_path_buf();
    let resource_names: String = (0..1000)
        .map(|n| format!("host{n}.apps.corp.test A\n"))
        .collect();
    let forwarded_names = "portal.demo.test A\nrelay.demo.test A\n".repeat(500);
    for (label, text, file) in [
        ("resource names", resource_names, dir.join("resource-names")),
        (
            "forwarded names",
            forwarded_names,
            dir.join("forwarded-names"),
        ),
    ] {
        std::fs::write(&file, text)?;
        let file = file.to_string_lossy().to_string();
        let seconds = options.seconds.to_string();
        let full = demo.net.client.run(
            "dnsperf",
            &[
                "-s",
                "100.100.111.1",
                "-d",
                &file,
                "-l",
                &seconds,
                "-c",
                "4",
                "-q",
                "200",
            ],
        )?;
        let qps = field(&full, "Queries per second:").unwrap_or(f64::NAN);
        let lost = field(&full, "Queries lost:").unwrap_or(f64::NAN);
        let rate = options.rate.to_string();
        let paced = demo.net.client.run(
            "dnsperf",
            &[
                "-s",
                "100.100.111.1",
                "-d",
                &file,
                "-l",
                "5",
                "-Q",
                &rate,
                "-v",
            ],
        )?;
        let mut latencies = latencies(&paced);
        latencies.sort_by(f64::total_cmp);
        let pick = |p: f64| {
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            latencies
                .get(rank.clamp(1, latencies.len().max(1)) - 1)
                .copied()
                .unwrap_or(f64::NAN)
                * 1000.0
        };
        println!(
            "dns {label:<16} {qps:>9.0} queries/s (lost {lost:.0}); at {rate} q/s: p50 {:.3} ms, p99 {:.3} ms over {} queries",
            pick(50.0),
            pick(99.0),
            latencies.len()
        );
    }
    Ok(())
}

/// The number after `label` in dnsperf's summary.
fn field(output: &str, label: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Per-query latencies (seconds) from dnsperf -v lines: `> NOERROR name A 0.000123`.
fn latencies(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter(|line| line.starts_with('>'))
        .filter_map(|line| line.split_whitespace().last()?.parse().ok())
        .collect()
}

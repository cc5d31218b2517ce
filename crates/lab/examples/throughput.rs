//! The throughput race of `bench/throughput.sh` (issue 6): in one lab and
//! one run, iperf3 from the client to a resource host behind the gateway,
//! single stream and 4 streams, through
//!   - the bare routed path (no tunnel),
//!   - Postern (client -> gateway, direct path),
//!   - boringtun-cli (one thread) and
//!   - wireguard-go,
//!
//! each tunnel with MTU 1280 and the gateway masquerading, each to its own
//! address of the resource host so the routes do not overlap.
//!
//!     throughput --postern PATH [--boringtun PATH] [--wireguard-go PATH] [--seconds N]

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, DemoOptions};
use postern_lab::{Host, LabProcess, NatKind};

struct Options {
    postern: PathBuf,
    boringtun: Option<PathBuf>,
    wireguard_go: Option<PathBuf>,
    seconds: u32,
}

type Failure = Box<dyn std::error::Error>;

fn options() -> Result<Options, String> {
    let mut options = Options {
        postern: PathBuf::new(),
        boringtun: None,
        wireguard_go: None,
        seconds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--postern" => options.postern = value()?.into(),
            "--boringtun" => options.boringtun = Some(value()?.into()),
            "--wireguard-go" => options.wireguard_go = Some(value()?.into()),
            "--seconds" => {
                options.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.postern.as_os_str().is_empty() {
        return Err("usage: throughput --postern PATH [--boringtun PATH] [--wireguard-go PATH] [--seconds N]".into());
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
            eprintln!("throughput: {error}");
            ExitCode::from(1)
        }
    }
}

/// iperf3 from the client to `target`; Gbit/s received.
fn iperf(client: &Host, target: &str, streams: u32, seconds: u32) -> Result<f64, Failure> {
    let output = client.run(
        "iperf3",
        &[
            "-c",
            target,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&output)?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no result from iperf3: {output}"))?;
    Ok(bits / 1e9)
}

fn tool(program: &str, args: &[&str], input: Option<&str>) -> Result<String, Failure> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A userspace WireGuard tunnel between client and gateway run by
/// `binary`, routing `resource` through it; returns its processes.
fn wireguard(
    binary: &PathBuf,
    args: &[&str],
    demo: &Demo,
    tag: &str,
    subnet: u8,
    resource: &str,
) -> Result<Vec<LabProcess>, Failure> {
    let client = &demo.net.client;
    let gateway = &demo.net.gateways[0];
    let keys = demo.data_dir().join(format!("{tag}-keys"));
    std::fs::create_dir_all(&keys)?;
    let mut processes = Vec::new();
    let mut publics = Vec::new();
    for (host, side) in [(client, "c"), (gateway, "g")] {
        let name = format!("{tag}-{side}");
        let private = tool("wg", &["genkey"], None)?;
        publics.push(tool("wg", &["pubkey"], Some(&private))?);
        std::fs::write(keys.join(&name), format!("{private}\n"))?;
        let mut command = host.command(binary);
        command
            .args(args)
            .arg(&name)
            .env("WG_PROCESS_FOREGROUND", "1");
        processes.push(host.spawn(command)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.ip(&["link", "show", &name]).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} never made {name}: {}",
                    binary.display(),
                    processes.last().map(|p| p.stderr()).unwrap_or_default()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (c, g) = (format!("{tag}-c"), format!("{tag}-g"));
    let gateway_ip = "10.0.1.11";
    // Each tunnel its own ports.
    let (client_port, gateway_port) = (
        (52000 + u16::from(subnet) * 2).to_string(),
        (52001 + u16::from(subnet) * 2).to_string(),
    );
    client.run(
        "wg",
        &[
            "set",
            &c,
            "listen-port",
            &client_port,
            "private-key",
            &keys.join(&c).to_string_lossy(),
            "peer",
            &publics[1],
            "endpoint",
            &format!("{gateway_ip}:{gateway_port}"),
            "allowed-ips",
            &format!("{resource}/32,10.{subnet}.0.2/32"),
        ],
    )?;
    gateway.run(
        "wg",
        &[
            "set",
            &g,
            "listen-port",
            &gateway_port,
            "private-key",
            &keys.join(&g).to_string_lossy(),
            "peer",
            &publics[0],
            "allowed-ips",
            &format!("10.{subnet}.0.1/32"),
        ],
    )?;
    for (host, name, me, peer) in [(client, &c, 1, 2), (gateway, &g, 2, 1)] {
        host.ip(&[
            "addr",
            "add",
            &format!("10.{subnet}.0.{me}/32"),
            "dev",
            name,
        ])?;
        host.ip(&["link", "set", name, "mtu", "1280", "up"])?;
        host.ip(&[
            "route",
            "add",
            &format!("10.{subnet}.0.{peer}/32"),
            "dev",
            name,
        ])?;
    }
    client.ip(&["route", "add", &format!("{resource}/32"), "dev", &c])?;
    gateway.nft(&format!(
        "table ip bench_{tag} {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.{subnet}.0.0/24 oifname != \"{g}\" masquerade\n }}\n}}\n",
        tag = tag.replace('-', "_")
    ))?;
    Ok(processes)
}

fn run(options: &Options) -> Result<(), Failure> {
    println!(
        "building the lab: client -> router -> internet -> router -> gateway, resource (routed, no NAT)"
    );
    let demo = Demo::start(DemoOptions {
        postern: options.postern.clone(),
        home_nat: NatKind::Routed,
        office_nat: NatKind::Routed,
        gateways: 1,
    })?;
    // The resource allows everything for the race (iperf3 uses 5201).
    demo.api_ok(
        "PATCH",
        &format!("/api/v1/resources/{}", demo.setup.resource_id),
        Some(r#"{"filters":[]}"#),
    )?;
    let web = &demo.net.web;
    for extra in ["10.0.1.81/24", "10.0.1.82/24", "10.0.1.83/24"] {
        web.ip(&["addr", "add", extra, "dev", "eth0"])?;
    }
    let mut server = web.command("iperf3");
    server.arg("-s");
    let _server = web.spawn(server)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut _tunnels = Vec::new();
    let mut rows: Vec<(&str, &str)> =
        vec![("veth (no tunnel)", "10.0.1.81"), ("postern", "10.0.1.80")];
    if let Some(boringtun) = &options.boringtun {
        _tunnels.extend(wireguard(
            boringtun,
            &[
                "--foreground",
                "--disable-drop-privileges",
                "--threads",
                "1",
            ],
            &demo,
            "wgb",
            99,
            "10.0.1.82",
        )?);
        rows.push(("boringtun-cli (1 thread)", "10.0.1.82"));
    }
    if let Some(wireguard_go) = &options.wireguard_go {
        _tunnels.extend(wireguard(
            wireguard_go,
            &["-f"],
            &demo,
            "wgg",
            98,
            "10.0.1.83",
        )?);
        rows.push(("wireguard-go", "10.0.1.83"));
    }
    // Warm up each path (access request, handshakes) before measuring.
    for (_, target) in &rows {
        let _ = iperf(&demo.net.client, target, 1, 1);
    }
    println!("\n{:<26} {:>14} {:>14}", "path", "1 stream", "4 streams");
    let mut results = Vec::new();
    for (name, target) in &rows {
        let one = iperf(&demo.net.client, target, 1, options.seconds)?;
        let four = iperf(&demo.net.client, target, 4, options.seconds)?;
        println!("{name:<26} {one:>9.2} Gbit/s {four:>9.2} Gbit/s");
        results.push((*name, one, four));
    }
    let postern = results
        .iter()
        .find(|r| r.0 == "postern")
        .map(|r| (r.1, r.2));
    for (name, label) in [
        ("boringtun-cli (1 thread)", "boringtun"),
        ("wireguard-go", "wireguard-go"),
    ] {
        if let (Some((p1, p4)), Some(other)) = (postern, results.iter().find(|r| r.0 == name)) {
            println!(
                "ratio postern/{label}: {:.2} (4 streams: {:.2})",
                p1 / other.1,
                p4 / other.2
            );
        }
    }
    let status = demo.client_status()?;
    if !status.contains("\"direct\"") {
        println!("note: the postern path was not direct: {status}");
    }
    Ok(())
}

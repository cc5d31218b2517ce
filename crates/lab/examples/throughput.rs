//! The throughput race of `bench/throughput.sh` (issue 6): iperf3 from the
//! client to a resource host behind the gateway, single stream and 4
//! streams. In one lab (routed, no NAT) and one run, through
//!   - the bare routed path (no tunnel),
//!   - Postern (client -> gateway, direct path),
//!   - boringtun-cli (one thread),
//!   - wireguard-go and
//!   - gotatun-cli (Mullvad's userspace WireGuard in Rust, run with
//!     `WG_SUDO=1` so it keeps its privileges),
//!
//! each tunnel with MTU 1280 and the gateway masquerading, each to its own
//! address of the resource host so the routes do not overlap. Then, in a
//! second lab with both sites behind symmetric NATs (as `postern demo
//! --symmetric`), Postern again once the client's path is `relayed`: the
//! line `relayed postern: X.XX Gbit/s`.
//!
//! Beside each tunnel's Gbit/s it prints the CPU seconds per GB that each of
//! its daemons spent: utime + stime from `/proc/PID/stat` right before and
//! right after the iperf3 run, over the bytes iperf3 delivered in that run
//! (GB = 10^9 bytes). Postern: client and gateway (and the relay when
//! relayed); the WireGuard implementations: their process on each side. The
//! bare path is kernel work: no CPU figure.
//!
//!     throughput --postern PATH [--boringtun PATH] [--wireguard-go PATH]
//!                [--gotatun PATH] [--seconds N]

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, DemoOptions, PORTAL};
use postern_lab::{Host, LabProcess, NatKind};

const USAGE: &str = "usage: throughput --postern PATH [--boringtun PATH] [--wireguard-go PATH] [--gotatun PATH] [--seconds N]";

struct Options {
    postern: PathBuf,
    boringtun: Option<PathBuf>,
    wireguard_go: Option<PathBuf>,
    gotatun: Option<PathBuf>,
    seconds: u32,
}

type Failure = Box<dyn std::error::Error>;

/// The daemons that carry one path, each with its role (`client`, ...).
type Daemons<'a> = Vec<(&'static str, &'a LabProcess)>;

fn options() -> Result<Options, String> {
    let mut options = Options {
        postern: PathBuf::new(),
        boringtun: None,
        wireguard_go: None,
        gotatun: None,
        seconds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--postern" => options.postern = value()?.into(),
            "--boringtun" => options.boringtun = Some(value()?.into()),
            "--wireguard-go" => options.wireguard_go = Some(value()?.into()),
            "--gotatun" => options.gotatun = Some(value()?.into()),
            "--seconds" => {
                options.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.postern.as_os_str().is_empty() {
        return Err(USAGE.into());
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

/// One iperf3 run: Gbit/s and bytes received, and the CPU seconds per GB
/// of each daemon that carried it (`role`, s/GB).
#[derive(Clone, Debug, Default)]
struct Measurement {
    gbps: f64,
    bytes: f64,
    cpu: Vec<(&'static str, f64)>,
}

impl Measurement {
    /// `  cpu s/GB: client 1.02 gateway 0.98`, or nothing without daemons.
    fn cpu_text(&self) -> String {
        if self.cpu.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = self
            .cpu
            .iter()
            .map(|(role, per_gb)| format!("{role} {per_gb:.2}"))
            .collect();
        format!("  cpu s/GB: {}", parts.join(" "))
    }
}

/// iperf3 from the client to `target`: Gbit/s and bytes received.
fn iperf(client: &Host, target: &str, streams: u32, seconds: u32) -> Result<(f64, f64), Failure> {
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
    let received = &report["end"]["sum_received"];
    let (Some(bits), Some(bytes)) = (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_f64(),
    ) else {
        return Err(format!("no result from iperf3: {output}").into());
    };
    Ok((bits / 1e9, bytes))
}

/// An iperf3 run with the CPU time of `daemons` read right before and right
/// after it.
fn measure(
    client: &Host,
    target: &str,
    streams: u32,
    seconds: u32,
    daemons: &[(&'static str, &LabProcess)],
) -> Result<Measurement, Failure> {
    let before = daemons
        .iter()
        .map(|(_, process)| process.cpu_time())
        .collect::<Result<Vec<_>, _>>()?;
    let (gbps, bytes) = iperf(client, target, streams, seconds)?;
    let cpu = cpu_per_gb(daemons, before, bytes)?;
    Ok(Measurement { gbps, bytes, cpu })
}

/// CPU seconds each daemon spent since `before`, per GB of `bytes`.
fn cpu_per_gb(
    daemons: &[(&'static str, &LabProcess)],
    before: Vec<Duration>,
    bytes: f64,
) -> Result<Vec<(&'static str, f64)>, Failure> {
    let mut cpu = Vec::new();
    for ((role, process), before) in daemons.iter().zip(before) {
        let spent = process.cpu_time()?.saturating_sub(before);
        cpu.push((
            *role,
            spent.as_secs_f64() / (bytes / 1e9).max(f64::MIN_POSITIVE),
        ));
    }
    Ok(cpu)
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

/// How to start one userspace WireGuard implementation.
struct WireGuard<'a> {
    binary: &'a PathBuf,
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
}

/// A userspace WireGuard tunnel between client and gateway run by
/// `wg.binary`, routing `resource` through it; returns its processes
/// (client side, then gateway side).
fn wireguard(
    wg: &WireGuard,
    demo: &Demo,
    tag: &str,
    subnet: u8,
    resource: &str,
) -> Result<Vec<LabProcess>, Failure> {
    let binary = wg.binary;
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
            .args(wg.args)
            .arg(&name)
            .env("WG_PROCESS_FOREGROUND", "1")
            .envs(wg.env.iter().copied());
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

/// A lab running the demo with every resource filter open and an iperf3
/// server on the web host (iperf3 uses 5201).
fn lab(options: &Options, nat: NatKind) -> Result<(Demo, LabProcess), Failure> {
    let demo = Demo::start(DemoOptions {
        postern: options.postern.clone(),
        home_nat: nat,
        office_nat: nat,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })?;
    demo.api_ok(
        "PATCH",
        &format!("/api/v1/resources/{}", demo.setup.resource_id),
        Some(r#"{"filters":[]}"#),
    )?;
    let web = &demo.net.web;
    let mut server = web.command("iperf3");
    server.arg("-s");
    let server = web.spawn(server)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((demo, server))
}

/// The client and gateway daemons of a demo (and the relay if asked).
fn postern_daemons(demo: &Demo, relay: bool) -> Daemons<'_> {
    let mut daemons = Vec::new();
    if let Some(client) = &demo.client_process {
        daemons.push(("client", client));
    }
    if let Some(Some(gateway)) = demo.gateway_processes.first() {
        daemons.push(("gateway", gateway));
    }
    if relay && let Some(process) = demo.relay_process() {
        daemons.push(("relay", process));
    }
    daemons
}

/// The client side and the gateway side of a WireGuard tunnel.
fn sides(processes: &Option<Vec<LabProcess>>) -> Daemons<'_> {
    ["client", "gateway"]
        .into_iter()
        .zip(processes.iter().flatten())
        .collect()
}

/// One path measured: its name, single-stream and 4-stream runs.
struct Row {
    name: &'static str,
    one: Measurement,
    four: Measurement,
}

fn run(options: &Options) -> Result<(), Failure> {
    let mut rows = direct(options)?;
    let relayed = match relayed(options) {
        Ok(row) => Some(row),
        Err(error) => {
            println!("relayed postern: not measured: {error}");
            None
        }
    };
    if let Some(row) = relayed {
        rows.push(row);
    }
    summary(&rows);
    if rows.iter().any(|r| r.name == "postern (relayed)") {
        Ok(())
    } else {
        Err("the relayed path was not measured".into())
    }
}

/// The routed lab: bare path, Postern direct, and the WireGuard
/// implementations; prints the table, the CPU lines and the ratios.
fn direct(options: &Options) -> Result<Vec<Row>, Failure> {
    println!(
        "building the lab: client -> router -> internet -> router -> gateway, resource (routed, no NAT)"
    );
    let (demo, _server) = lab(options, NatKind::Routed)?;
    let web = &demo.net.web;
    for extra in [
        "10.0.1.81/24",
        "10.0.1.82/24",
        "10.0.1.83/24",
        "10.0.1.84/24",
    ] {
        web.ip(&["addr", "add", extra, "dev", "eth0"])?;
    }
    let boringtun = match &options.boringtun {
        Some(binary) => Some(wireguard(
            &WireGuard {
                binary,
                args: &[
                    "--foreground",
                    "--disable-drop-privileges",
                    "--threads",
                    "1",
                ],
                env: &[],
            },
            &demo,
            "wgb",
            99,
            "10.0.1.82",
        )?),
        None => None,
    };
    let wireguard_go = match &options.wireguard_go {
        Some(binary) => Some(wireguard(
            &WireGuard {
                binary,
                args: &["-f"],
                env: &[],
            },
            &demo,
            "wgg",
            98,
            "10.0.1.83",
        )?),
        None => None,
    };
    // gotatun drops privileges unless WG_SUDO is set (and then cannot read
    // its login name here); a failure to start it skips its row only.
    let gotatun = match &options.gotatun {
        Some(binary) => match wireguard(
            &WireGuard {
                binary,
                args: &["-f"],
                env: &[("WG_SUDO", "1")],
            },
            &demo,
            "wgt",
            97,
            "10.0.1.84",
        ) {
            Ok(processes) => Some(processes),
            Err(error) => {
                let error = error.to_string().replace('\n', " ");
                println!("gotatun-cli: cannot run here, skipped: {error}");
                None
            }
        },
        None => None,
    };
    let mut paths: Vec<(&'static str, &str, Daemons)> = vec![
        ("veth (no tunnel)", "10.0.1.81", Vec::new()),
        ("postern", "10.0.1.80", postern_daemons(&demo, false)),
    ];
    if boringtun.is_some() {
        paths.push(("boringtun-cli (1 thread)", "10.0.1.82", sides(&boringtun)));
    }
    if wireguard_go.is_some() {
        paths.push(("wireguard-go", "10.0.1.83", sides(&wireguard_go)));
    }
    if gotatun.is_some() {
        paths.push(("gotatun-cli", "10.0.1.84", sides(&gotatun)));
    }
    // Warm up each path (access request, handshakes) before measuring.
    for (_, target, _) in &paths {
        let _ = iperf(&demo.net.client, target, 1, 1);
    }
    println!("\n{:<26} {:>14} {:>14}", "path", "1 stream", "4 streams");
    let mut rows = Vec::new();
    for &(name, target, ref daemons) in &paths {
        let one = measure(&demo.net.client, target, 1, options.seconds, daemons)?;
        let four = measure(&demo.net.client, target, 4, options.seconds, daemons)?;
        println!(
            "{name:<26} {:>9.2} Gbit/s {:>9.2} Gbit/s",
            one.gbps, four.gbps
        );
        rows.push(Row { name, one, four });
    }
    println!("\nCPU seconds per GB delivered, each daemon (utime+stime from /proc/PID/stat):");
    for row in rows.iter().filter(|r| !r.one.cpu.is_empty()) {
        print_cpu(row.name, &row.one, &row.four);
    }
    println!();
    print_ratios(&rows);
    let status = demo.client_status()?;
    if !status.contains("\"direct\"") {
        println!("note: the postern path was not direct: {status}");
    }
    match userspace(options, &demo) {
        Ok(userspace_rows) => rows.extend(userspace_rows),
        Err(error) => println!("postern userspace (SOCKS5): not measured: {error}"),
    }
    Ok(rows)
}

/// Bytes each curl download moves.
const CURL_BYTES: u64 = 1 << 30;

/// One curl download of `CURL_BYTES` from the web host (through the TUN,
/// or through the userspace client's SOCKS5 proxy with `proxy`), with the
/// CPU time of `daemons`; "4 streams" is four downloads at once.
fn curl_measure(
    client: &Host,
    proxy: Option<&str>,
    streams: u32,
    daemons: &[(&'static str, &LabProcess)],
) -> Result<Measurement, Failure> {
    let before = daemons
        .iter()
        .map(|(_, process)| process.cpu_time())
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!("http://10.0.1.80/bytes/{CURL_BYTES}");
    let mut args: Vec<String> = vec!["-sS".into(), "--fail".into(), "--parallel".into()];
    args.extend(["--parallel-max".into(), streams.to_string()]);
    if let Some(proxy) = proxy {
        args.extend(["--socks5-hostname".into(), proxy.into()]);
    }
    for _ in 0..streams {
        args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    client.run("curl", &args)?;
    let took = started.elapsed().as_secs_f64();
    let bytes = (CURL_BYTES * u64::from(streams)) as f64;
    let cpu = cpu_per_gb(daemons, before, bytes)?;
    Ok(Measurement {
        gbps: bytes * 8.0 / took / 1e9,
        bytes,
        cpu,
    })
}

/// The userspace client (`client up --userspace --socks5`, beside the TUN
/// client in the same host, on the same gateway): curl downloads through
/// its SOCKS5 proxy and, for the ratio, the same downloads through the TUN.
fn userspace(options: &Options, demo: &Demo) -> Result<Vec<Row>, Failure> {
    let client = &demo.net.client;
    let dir = demo.data_dir().join("userspace");
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("client.token");
    std::fs::write(&token, &demo.setup.client_token)?;
    let socket = dir.join("client.sock");
    let portal = format!("https://{PORTAL}");
    let ca = demo.pki.ca_arg();
    let proxy = "127.0.0.1:1080";
    let daemon = demo.spawn_postern(
        client,
        &[
            "client",
            "up",
            "--userspace",
            "--socks5",
            proxy,
            "--portal",
            &portal,
            &ca,
            "--token-file",
            &token.to_string_lossy(),
            "--state-dir",
            &dir.to_string_lossy(),
            "--status-socket",
            &socket.to_string_lossy(),
            "--name",
            "bench-userspace",
            "--port",
            "0",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = Command::new(&options.postern)
            .args(["client", "status", "--json", "--status-socket"])
            .arg(&socket)
            .output()?;
        if String::from_utf8_lossy(&status.stdout).contains(&demo.setup.resource_id) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the userspace client never started: {}", daemon.stderr()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm up (access, handshakes).
    client.run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--socks5-hostname",
            proxy,
            "-o",
            "/dev/null",
            "http://10.0.1.80/bytes/1000000",
        ],
    )?;
    let gateway = demo
        .gateway_processes
        .first()
        .and_then(Option::as_ref)
        .ok_or("no gateway")?;
    let tun_daemons = postern_daemons(demo, false);
    let socks_daemons: Daemons = vec![("client", &daemon), ("gateway", gateway)];
    println!(
        "\ncurl, {} MiB per download from the web host, same lab, same gateway:",
        CURL_BYTES >> 20
    );
    let mut rows = Vec::new();
    for (name, via, daemons) in [
        ("postern TUN (curl)", None, &tun_daemons),
        ("postern userspace (curl)", Some(proxy), &socks_daemons),
    ] {
        let one = curl_measure(client, via, 1, daemons)?;
        let four = curl_measure(client, via, 4, daemons)?;
        println!(
            "{name:<26} {:>9.2} Gbit/s {:>9.2} Gbit/s",
            one.gbps, four.gbps
        );
        print_cpu(name, &one, &four);
        rows.push(Row { name, one, four });
    }
    if let [tun, socks] = &rows[..] {
        println!(
            "ratio postern userspace/TUN: {:.2} (4 downloads: {:.2})",
            socks.one.gbps / tun.one.gbps,
            socks.four.gbps / tun.four.gbps
        );
    }
    if !daemon.stderr().contains("SOCKS5 proxy listening") {
        return Err("the userspace client did not say it listens".into());
    }
    Ok(rows)
}

fn print_cpu(name: &str, one: &Measurement, four: &Measurement) {
    println!(
        "{name} single stream: {:.2} Gbit/s{}",
        one.gbps,
        one.cpu_text()
    );
    println!(
        "{name} 4 streams: {:.2} Gbit/s{}",
        four.gbps,
        four.cpu_text()
    );
}

fn print_ratios(rows: &[Row]) {
    let postern = rows.iter().find(|r| r.name == "postern");
    for (name, label) in [
        ("boringtun-cli (1 thread)", "boringtun"),
        ("wireguard-go", "wireguard-go"),
        ("gotatun-cli", "gotatun"),
    ] {
        if let (Some(p), Some(other)) = (postern, rows.iter().find(|r| r.name == name)) {
            println!(
                "ratio postern/{label}: {:.2} (4 streams: {:.2})",
                p.one.gbps / other.one.gbps,
                p.four.gbps / other.four.gbps
            );
        }
    }
}

/// The relayed lab: both sites behind symmetric NATs, Postern once the
/// client's path is `relayed`.
fn relayed(options: &Options) -> Result<Row, Failure> {
    println!(
        "\nbuilding the relayed lab: both sites behind symmetric NATs (as postern demo --symmetric), traffic through the relay"
    );
    let (demo, _server) = lab(options, NatKind::Symmetric)?;
    let target = "10.0.1.80";
    // The first packets ask for access and start ICE; then wait for the
    // relayed pair (direct checks cannot succeed through symmetric NATs).
    let _ = iperf(&demo.net.client, target, 1, 1);
    let took = demo
        .wait_for_path("relayed", Duration::from_secs(30))
        .map_err(|path| format!("the client's path stayed {path:?}, never relayed"))?;
    println!("the client's path is relayed (seen {took:.1?} after a 1 s warm-up run)");
    let _ = iperf(&demo.net.client, target, 1, 1);
    let daemons = postern_daemons(&demo, true);
    let one = measure(&demo.net.client, target, 1, options.seconds, &daemons)?;
    let four = measure(&demo.net.client, target, 4, options.seconds, &daemons)?;
    let path = demo.path();
    if path != "relayed" {
        println!("note: the postern path was {path} at the end, not relayed");
    }
    println!("relayed postern: {:.2} Gbit/s", one.gbps);
    println!("relayed postern (4 streams): {:.2} Gbit/s", four.gbps);
    print_cpu("relayed postern", &one, &four);
    Ok(Row {
        name: "postern (relayed)",
        one,
        four,
    })
}

/// Every figure once more, in one block.
fn summary(rows: &[Row]) {
    println!("\n== summary (Gbit/s; cpu = CPU seconds per GB delivered, each daemon)");
    println!(
        "{:<26} {:>9} {:>9}  cpu 1 stream | cpu 4 streams",
        "path", "1 stream", "4 streams"
    );
    for row in rows {
        let cpu = if row.one.cpu.is_empty() {
            "(kernel only)".to_string()
        } else {
            format!(
                "{} | {}",
                row.one
                    .cpu_text()
                    .trim_start()
                    .trim_start_matches("cpu s/GB: "),
                row.four
                    .cpu_text()
                    .trim_start()
                    .trim_start_matches("cpu s/GB: ")
            )
        };
        println!(
            "{:<26} {:>9.2} {:>9.2}  {cpu}",
            if row.name == "postern" {
                "postern (direct)"
            } else {
                row.name
            },
            row.one.gbps,
            row.four.gbps
        );
    }
    print_ratios(rows);
    if let (Some(tun), Some(socks)) = (
        rows.iter().find(|r| r.name == "postern TUN (curl)"),
        rows.iter().find(|r| r.name == "postern userspace (curl)"),
    ) {
        println!(
            "ratio postern userspace/TUN (curl): {:.2} (4 downloads: {:.2})",
            socks.one.gbps / tun.one.gbps,
            socks.four.gbps / tun.four.gbps
        );
    }
    if let Some(row) = rows.iter().find(|r| r.name == "postern (relayed)") {
        println!("relayed postern: {:.2} Gbit/s", row.one.gbps);
    }
    let moved: f64 = rows.iter().map(|r| r.one.bytes + r.four.bytes).sum();
    println!("({:.1} GB moved in all)", moved / 1e9);
}

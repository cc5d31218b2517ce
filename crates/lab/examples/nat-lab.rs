//! Builds the network of `postern demo` and measures it: public mappings,
//! whether a direct path can be punched between the client and a gateway,
//! that unsolicited traffic is dropped, and round-trip times.
//!
//!     sudo cargo run --release -p postern-lab --example nat-lab -- [--symmetric] [--delay-ms N] [--hold]
//!
//! Exits 0 when every measurement matches what the NAT kinds promise.

use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use postern_lab::probe::{Reflector, median_rtt, observed_address, punch, udp_socket};
use postern_lab::{Host, Impairment, NatKind};

const USAGE: &str = "usage: nat-lab [--symmetric] [--delay-ms N] [--hold]
  --symmetric   the office router maps every destination to a new port
  --delay-ms N  add N ms each way between each site and the internet
  --hold        keep the lab up until Ctrl-C, to explore it with ip netns exec";

struct Options {
    office: NatKind,
    delay: Duration,
    hold: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        office: NatKind::Cone,
        delay: Duration::ZERO,
        hold: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--symmetric" => options.office = NatKind::Symmetric,
            "--hold" => options.hold = true,
            "--delay-ms" => {
                let value = args.next().ok_or("--delay-ms needs a number")?;
                let ms: u64 = value.parse().map_err(|_| {
                    format!("--delay-ms: {value:?} is not a number of milliseconds")
                })?;
                options.delay = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(1);
        }
    };
    // Block SIGINT/SIGTERM before any thread starts, so every thread inherits
    // the mask and `--hold` can wait for them and still clean up.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(error) = signals.thread_block() {
        eprintln!("nat-lab: cannot block signals: {error}");
        return ExitCode::from(1);
    }
    match run(&options, &signals) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("nat-lab: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(options: &Options, signals: &SigSet) -> Result<bool, Box<dyn std::error::Error>> {
    let net =
        postern_lab::demo::topology(NatKind::Cone, options.office, 2, false, Default::default())?;
    let lab = &net.lab;
    println!("building the lab (namespaces {}*)", lab.prefix());
    let (portal, relay, client) = (&net.portal, &net.relay, &net.client);
    let (nat_home, nat_office) = (&net.nat_home, &net.nat_office);
    let office_hosts = [&net.gateways[0], &net.gateways[1], &net.web];
    if !options.delay.is_zero() {
        // Both directions of each site's internet link: out via the WAN
        // interface, in via the LAN interface.
        for interface in [
            &nat_home.wan,
            &nat_home.lan,
            &nat_office.wan,
            &nat_office.lan,
        ] {
            lab.impair(interface, Impairment::delay(options.delay))?;
        }
    }
    let gateway = &office_hosts[0];
    println!(
        "  internet 198.18.0.0/24: portal .2, relay .3, nat-home .10 (cone), nat-office .20 ({:?})",
        options.office
    );
    println!(
        "  home 192.168.1.0/24: client .10    office 10.0.1.0/24: gateway-1 .11, gateway-2 .12, web .80\n"
    );

    let stun = Reflector::start(relay, "198.18.0.3:3478".parse()?)?;
    let client_socket = udp_socket(client, "0.0.0.0:51820".parse()?)?;
    let gateway_socket = udp_socket(gateway, "0.0.0.0:51820".parse()?)?;
    let second_stun = Reflector::start(portal, "198.18.0.2:3478".parse()?)?;

    let mut all_ok = true;
    let mut check = |what: &str, ok: bool, detail: String| {
        all_ok &= ok;
        println!("  [{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
    };

    let client_public = observed_address(&client_socket, stun.addr);
    let gateway_public = observed_address(&gateway_socket, stun.addr);
    let gateway_public_2 = observed_address(&gateway_socket, second_stun.addr);
    check(
        "client's public address (seen by the relay)",
        client_public.is_some_and(|a| a.ip().to_string() == "198.18.0.10"),
        format!("{client_public:?}"),
    );
    let mapping_stable = gateway_public.is_some() && gateway_public == gateway_public_2;
    check(
        "gateway's mapping toward two servers",
        mapping_stable == (options.office == NatKind::Cone),
        format!(
            "{gateway_public:?} and {gateway_public_2:?} ({})",
            if mapping_stable {
                "endpoint-independent"
            } else {
                "endpoint-dependent"
            }
        ),
    );
    if let (Some(c), Some(g)) = (client_public, gateway_public) {
        let direct = punch(&client_socket, c, &gateway_socket, g);
        check(
            "direct path client <-> gateway-1 by hole punching",
            direct == (options.office == NatKind::Cone),
            if direct {
                "works".into()
            } else {
                "impossible: a relay is needed".into()
            },
        );
    }
    let web: SocketAddr = "10.0.1.80:80".parse()?;
    let reached = relay.enter(|| TcpStream::connect_timeout(&web, Duration::from_millis(300)))?;
    check(
        "unsolicited connection from the internet to the office",
        reached.is_err(),
        "dropped by nat-office".into(),
    );
    match median_rtt(&client_socket, stun.addr, 9) {
        Some(rtt) => check(
            "client -> relay round trip (median of 9)",
            true,
            format!("{:.2} ms", rtt.as_secs_f64() * 1000.0),
        ),
        None => check("client -> relay round trip", false, "no answers".into()),
    }

    if options.hold {
        print_hold_help(&[portal, relay, client, gateway, office_hosts[2]]);
        let signal = signals.wait()?;
        println!("\n{signal:?}: removing the lab");
    }
    println!(
        "{}",
        if all_ok {
            "\nall checks passed"
        } else {
            "\nsome checks FAILED"
        }
    );
    Ok(all_ok)
}

fn print_hold_help(hosts: &[&Host]) {
    println!("\nThe lab is up. Explore it from another terminal, for example:");
    for host in hosts {
        println!(
            "  ip netns exec {} bash      # {}",
            host.namespace(),
            host.name()
        );
    }
    println!("Press Ctrl-C to remove everything.");
}

//! `postern demo` (SPEC F33): the whole system in network namespaces on
//! this machine, configured through the REST API, until Ctrl-C; with
//! `--check`, the scenario runs once and says what it verified.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postern_lab::NatKind;
use postern_lab::demo::{DNS_NAME, DNS_PATTERN, Demo, DemoOptions, PORTAL, WEB, WEB_V6};

use crate::args::DemoArgs;
use crate::daemon;

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !postern_sys::is_root() {
        bail!("needs root: it builds network namespaces, TUN interfaces and NAT rules (try sudo)");
    }
    // Before any thread starts, so every thread inherits the mask and Ctrl-C
    // reaches the wait below, which then removes everything.
    let signals = daemon::block_stop_signals().context("cannot block signals")?;
    let office = if args.symmetric {
        NatKind::Symmetric
    } else {
        NatKind::Cone
    };
    println!("building the lab and starting portal, relay, 2 gateways and a client...");
    let started = Instant::now();
    let demo = Demo::start(DemoOptions {
        postern: std::env::current_exe().context("cannot find the postern binary")?,
        home_nat: if args.symmetric {
            NatKind::Symmetric
        } else {
            NatKind::Cone
        },
        office_nat: office,
        gateways: 2,
        client_in_office: false,
        ipv6: Default::default(),
    })
    .context("the demo did not start")?;
    println!("up in {:.1} s", started.elapsed().as_secs_f64());
    if args.check {
        let passed = check(&demo);
        println!(
            "{}",
            if passed {
                "\nall checks passed"
            } else {
                "\nsome checks FAILED"
            }
        );
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    print_guide(&demo);
    let signal = daemon::wait_for_stop(&signals).context("waiting for Ctrl-C")?;
    println!("\n{signal:?}: stopping everything and removing the lab");
    Ok(ExitCode::SUCCESS)
}

fn print_guide(demo: &Demo) {
    let net = &demo.net;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "postern".into());
    println!(
        "\nThe lab (namespaces {prefix}*):
  internet 198.18.0.0/24   portal .2 (https://{PORTAL}, the lab's CA: {ca}), relay .3
  home 192.168.1.0/24      client .10 behind nat-home ({home:?})
  office 10.0.1.0/24       gateway-1 .11, gateway-2 .12, web .80 behind nat-office ({office:?})

Account \"demo\": site Office, resources \"Office web server\" (10.0.1.80, tcp/80 and icmp) and
\"Office apps\" ({DNS_PATTERN}, resolved by the office's DNS server at 10.0.1.53 that only
the gateways reach), group Engineering with the client's service account, a policy for each.

Try, from another terminal:
  ip netns exec {client} curl http://{WEB}/                      # through the tunnel
  ip netns exec {client} curl -o /dev/null http://{WEB}/bytes/104857600   # 100 MiB
  ip netns exec {client} ping -c3 10.0.1.80
  ip netns exec {client} curl -m3 http://10.0.1.80:22/            # refused: the filter allows 80 only
  ip netns exec {client} dig {DNS_NAME}                # proxy addresses from the client's DNS stub
  ip netns exec {client} curl http://{DNS_NAME}/       # by name: the gateway resolves it in the office
  {exe} client status --status-socket {socket}
  ip netns exec {portal} curl --cacert {ca} -H 'Authorization: Bearer {token}' https://{PORTAL}/api/v1/policies

Admin API token: {token}
Daemon logs: {logs}
Press Ctrl-C to stop everything and remove the lab.",
        prefix = net.lab.prefix(),
        home = net.nat_home.kind,
        office = net.nat_office.kind,
        client = net.client.namespace(),
        portal = net.portal.namespace(),
        ca = demo.pki.ca_file.display(),
        socket = demo.status_socket().display(),
        token = demo.setup.admin_token,
        logs = net.lab.log_dir().display(),
    );
}

/// The scenario once: prints each verification, true if all passed.
fn check(demo: &Demo) -> bool {
    let mut all = true;
    let mut report = |what: &str, outcome: Result<String, String>| {
        let ok = outcome.is_ok();
        all &= ok;
        let detail = outcome.unwrap_or_else(|e| e);
        println!("  [{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
    };
    const SIZE: u64 = 16 << 20;
    report(
        "16 MiB from the web server through the tunnel, every byte checked",
        demo.download(SIZE, Duration::from_secs(60))
            .map(|took| {
                format!(
                    "{:.0} ms ({:.0} Mbit/s)",
                    took.as_secs_f64() * 1000.0,
                    SIZE as f64 * 8.0 / took.as_secs_f64() / 1e6
                )
            })
            .map_err(|e| e.to_string()),
    );
    let expected = if demo.net.nat_office.kind == NatKind::Cone {
        "direct"
    } else {
        "relayed"
    };
    report(
        "path between client and gateway",
        demo.wait_for_path(expected, Duration::from_secs(10))
            .map(|_| expected.to_string())
            .map_err(|path| format!("{path}, expected {expected}")),
    );
    report(
        &format!("{DNS_NAME} by name: proxy addresses from the stub, 1 MiB through the gateway"),
        by_name(demo),
    );
    report(
        &format!("4 MiB from the IPv6 resource {WEB_V6}, every byte checked"),
        WEB_V6
            .parse::<std::net::SocketAddr>()
            .map_err(|e| e.to_string())
            .and_then(|web| {
                demo.download_from(web, 4 << 20, Duration::from_secs(30))
                    .map_err(|e| e.to_string())
            })
            .map(|took| format!("{:.0} ms", took.as_secs_f64() * 1000.0)),
    );
    let started = Instant::now();
    report(
        "tcp/22 on the web server (the filter allows 80 only)",
        match demo.connect(22, Duration::from_secs(3)) {
            Err(e) => Ok(format!(
                "refused in {:.1} ms ({e})",
                started.elapsed().as_secs_f64() * 1000.0
            )),
            Ok(()) => Err("connected: the filter let it through".into()),
        },
    );
    let deleted = Instant::now();
    let removed = demo.api_ok(
        "DELETE",
        &format!("/api/v1/policies/{}", demo.setup.policy_id),
        None,
    );
    let blocked = removed.map_err(|e| e.to_string()).and_then(|_| {
        while deleted.elapsed() < Duration::from_secs(5) {
            // Once revoked, the SYN leaves by the host's default route and
            // dies unanswered (as private addresses do on the internet): a
            // short connect timeout keeps the measure close to the block.
            if demo.connect(80, Duration::from_millis(50)).is_err() {
                return Ok(format!(
                    "blocked {:.0} ms after the policy was deleted",
                    deleted.elapsed().as_secs_f64() * 1000.0
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("still reachable 5 s after the policy was deleted".into())
    });
    report("access revoked when the policy goes", blocked);
    let problems = demo.problems();
    report(
        "daemon logs free of WARN and ERROR",
        if problems.is_empty() {
            Ok("none".into())
        } else {
            Err(problems.join("\n         "))
        },
    );
    all
}

/// Resolves the DNS resource's name through the client's resolv.conf (the
/// stub) and downloads from the first proxy address.
fn by_name(demo: &Demo) -> Result<String, String> {
    let answer = demo
        .net
        .client
        .run("dig", &["+short", "+time=2", DNS_NAME, "A"])
        .map_err(|e| e.to_string())?;
    let proxies: Vec<&str> = answer.lines().collect();
    let first = proxies
        .first()
        .ok_or_else(|| "no answer".to_string())?
        .parse::<std::net::Ipv4Addr>()
        .map_err(|_| format!("not an address: {answer}"))?;
    if !postern_model::plan::DNS_PROXY_V4.contains(&first) {
        return Err(format!("{first} is not a proxy address"));
    }
    let took = demo
        .download_from((first, 80).into(), 1 << 20, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} proxies, {first} served 1 MiB in {:.0} ms",
        proxies.len(),
        took.as_secs_f64() * 1000.0
    ))
}

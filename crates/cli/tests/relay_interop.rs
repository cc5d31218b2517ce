//! `postern relay` against coturn's own tools, and our TURN client against
//! both coturn's `turnserver` and `postern relay`, over real UDP sockets on
//! loopback. Needs the Debian package `coturn` (installed by .ci/run).

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_turn::client::{Client, ClientEvent};
use postern_turn::credentials::{rest_password, rest_username};

const SECRET: &str = "interop-secret";

/// Kills the process when the test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).exists()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install the Debian package coturn (see .ci/run)"
    );
}

/// Waits until something answers STUN Binding on `port`.
fn wait_for_stun(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut request = Vec::new();
    postern_turn::stun::MessageWriter::new(
        &mut request,
        1,
        postern_turn::stun::Class::Request,
        [1; 12],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let _ = socket.send_to(&request, ("127.0.0.1", port));
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("nothing answers STUN on port {port}");
}

fn postern_relay(port: u16, ports: &str) -> Running {
    postern_relay_with(port, ports, &["--allow-loopback-peers"])
}

fn postern_relay_with(port: u16, ports: &str, extra: &[&str]) -> Running {
    postern_relay_on("127.0.0.1", port, ports, extra)
}

/// [`postern_relay_with`] listening on `host` (`[::]`: both families).
fn postern_relay_on(host: &str, port: u16, ports: &str, extra: &[&str]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "relay",
            "--auth-secret",
            SECRET,
            "--public-ip",
            "127.0.0.1",
            "--public-ip",
            "::1",
        ])
        .args(extra)
        .args(["--listen", &format!("{host}:{port}"), "--ports", ports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_for_stun(port);
    running
}

fn coturn(port: u16, min_port: u16, max_port: u16) -> Running {
    require("turnserver");
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--use-auth-secret",
            "--allow-loopback-peers",
        ])
        .args([
            "--static-auth-secret",
            SECRET,
            "--realm",
            "postern",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args([
            "--listening-port",
            &port.to_string(),
            "--min-port",
            &min_port.to_string(),
            "--max-port",
            &max_port.to_string(),
        ])
        .args([
            "--pidfile",
            &format!("/tmp/postern-test-turnserver-{port}.pid"),
            "--log-file",
            "stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_for_stun(port);
    running
}

/// coturn's UDP echo peer on `ip`:`port`.
fn turn_peer(ip: &str, port: u16) -> Running {
    require("turnutils_peer");
    let peer = Running(
        Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    peer
}

fn run(tool: &str, args: &[&str]) -> String {
    require(tool);
    let Output { stdout, stderr, .. } = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}

/// The numbers of uclient's summary line `tot_send_msgs=N, tot_recv_msgs=M`.
fn uclient_totals(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("bytes"))
        .unwrap_or_else(|| panic!("no summary in uclient output:\n{output}"));
    let number = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (number("tot_send_msgs="), number("tot_recv_msgs="))
}

#[test]
fn coturn_stunclient_learns_its_address() {
    let _relay = postern_relay(23478, "23500-23599");
    let output = run("turnutils_stunclient", &["-p", "23478", "127.0.0.1"]);
    assert!(
        output.contains("UDP reflexive addr: 127.0.0.1:"),
        "{output}"
    );
}

#[test]
fn coturn_uclient_relays_to_a_peer_without_loss() {
    let _relay = postern_relay(23578, "23600-23699");
    let _peer = turn_peer("127.0.0.1", 23580);
    let output = run(
        "turnutils_uclient",
        &[
            "-W",
            SECRET,
            "-p",
            "23578",
            "-e",
            "127.0.0.1",
            "-r",
            "23580",
            "-n",
            "200",
            "-l",
            "1000",
            "-c",
            "-z",
            "2",
            "127.0.0.1",
        ],
    );
    assert_eq!(uclient_totals(&output), (200, 200), "{output}");
    assert!(output.contains("Total lost packets 0 "), "{output}");
}

#[test]
fn coturn_uclient_gets_an_ipv6_relay_when_it_asks() {
    let _relay = postern_relay(24178, "24200-24299");
    let _peer = turn_peer("::1", 24180);
    // -x: REQUESTED-ADDRESS-FAMILY IPv6 from an IPv4 client.
    let output = run(
        "turnutils_uclient",
        &[
            "-x",
            "-W",
            SECRET,
            "-p",
            "24178",
            "-e",
            "::1",
            "-r",
            "24180",
            "-n",
            "100",
            "-l",
            "500",
            "-c",
            "-z",
            "2",
            "127.0.0.1",
        ],
    );
    assert_eq!(uclient_totals(&output), (100, 100), "{output}");
    assert!(output.contains("Total lost packets 0 "), "{output}");
}

#[test]
fn coturn_uclient_client_to_client() {
    let _relay = postern_relay(23678, "23700-23799");
    let output = run(
        "turnutils_uclient",
        &[
            "-y",
            "-W",
            SECRET,
            "-p",
            "23678",
            "-n",
            "100",
            "-l",
            "500",
            "-c",
            "-z",
            "2",
            "127.0.0.1",
        ],
    );
    assert_eq!(uclient_totals(&output), (200, 200), "{output}");
    assert!(output.contains("Total lost packets 0 "), "{output}");
}

#[test]
fn coturn_uclient_with_a_wrong_secret_is_refused() {
    let _relay = postern_relay(23778, "23800-23899");
    let output = run(
        "turnutils_uclient",
        &[
            "-W",
            "not-the-secret",
            "-p",
            "23778",
            "-e",
            "127.0.0.1",
            "-r",
            "23780",
            "-n",
            "5",
            "-c",
            "127.0.0.1",
        ],
    );
    assert!(output.contains("Cannot complete Allocation"), "{output}");
}

/// uclient relaying to `peer_port` on 127.0.0.1 through our relay on
/// `port`: its output.
fn uclient_to_loopback(port: u16, peer_port: u16) -> String {
    run(
        "turnutils_uclient",
        &[
            "-W",
            SECRET,
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-n",
            "5",
            "-c",
            "-z",
            "2",
            "127.0.0.1",
        ],
    )
}

#[test]
fn coturn_uclient_is_refused_the_relay_host_s_loopback() {
    // Without --allow-loopback-peers, 127.0.0.1 is the relay host's own
    // loopback: ChannelBind gets 403 and nothing reaches the peer.
    let _relay = postern_relay_with(24378, "24400-24499", &[]);
    let _peer = turn_peer("127.0.0.1", 24380);
    let output = uclient_to_loopback(24378, 24380);
    assert!(output.contains("error 403"), "{output}");
}

#[test]
fn coturn_uclient_is_refused_the_relay_s_own_listening_port() {
    // Even where loopback peers are allowed (a test setup), relayed data
    // never comes back in on the relay's listening port.
    let _relay = postern_relay(24578, "24600-24699");
    let output = uclient_to_loopback(24578, 24578);
    assert!(output.contains("error 403"), "{output}");
}

/// Drives our sans-IO client over a real socket: allocate, bind a channel to
/// a UDP peer on loopback, and send data both ways through the relay.
fn round_trip_through(server: SocketAddr) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let username = rest_username(expiry, "interop");
    let password = rest_password(SECRET.as_bytes(), &username);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut client = Client::new(server, &username, &password, 99, Instant::now());
    let step = |client: &mut Client| -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        while let Some(datagram) = client.poll_transmit() {
            socket.send_to(&datagram, server).unwrap();
        }
        let mut data = Vec::new();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from, server);
            if let Some((peer, payload)) = client.handle_packet(&buf[..n], Instant::now()) {
                data.push((peer, payload.to_vec()));
            }
        }
        client.handle_timeout(Instant::now());
        data
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut bound = false;
    let mut relayed = None;
    while !bound {
        assert!(
            Instant::now() < deadline,
            "no allocation and channel within 10 s"
        );
        step(&mut client);
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Allocated {
                    relayed: address, ..
                } => {
                    relayed = Some(address);
                    client.bind_channel(peer_addr, Instant::now());
                }
                ClientEvent::ChannelBound { peer, .. } => bound = peer == peer_addr,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let relayed = relayed.unwrap();
    // Client -> peer, as ChannelData.
    let mut buf = [0u8; 2048];
    let mut frame = Vec::new();
    assert!(client.encode_to_peer(peer_addr, b"to the peer", &mut frame));
    socket.send_to(&frame, server).unwrap();
    let (n, from) = peer.recv_from(&mut buf).expect("the peer got nothing");
    assert_eq!(&buf[..n], b"to the peer");
    assert_eq!(
        from.port(),
        relayed.port(),
        "data arrives from the relayed address"
    );
    // Peer -> client.
    peer.send_to(b"back to the client", from).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "nothing came back through the relay"
        );
        if let Some((from_peer, payload)) = step(&mut client).pop() {
            assert_eq!(from_peer, peer_addr);
            assert_eq!(payload, b"back to the client");
            break;
        }
    }
    // Renewed credentials of the same id: our relay moves the allocation to
    // them, coturn refuses (441) and the client stays on the first ones;
    // either way the relayed path goes on.
    let renewed = rest_username(expiry + 600, "interop");
    client.set_credentials(
        &renewed,
        &rest_password(SECRET.as_bytes(), &renewed),
        Instant::now(),
    );
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        step(&mut client);
    }
    assert!(client.is_allocated());
    assert_eq!(client.poll_event(), None, "no failure after the renewal");
    assert!(client.encode_to_peer(peer_addr, b"still there", &mut frame));
    socket.send_to(&frame, server).unwrap();
    let (n, _) = peer.recv_from(&mut buf).expect("nothing after the renewal");
    assert_eq!(&buf[..n], b"still there");
    client.deallocate(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.poll_event() != Some(ClientEvent::Deallocated) {
        assert!(Instant::now() < deadline, "no answer to deallocation");
        step(&mut client);
    }
}

#[test]
fn our_client_works_with_coturn() {
    let _coturn = coturn(23878, 23900, 23999);
    round_trip_through("127.0.0.1:23878".parse().unwrap());
}

#[test]
fn our_client_works_with_our_relay() {
    let _relay = postern_relay(23978, "24000-24099");
    round_trip_through("127.0.0.1:23978".parse().unwrap());
}

/// coturn's client as browsers use TURN: RTP and RTCP allocations (the
/// second through the first's EVEN-PORT reservation, from another socket,
/// which the relay's kernel may hash to another worker), several clients
/// at once, on a relay with four workers (not `-c`).
fn uclient_with_rtcp(relay_port: u16, ports: &str, peer: Option<u16>, flags: &[&str]) {
    let _relay = postern_relay_with(
        relay_port,
        ports,
        &["--allow-loopback-peers", "--workers", "4"],
    );
    uclient_run("127.0.0.1", relay_port, peer, flags);
}

/// coturn's client against a relay already listening on `relay_port`, at
/// `host` (an IPv4 or IPv6 loopback address); a peer on `host` too.
fn uclient_run(host: &str, relay_port: u16, peer: Option<u16>, flags: &[&str]) {
    let _peer = peer.map(|port| turn_peer(host, port));
    let relay_port = relay_port.to_string();
    let peer_port = peer.map(|p| p.to_string());
    let mut args = vec![
        "-W",
        SECRET,
        "-p",
        &relay_port,
        "-m",
        "4",
        "-n",
        "50",
        "-l",
        "400",
        "-z",
        "2",
    ];
    if let Some(peer_port) = &peer_port {
        args.extend(["-e", host, "-r", peer_port]);
    }
    args.extend(flags);
    args.push(host);
    let output = run("turnutils_uclient", &args);
    let (sent, received) = uclient_totals(&output);
    assert!(sent > 0, "{output}");
    assert_eq!(sent, received, "{output}");
    assert!(output.contains("Total lost packets 0 "), "{output}");
    // The error code 508 as a number of its own ("tot_send_bytes ~ 50800"
    // is not one).
    assert!(
        !output
            .split(|c: char| !c.is_ascii_digit())
            .any(|number| number == "508"),
        "no Insufficient Capacity: {output}"
    );
}

#[test]
fn coturn_uclient_with_rtcp_and_four_clients_on_four_workers() {
    uclient_with_rtcp(24378, "24400-24599", Some(24380), &[]);
}

#[test]
fn coturn_uclient_client_to_client_with_rtcp_on_four_workers() {
    uclient_with_rtcp(24678, "24700-24899", None, &["-y"]);
}

#[test]
fn coturn_uclient_ipv4_explicitly_with_rtcp_on_four_workers() {
    uclient_with_rtcp(24978, "25000-25199", Some(24980), &["-X"]);
}

/// A relay listening on `[::]` serves both families on one port (UDP and
/// TCP): coturn's client over IPv6 asking for an IPv6 relayed address
/// (`-x`), and over IPv4, each with RTCP and four clients, to a peer of
/// its family.
#[test]
fn coturn_uclient_over_ipv6_and_ipv4_on_one_dual_stack_listener() {
    let _relay = postern_relay_on(
        "[::]",
        26378,
        "26400-26599",
        &["--allow-loopback-peers", "--workers", "4"],
    );
    uclient_run("::1", 26378, Some(26380), &["-x"]);
    uclient_run("127.0.0.1", 26378, Some(26381), &[]);
    uclient_run("::1", 26378, Some(26382), &["-x", "-t"]);
    uclient_run("127.0.0.1", 26378, Some(26383), &["-t"]);
}

/// TURN over TCP (RFC 8656 section 3.1): coturn's client speaks to the
/// relay over TCP while the relayed side stays UDP, with RTCP and four
/// clients on four workers (connections land on whichever worker the
/// kernel picks).
#[test]
fn coturn_uclient_over_tcp_with_rtcp_on_four_workers() {
    uclient_with_rtcp(25278, "25300-25499", Some(25280), &["-t"]);
}

/// The same between two TCP clients of the relay.
#[test]
fn coturn_uclient_client_to_client_over_tcp() {
    uclient_with_rtcp(25578, "25600-25799", None, &["-t", "-y"]);
}

/// TURN over TLS (RFC 8656 section 3.1, `--tls-listen`): coturn's client
/// over TLS (`-t -S`; `-S` alone is DTLS, which the relay does not speak)
/// with RTCP and four clients, the relayed side UDP.
#[test]
fn coturn_uclient_over_tls() {
    let dir = std::env::temp_dir().join(format!("postern-relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("relay.pem"), dir.join("relay.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let _relay = postern_relay_with(
        25878,
        "25900-26099",
        &[
            "--allow-loopback-peers",
            "--workers",
            "4",
            "--tls-listen",
            "127.0.0.1:25879",
            "--tls-cert",
            &cert_path.to_string_lossy(),
            "--tls-key",
            &key_path.to_string_lossy(),
        ],
    );
    let _peer = turn_peer("127.0.0.1", 25880);
    let output = run(
        "turnutils_uclient",
        &[
            "-t",
            "-S",
            "-W",
            SECRET,
            "-p",
            "25879",
            "-m",
            "4",
            "-n",
            "50",
            "-l",
            "400",
            "-z",
            "2",
            "-e",
            "127.0.0.1",
            "-r",
            "25880",
            "127.0.0.1",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let (sent, received) = uclient_totals(&output);
    assert!(sent > 0, "{output}");
    assert_eq!(sent, received, "{output}");
    assert!(output.contains("Total lost packets 0 "), "{output}");
}

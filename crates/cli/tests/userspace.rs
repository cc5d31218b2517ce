#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Issue 22, SPEC 7.7: the client without root. In the lab's client host,
//! as the unprivileged user `nobody` (uid 65534), `postern client up
//! --userspace --socks5 127.0.0.1:1080` signs in with the client's token
//! and serves SOCKS5; curl (also as nobody) downloads through it by address
//! and by a DNS resource's name; what no policy allows is refused with the
//! SOCKS5 reply "connection not allowed by ruleset"; a UDP association
//! carries a DNS query to a resource; revoking the policy resets an open
//! connection within a second; and the host's interfaces, routes, rules and
//! firewall are exactly what they were.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_lab::demo::{Demo, DemoOptions, PORTAL};
use postern_lab::http::payload_byte;
use postern_lab::{Host, NatKind};

const NOBODY: u32 = 65534;
const PROXY: &str = "127.0.0.1:1080";
const MIB16: usize = 16 * 1024 * 1024;

/// Where nobody's files live: a home with the XDG directories, the token,
/// and a copy of the binary (the checkout may not be readable by others).
struct Nobody {
    home: PathBuf,
    postern: PathBuf,
}

impl Nobody {
    fn new(demo: &Demo) -> Nobody {
        let home = demo.data_dir().join("nobody");
        for dir in ["", "run", "state", "downloads"] {
            std::fs::create_dir_all(home.join(dir)).unwrap();
        }
        let postern = home.join("postern");
        std::fs::copy(env!("CARGO_BIN_EXE_postern"), &postern).unwrap();
        std::fs::write(home.join("client.token"), &demo.setup.client_token).unwrap();
        std::fs::set_permissions(
            home.join("client.token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(home.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_all(&home);
        // The lab's data directory (the CA's certificate) must be passable.
        let mut dir = home.parent();
        while let Some(d) = dir {
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
            }
            dir = d.parent();
        }
        Nobody { home, postern }
    }

    /// `program args` in `host` as nobody, with nobody's home and XDG
    /// directories and nothing of root's environment.
    fn command(&self, host: &Host, program: &Path, args: &[&str]) -> Command {
        self.command_as(NOBODY, host, program, args)
    }

    /// The same as another user `uid`.
    fn command_as(&self, uid: u32, host: &Host, program: &Path, args: &[&str]) -> Command {
        let mut command = host.command("setpriv");
        command
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", self.home.join("run"))
            .env("XDG_STATE_HOME", self.home.join("state"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        command
    }
}

fn chown_all(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path());
        }
    }
}

/// Everything the client could have changed on its host.
fn host_state(host: &Host) -> String {
    [
        ("ip", &["-d", "link", "show"][..]),
        ("ip", &["-4", "route", "show", "table", "all"]),
        ("ip", &["-6", "route", "show", "table", "all"]),
        ("ip", &["-4", "rule"]),
        ("ip", &["-6", "rule"]),
        ("nft", &["list", "ruleset"]),
    ]
    .iter()
    .map(|(program, args)| {
        format!(
            "$ {program} {}\n{}",
            args.join(" "),
            host.run(program, args).unwrap()
        )
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// The bytes of `/bytes/N` are the lab's payload pattern.
fn intact(body: &[u8], size: usize) -> Result<(), String> {
    if body.len() != size {
        return Err(format!("{} of {size} bytes", body.len()));
    }
    match body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != payload_byte(i as u64))
    {
        Some(at) => Err(format!("differs at byte {at}")),
        None => Ok(()),
    }
}

/// SOCKS5 CONNECT from the test (in the client's namespace): the reply
/// code and, if it succeeded, the stream.
fn socks_connect(host: &Host, target: &str, port: u16) -> (u8, Option<TcpStream>) {
    let target = target.to_string();
    host.enter(move || {
        let mut stream =
            TcpStream::connect_timeout(&PROXY.parse().unwrap(), Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(&[5, 1, 0]).unwrap();
        let mut choice = [0u8; 2];
        stream.read_exact(&mut choice).unwrap();
        assert_eq!(choice, [5, 0], "no authentication");
        let mut request = vec![5, 1, 0];
        match target.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                request.push(1);
                request.extend_from_slice(&ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                request.push(4);
                request.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                request.extend_from_slice(&[3, target.len() as u8]);
                request.extend_from_slice(target.as_bytes());
            }
        }
        request.extend_from_slice(&port.to_be_bytes());
        stream.write_all(&request).unwrap();
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply[..4]).unwrap();
        let rest = match reply[3] {
            1 => 6,
            4 => 18,
            other => panic!("reply address type {other}"),
        };
        let mut bound = vec![0u8; rest];
        stream.read_exact(&mut bound).unwrap();
        (reply[1], (reply[1] == 0).then_some(stream))
    })
    .unwrap()
}

/// A DNS query for `name` (A) through a UDP association to `server`; the
/// addresses answered.
fn dns_through_association(host: &Host, server: SocketAddr, name: &str) -> Vec<IpAddr> {
    let name = name.to_string();
    host.enter(move || {
        let mut control =
            TcpStream::connect_timeout(&PROXY.parse().unwrap(), Duration::from_secs(5)).unwrap();
        control
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        control.write_all(&[5, 1, 0]).unwrap();
        let mut choice = [0u8; 2];
        control.read_exact(&mut choice).unwrap();
        control.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
        let mut reply = [0u8; 10];
        control.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], [5, 0, 0, 1], "UDP ASSOCIATE answered");
        let relay = SocketAddr::from((
            [reply[4], reply[5], reply[6], reply[7]],
            u16::from_be_bytes([reply[8], reply[9]]),
        ));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        let IpAddr::V4(server_ip) = server.ip() else {
            panic!("IPv4 server")
        };
        let mut datagram = vec![0, 0, 0, 1];
        datagram.extend_from_slice(&server_ip.octets());
        datagram.extend_from_slice(&server.port().to_be_bytes());
        datagram.extend_from_slice(&query);
        // The first datagram asks for access; retried like a resolver.
        let mut buffer = [0u8; 1500];
        for _ in 0..10 {
            socket.send_to(&datagram, relay).unwrap();
            let Ok((n, _)) = socket.recv_from(&mut buffer) else {
                continue;
            };
            let answer = &buffer[..n];
            assert_eq!(answer[..4], [0, 0, 0, 1], "answered from an IPv4 address");
            assert_eq!(&answer[4..8], &server_ip.octets(), "from the server");
            let message = &answer[10..];
            assert_eq!(message[..2], [0x12, 0x34], "the answer to the query");
            // The A records' addresses: the last 4 bytes of each answer.
            let answers = u16::from_be_bytes([message[6], message[7]]) as usize;
            return (0..answers)
                .map(|i| {
                    let end = message.len() - i * 16;
                    IpAddr::from([
                        message[end - 4],
                        message[end - 3],
                        message[end - 2],
                        message[end - 1],
                    ])
                })
                .collect();
        }
        panic!("no answer through the association");
    })
    .unwrap()
}

#[test]
fn the_userspace_client_needs_no_root_and_carries_apps_through_socks5() {
    let demo = Demo::start_without_client(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })
    .unwrap_or_else(|e| panic!("the lab did not start: {e}"));
    // The office's DNS server as a resource (UDP 53), with a policy; and a
    // host with no policy at all.
    demo.add_resource(
        "Office DNS",
        "ip",
        "10.0.1.53",
        r#"[{"protocol":"udp","ports":"53"}]"#,
    )
    .unwrap();
    let unlisted = serde_json::json!({
        "name": "Payroll (no policy)",
        "type": "ip",
        "address": "10.0.1.90",
        "site_id": demo.setup.site_id,
    });
    demo.api_ok("POST", "/api/v1/resources", Some(&unlisted.to_string()))
        .unwrap();
    let client = demo.net.client.clone();
    let before = host_state(&client);
    let nobody = Nobody::new(&demo);
    let portal = format!("https://{PORTAL}");
    let ca = demo.pki.ca_arg();
    let token = nobody.home.join("client.token");
    let daemon = nobody.command(
        &client,
        &nobody.postern,
        &[
            "client",
            "up",
            "--userspace",
            "--socks5",
            PROXY,
            "--portal",
            &portal,
            &ca,
            "--token-file",
            &token.to_string_lossy(),
            "--name",
            "ci-runner",
        ],
    );
    let mut daemon = client.spawn(daemon).unwrap();

    // `client status` as nobody, on nobody's default socket.
    let status = |json: bool| {
        let mut args = vec!["client", "status"];
        if json {
            args.push("--json");
        }
        let output = nobody
            .command(&client, &nobody.postern, &args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status(true).contains(&demo.setup.resource_id) {
        assert!(
            Instant::now() < deadline,
            "the userspace client never listed its resources:\n{}\n{}",
            daemon.stderr(),
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let socket = nobody.home.join("run/postern/client.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        NOBODY,
        "the status socket is nobody's, in nobody's runtime directory"
    );

    // curl as nobody: 16 MiB by address, by a DNS resource's name, and
    // 1 MiB over IPv6, each checked byte for byte.
    let curl = |url: &str, file: &str| {
        let out = nobody.home.join("downloads").join(file);
        let started = Instant::now();
        let output = nobody
            .command(
                &client,
                Path::new("/usr/bin/curl"),
                &[
                    "-sS",
                    "--fail",
                    "--max-time",
                    "60",
                    "--socks5-hostname",
                    PROXY,
                    "-o",
                    &out.to_string_lossy(),
                    url,
                ],
            )
            .output()
            .unwrap();
        let took = started.elapsed();
        (output, out, took)
    };
    for (url, size, file) in [
        ("http://10.0.1.80/bytes/16777216", MIB16, "by-address"),
        ("http://web.apps.corp.test/bytes/16777216", MIB16, "by-name"),
        ("http://[fd10::3]/bytes/1048576", 1 << 20, "ipv6"),
    ] {
        let (output, out, took) = curl(url, file);
        assert!(
            output.status.success(),
            "curl {url}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            daemon.stderr()
        );
        let body = std::fs::read(&out).unwrap();
        intact(&body, size).unwrap_or_else(|e| panic!("{url}: {e}"));
        eprintln!(
            "curl --socks5-hostname {url}: {size} bytes in {took:?} ({:.0} Mbit/s, including curl's start)",
            size as f64 * 8.0 / took.as_secs_f64() / 1e6
        );
    }

    // Refused with "connection not allowed by ruleset" (2): a resource
    // without a policy, a port the resource's filter leaves out, an
    // address of no resource. curl says so too.
    for (target, port) in [("10.0.1.90", 80), ("10.0.1.80", 22), ("10.0.9.9", 80)] {
        let (reply, _) = socks_connect(&client, target, port);
        assert_eq!(reply, 2, "{target}:{port} must be not allowed");
    }
    // curl's "proxy handshake error", naming the reply code.
    let (output, _, _) = curl("http://10.0.1.90/", "refused");
    assert_eq!(output.status.code(), Some(97));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("(2)"), "curl names the reply: {said}");

    // Another user on the same host shares loopback, not this user's
    // access: the proxy offers it no method (curl: 97).
    let stranger = nobody
        .command_as(
            NOBODY - 1,
            &client,
            Path::new("/usr/bin/curl"),
            &[
                "-sS",
                "--max-time",
                "10",
                "--socks5-hostname",
                PROXY,
                "-o",
                "/dev/null",
                "http://10.0.1.80/bytes/10",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        stranger.status.code(),
        Some(97),
        "another user must be refused: {}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    assert!(
        daemon
            .stderr()
            .contains("refused a SOCKS5 client of another user"),
        "{}",
        daemon.stderr()
    );

    // UDP ASSOCIATE: a DNS query to the office's server, a resource.
    let addresses = dns_through_association(
        &client,
        "10.0.1.53:53".parse().unwrap(),
        "web.apps.corp.test",
    );
    assert!(
        addresses.contains(&IpAddr::from([10, 0, 1, 80])),
        "{addresses:?}"
    );

    let text = status(false);
    assert!(
        text.contains("userspace: SOCKS5 proxy on 127.0.0.1:1080, no TUN"),
        "{text}"
    );
    assert!(text.contains("granted"), "{text}");

    // Revocation: a download in progress is reset within a second of the
    // policy's deletion.
    let (reply, stream) = socks_connect(&client, "10.0.1.80", 80);
    assert_eq!(reply, 0);
    let mut stream = stream.unwrap();
    stream
        .write_all(b"GET /bytes/4294967296 HTTP/1.1\r\nHost: web\r\n\r\n")
        .unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    while received < 1 << 20 {
        received += stream.read(&mut buffer).unwrap();
    }
    let revoked = Instant::now();
    demo.api_ok(
        "DELETE",
        &format!("/api/v1/policies/{}", demo.setup.policy_id),
        None,
    )
    .unwrap();
    let ended = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break "closed",
            Ok(n) => received += n,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(error) => panic!("the connection was not ended: {error}\n{}", daemon.stderr()),
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "still open 10 s after the revocation"
        );
    };
    let took = revoked.elapsed();
    eprintln!(
        "revocation: the open connection was {ended} {took:?} after the policy was deleted ({received} bytes before)"
    );
    assert_eq!(ended, "reset", "a cut-off download must not look whole");
    assert!(
        took < Duration::from_secs(1),
        "the connection lived {took:?} after the revocation"
    );
    // And a new one is refused.
    assert_eq!(socks_connect(&client, "10.0.1.80", 80).0, 2);

    // Nothing on the host changed: no TUN, no route, no rule, no table.
    let after = host_state(&client);
    assert_eq!(before, after, "the userspace client changed the host");
    assert!(!after.contains("tun"), "{after}");

    daemon.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = daemon.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        exit.is_some_and(|status| status.success()),
        "the daemon stops cleanly on SIGTERM: {exit:?}\n{}",
        daemon.stderr()
    );
    let log = daemon.stderr();
    assert!(log.contains("SOCKS5 proxy listening"), "{log}");
    assert!(
        !log.contains("panicked") && !log.contains(" ERROR "),
        "{log}"
    );
    drop(demo);
}

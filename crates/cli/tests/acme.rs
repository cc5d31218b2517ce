#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! `postern portal --acme-domain` against a real ACME CA: Let's Encrypt's
//! test server `pebble` (Debian package `pebble`), validating with
//! tls-alpn-01 on the portal's own listener and resolving the name through
//! `pebble-challtestsrv`'s DNS (every name is 127.0.0.1). Pebble issues
//! 40-second certificates here, so the portal's renewal (a third of the
//! life left) comes within the test: first certificate, a restart that
//! serves the kept one at once, then a renewal. All on loopback.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_lab::pki::{TestCa, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Running, TempDir, free_port, postern, wait_listening};

const DOMAIN: &str = "portal.postern.test";
/// Pebble's certificate lifetime for this test: the portal renews after
/// two thirds of it.
const LIFETIME_SECS: u64 = 40;

struct Pebble {
    _dns: Running,
    _ca: Running,
    directory: String,
    /// The CA of pebble's own HTTPS (what `--acme-ca-file` takes).
    https_ca: std::path::PathBuf,
    /// The root pebble signs portal certificates with (new at each start).
    issuing_root: CertificateDer<'static>,
}

fn start_pebble(dir: &Path, portal_port: u16) -> Pebble {
    let pebble = support::tool("pebble", "pebble");
    let challtestsrv = support::tool("pebble-challtestsrv", "pebble");
    let https = TestCa::new("pebble https CA").unwrap();
    let https_ca = https.write_ca(&dir.join("pebble-ca.pem")).unwrap();
    let server = https
        .write_server(
            dir,
            "pebble",
            &["127.0.0.1", "localhost"],
            Validity::Current,
        )
        .unwrap();
    let (dns_port, dns_management, acme_port, management_port) =
        (free_port(), free_port(), free_port(), free_port());

    let mut dns = Running(
        Command::new(challtestsrv)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "pebble-challtestsrv",
    );
    wait_listening(&mut dns, dns_management);

    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{management_port}"),
        "certificate": server.certificate,
        "privateKey": server.key,
        "httpPort": 5002,
        // The CA validates tls-alpn-01 here: the portal's listener.
        "tlsPort": portal_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": LIFETIME_SECS,
    }});
    let config_path = dir.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut ca = Running(
        Command::new(pebble)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random validation delays, and no nonces refused at random
            // (instant-acme retries them, but a test should not depend on
            // luck).
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order validated anew (pebble reuses half of the valid
            // authorizations by default): the renewal proves the portal
            // answers tls-alpn-01 again.
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "pebble",
    );
    wait_listening(&mut ca, management_port);
    wait_listening(&mut ca, acme_port);

    let tls = https.client_config().unwrap();
    let management = std::net::SocketAddr::from(([127, 0, 0, 1], management_port));
    let root = postern_lab::http::request_tls(
        management,
        &tls,
        "GET",
        "/roots/0",
        None,
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(root.status, 200, "pebble's issuing root: {}", root.text());
    let issuing_root = CertificateDer::from_pem_slice(&root.body).unwrap();
    Pebble {
        _dns: dns,
        _ca: ca,
        directory: format!("https://127.0.0.1:{acme_port}/dir"),
        https_ca,
        issuing_root,
    }
}

/// The leaf certificate the portal serves for `DOMAIN`, verified against
/// pebble's issuing root (name, chain, dates), and `/healthz`'s status
/// over that connection; `None` while the handshake fails.
fn served(port: u16, root: &CertificateDer<'static>) -> Option<(Vec<u8>, u16)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from(DOMAIN).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let status = String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())?;
    let leaf = stream.conn.peer_certificates()?.first()?.to_vec();
    Some((leaf, status))
}

/// Waits up to `within` for the portal to serve a verified certificate
/// other than `not`.
fn wait_served(
    portal: &mut Running,
    port: u16,
    root: &CertificateDer<'static>,
    not: Option<&[u8]>,
    within: Duration,
) -> Vec<u8> {
    let started = Instant::now();
    loop {
        if let Some((leaf, status)) = served(port, root) {
            assert_eq!(status, 200, "/healthz over the ACME certificate");
            if Some(leaf.as_slice()) != not {
                return leaf;
            }
        }
        if let Some(status) = portal.0.try_wait().unwrap() {
            panic!("the portal exited: {status}");
        }
        assert!(
            started.elapsed() < within,
            "no (new) certificate from pebble within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_portal(dir: &Path, port: u16, pebble: &Pebble, log: &str) -> Running {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    let mut portal = Running(
        postern()
            .args(["portal", "--database"])
            .arg(format!("sqlite://{}/data/portal.db", dir.display()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--acme-domain", DOMAIN])
            .args(["--acme-directory", &pebble.directory])
            .arg("--acme-ca-file")
            .arg(&pebble.https_ca)
            .args(["--acme-email", "ops@postern.test"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        "the portal",
    );
    wait_listening(&mut portal, port);
    portal
}

#[test]
fn the_portal_gets_and_renews_its_certificate_from_an_acme_ca() {
    let dir = TempDir::new("acme");
    let port = free_port();
    let pebble = start_pebble(&dir.0, port);

    let mut portal = start_portal(&dir.0, port, &pebble, "first.log");
    let first = wait_served(
        &mut portal,
        port,
        &pebble.issuing_root,
        None,
        Duration::from_secs(30),
    );
    let cache = dir.0.join("data/acme");
    for file in ["account.json", "certificate.key", "certificate.pem"] {
        assert!(
            cache.join(file).is_file(),
            "{file} kept beside the database"
        );
    }
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["account.json", "certificate.key"] {
        let mode = std::fs::metadata(cache.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is private: {mode:o}");
    }
    portal.stop();
    let log = std::fs::read_to_string(dir.0.join("first.log")).unwrap();
    assert!(
        log.contains("answered an ACME tls-alpn-01 validation"),
        "pebble validated on the portal's own listener: {log}"
    );

    // A restart serves the kept certificate at once: no order, no gap.
    let mut portal = start_portal(&dir.0, port, &pebble, "second.log");
    let (leaf, status) = served(port, &pebble.issuing_root).expect("served at once");
    assert_eq!((leaf.as_slice(), status), (first.as_slice(), 200));
    let log = std::fs::read_to_string(dir.0.join("second.log")).unwrap();
    assert!(
        log.contains("serving the certificate kept from ACME"),
        "{log}"
    );

    // With a third of its 40 s left, the portal orders the next one and
    // serves it without a restart.
    let renewed = wait_served(
        &mut portal,
        port,
        &pebble.issuing_root,
        Some(&first),
        Duration::from_secs(LIFETIME_SECS + 10),
    );
    assert_ne!(renewed, first);
    portal.stop();
    let log = std::fs::read_to_string(dir.0.join("second.log")).unwrap();
    assert!(log.contains("ACME certificate issued"), "{log}");
    assert!(
        log.contains("answered an ACME tls-alpn-01 validation"),
        "the renewal was validated on the portal's listener: {log}"
    );
    assert!(
        !log.contains("ACME order failed"),
        "the renewal went through at the first try: {log}"
    );
}

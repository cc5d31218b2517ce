#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The portal's own HTTPS and WSS (`postern portal --tls-cert --tls-key`):
//! certificates from a test CA made here, clients on loopback, and the
//! certificate replaced while connections stay open.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postern_portal::serve::{TlsCert, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::channel::{Peer, key};
use support::{TempDb, TestApp};

/// The name every test certificate is for; clients resolve it to loopback.
const NAME: &str = "portal.test";

/// A certificate authority that the test's clients may trust.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, as the PEM files an operator has.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for [`NAME`] with common name `cn` and a fresh key.
    fn leaf(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![NAME.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A TLS client that trusts this CA only.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// An HTTPS client that trusts this CA only and finds [`NAME`] at `addr`.
    fn https(&self, addr: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap())
            .resolve(NAME, addr)
            .build()
            .unwrap()
    }
}

/// The two PEM files in a directory of their own, removed at drop.
struct Files {
    _db: TempDb,
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let db = TempDb::new(tag);
        let dir = db.dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        Files { _db: db, dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn install(&self, leaf: &Leaf) {
        std::fs::write(self.cert(), &leaf.cert_pem).unwrap();
        std::fs::write(self.key(), &leaf.key_pem).unwrap();
    }
}

/// The leaf certificate the portal at `addr` presents to a client trusting
/// `client`'s roots; the handshake's error if it fails.
async fn served_leaf(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await?;
    let (_, connection) = stream.get_ref();
    Ok(connection.peer_certificates().unwrap()[0].clone())
}

/// A portal on loopback over TLS with `leaf`, and its seeded account.
struct World {
    _app: TestApp,
    addr: SocketAddr,
    tls: Arc<TlsCert>,
    files: Files,
    gateway_token: String,
    _db: TempDb,
}

async fn world(tag: &str, leaf: &Leaf) -> World {
    let db = TempDb::new(tag);
    let app = TestApp::open(&db.url(), "acme").await;
    let seeded = support::seed(&app).await;
    let files = Files::new(&format!("{tag}-files"));
    files.install(leaf);
    let tls = TlsCert::load(&files.cert(), &files.key()).unwrap();
    let addr = app.serve_tls(tls.clone()).await;
    World {
        _app: app,
        addr,
        tls,
        files,
        gateway_token: seeded.gateway_token,
        _db: db,
    }
}

impl World {
    async fn gateway(&self, ca: &Ca, device: &str, seed: u8) -> Peer {
        let mut peer = Peer::connect_tls(
            self.addr,
            NAME,
            ca.client(),
            "/v1/gateway",
            &self.gateway_token,
            device,
            &key(seed),
        )
        .await
        .unwrap();
        let init = peer.next().await;
        assert_eq!(init["type"], "init", "{init}");
        peer
    }
}

/// The portal still answers on `peer`'s channel: an unknown message gets its
/// error frame back.
async fn still_answers(peer: &mut Peer, reference: &str) {
    peer.send(json!({"type": "teleport", "ref": reference}))
        .await;
    let error = peer.next().await;
    assert_eq!(
        (error["type"].as_str(), error["ref"].as_str()),
        (Some("error"), Some(reference)),
        "{error}"
    );
}

#[tokio::test]
async fn https_serves_pages_and_the_channels_over_wss() {
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf("portal-1");
    let w = world("tls-serve", &leaf).await;
    let https = ca.https(w.addr);
    let port = w.addr.port();

    let health = https
        .get(format!("https://{NAME}:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let page = https
        .get(format!("https://{NAME}:{port}/acme/sign_in"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.version(), reqwest::Version::HTTP_11);
    assert!(
        page.headers().contains_key("strict-transport-security"),
        "{:?}",
        page.headers()
    );
    assert!(page.text().await.unwrap().contains("<form"));
    // The same port speaks no plain HTTP.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", w.addr))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    assert_eq!(served_leaf(w.addr, ca.client()).await.unwrap(), leaf.der);
    let mut gateway = w.gateway(&ca, "gw-1", 1).await;
    still_answers(&mut gateway, "over-wss").await;
    // A bad token is still refused with its HTTP status over TLS.
    let refused = Peer::connect_tls(
        w.addr,
        NAME,
        ca.client(),
        "/v1/gateway",
        "not-a-token",
        "gw-2",
        &key(2),
    )
    .await;
    assert_eq!(refused.err(), Some(401));
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_the_handshake() {
    let ca = Ca::new("Test CA");
    let other = Ca::new("Other CA");
    let w = world("tls-other-ca", &ca.leaf("portal-1")).await;

    let error = served_leaf(w.addr, other.client()).await.unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let https = other.https(w.addr);
    let refused = https
        .get(format!("https://{NAME}:{}/healthz", w.addr.port()))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The portal itself is fine: the right CA still gets through.
    served_leaf(w.addr, ca.client()).await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_holds_up_no_other_handshake() {
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf("portal-1");
    let w = world("tls-silent", &leaf).await;
    // Connected, and never says hello.
    let _silent = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let _half = {
        let mut half = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03, 0x01])
            .await
            .unwrap();
        half
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let served = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        served_leaf(w.addr, ca.client()),
    )
    .await
    .expect("a handshake behind a silent connection");
    assert_eq!(served.unwrap(), leaf.der);
}

#[tokio::test]
async fn a_reload_reaches_new_connections_and_open_ones_keep_working() {
    let ca = Ca::new("Test CA");
    let first = ca.leaf("portal-1");
    let second = ca.leaf("portal-2");
    let w = world("tls-reload", &first).await;
    let mut before = w.gateway(&ca, "gw-1", 1).await;
    let old_fingerprint = w.tls.fingerprint();

    w.files.install(&second);
    // Written but not reloaded: still the first.
    assert_eq!(served_leaf(w.addr, ca.client()).await.unwrap(), first.der);
    w.tls.reload().unwrap();
    assert_eq!(served_leaf(w.addr, ca.client()).await.unwrap(), second.der);
    assert_ne!(w.tls.fingerprint(), old_fingerprint);

    // The channel opened with the first certificate goes on.
    still_answers(&mut before, "after-reload").await;
    let mut after = w.gateway(&ca, "gw-2", 2).await;
    still_answers(&mut after, "new-channel").await;
    let https = ca.https(w.addr);
    let health = https
        .get(format!("https://{NAME}:{}/healthz", w.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_old_certificate() {
    let ca = Ca::new("Test CA");
    let first = ca.leaf("portal-1");
    let w = world("tls-bad-reload", &first).await;
    let fingerprint = w.tls.fingerprint();
    let cert = w.files.cert();
    let key_file = w.files.key();
    let other = ca.leaf("portal-2");

    let cases: [(&str, &str, &str, &Path); 4] = [
        (
            "not PEM at all\n",
            &first.key_pem,
            "holds no PEM certificate",
            &cert,
        ),
        (&first.cert_pem, "", "holds no PEM private key", &key_file),
        // A new certificate whose key was not copied yet.
        (
            &other.cert_pem,
            &first.key_pem,
            "is not the key of the certificate",
            &key_file,
        ),
        (
            &first.cert_pem,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "unusable key",
            &key_file,
        ),
    ];
    for (cert_pem, key_pem, needle, named) in cases {
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key_file, key_pem).unwrap();
        let error = w.tls.reload().unwrap_err().to_string();
        assert!(error.contains(needle), "{needle}: {error}");
        assert!(error.contains(&named.display().to_string()), "{error}");
        assert_eq!(w.tls.fingerprint(), fingerprint, "{needle}");
        assert_eq!(
            served_leaf(w.addr, ca.client()).await.unwrap(),
            first.der,
            "{needle}"
        );
    }
    std::fs::remove_file(&cert).unwrap();
    let missing = w.tls.reload().unwrap_err();
    assert!(
        matches!(&missing, TlsError::Certificate { path, .. } if *path == cert),
        "{missing}"
    );
    assert_eq!(served_leaf(w.addr, ca.client()).await.unwrap(), first.der);

    // Fixed files are taken.
    w.files.install(&other);
    w.tls.reload().unwrap();
    assert_eq!(served_leaf(w.addr, ca.client()).await.unwrap(), other.der);
}

#[test]
fn loading_fails_with_the_file_named() {
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf("portal-1");
    let files = Files::new("tls-load");
    files.install(&leaf);
    assert!(TlsCert::load(&files.cert(), &files.key()).is_ok());
    let missing = files.dir.join("missing.pem");

    let error = TlsCert::load(&missing, &files.key())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "cannot read the TLS certificate file {}: ",
            missing.display()
        )),
        "{error}"
    );
    let error = TlsCert::load(&files.cert(), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "cannot read the TLS key file {}: ",
            missing.display()
        )),
        "{error}"
    );
    // Certificate and key swapped: neither file holds what it should.
    let error = TlsCert::load(&files.key(), &files.cert()).unwrap_err();
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
    std::fs::write(files.key(), ca.leaf("portal-2").key_pem).unwrap();
    let error = TlsCert::load(&files.cert(), &files.key()).unwrap_err();
    assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "the TLS key file {} is not the key of the certificate in {}",
            files.key().display(),
            files.cert().display()
        )
    );
}

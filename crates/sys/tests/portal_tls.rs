#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The daemons' portal channel over TLS (SPEC 7.2), against a WebSocket
//! server on loopback with certificates from a test CA: a portal the
//! daemon trusts through `--ca-file` is reached; one signed by another CA,
//! an expired certificate and one for another name are refused with a line
//! that says which.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use postern_sys::channel::{self, ChannelConfig, Incoming, Party};
use postern_sys::trust::PortalTrust;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A server certificate for `names` (DNS names or IP addresses),
    /// expired if asked; (certificate chain PEM, key PEM).
    fn server(&self, names: &[&str], expired: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    fn write_pem(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }
}

/// A TLS WebSocket server on loopback that greets every connection.
async fn portal(certificate: &str, key: &str) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut socket) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let hello = tokio_tungstenite::tungstenite::Message::Text("hello".into());
                let _ = socket.send(hello).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    address
}

/// What a channel to `portal` with `trust` hears first.
async fn first_words(portal: String, trust: PortalTrust) -> Vec<String> {
    let mut channel = channel::open(ChannelConfig {
        portal,
        party: Party::Gateway,
        token: "t".into(),
        query: vec![("device_id".into(), "d".into())],
        trust,
    })
    .unwrap();
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), channel.incoming.recv()).await;
        match next.unwrap().unwrap() {
            Incoming::Connected => heard.push("connected".to_string()),
            Incoming::Text(text) => heard.push(text),
            Incoming::Lost { error, .. } => return vec![error],
            Incoming::Unauthorized => return vec!["unauthorized".to_string()],
            Incoming::VersionRefused(reason) => return vec![reason],
        }
    }
    heard
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("postern-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_portal_whose_ca_is_given_is_reached_and_others_are_refused_with_a_reason() {
    let dir = TempDir::new("channel");
    let ca = Ca::new("Postern test CA");
    let ca_file = ca.write_pem(&dir.0);
    let trusted = PortalTrust::new(Some(&ca_file), false).unwrap();

    let (certificate, key) = ca.server(&["localhost", "127.0.0.1"], false);
    let good = portal(&certificate, &key).await;
    assert_eq!(
        first_words(
            format!("https://127.0.0.1:{}", good.port()),
            trusted.clone()
        )
        .await,
        vec!["connected", "hello"]
    );
    assert_eq!(
        first_words(
            format!("https://localhost:{}", good.port()),
            trusted.clone()
        )
        .await,
        vec!["connected", "hello"]
    );

    // Without the CA file, the same portal is a stranger.
    let system_only = PortalTrust::new(None, false).unwrap();
    let refused = first_words(format!("https://127.0.0.1:{}", good.port()), system_only).await;
    assert!(
        refused[0].contains("not signed by a trusted CA") && refused[0].contains("--ca-file"),
        "{refused:?}"
    );

    // Another CA's certificate for the right name.
    let (certificate, key) = Ca::new("Mallory CA").server(&["127.0.0.1"], false);
    let other = portal(&certificate, &key).await;
    let refused = first_words(
        format!("https://127.0.0.1:{}", other.port()),
        trusted.clone(),
    )
    .await;
    assert!(
        refused[0].contains("not signed by a trusted CA"),
        "{refused:?}"
    );

    // Our CA, but expired.
    let (certificate, key) = ca.server(&["127.0.0.1"], true);
    let expired = portal(&certificate, &key).await;
    let refused = first_words(
        format!("https://127.0.0.1:{}", expired.port()),
        trusted.clone(),
    )
    .await;
    assert!(refused[0].contains("has expired"), "{refused:?}");

    // Our CA, but for another name.
    let (certificate, key) = ca.server(&["portal.example.com"], false);
    let misnamed = portal(&certificate, &key).await;
    let refused = first_words(format!("https://127.0.0.1:{}", misnamed.port()), trusted).await;
    assert!(
        refused[0].contains("not valid for 127.0.0.1"),
        "{refused:?}"
    );
}

//! HTTPS and WSS on the portal's own listener (`postern portal --tls-cert
//! --tls-key`, or `--acme-domain`): rustls with the ring provider, a
//! certificate that can be replaced while the portal runs
//! ([`TlsCert::reload`] on SIGHUP, or a renewal from ACME), the answers to
//! ACME tls-alpn-01 challenges, and a listener that completes each TLS
//! handshake on its own task before axum sees the connection.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Why a certificate or key could not be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: pem::Error },
    #[error(
        "the TLS certificate file {} holds no PEM certificate (BEGIN CERTIFICATE)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS key file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: pem::Error },
    #[error(
        "the TLS key file {} holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the TLS key file {} holds an unusable key: {reason}", path.display())]
    UnusableKey {
        path: PathBuf,
        reason: rustls::Error,
    },
    #[error("the TLS certificate file {} holds an unusable certificate: {reason}", path.display())]
    UnusableCertificate {
        path: PathBuf,
        reason: rustls::Error,
    },
    #[error(
        "the TLS key file {} is not the key of the certificate in {}",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Config(rustls::Error),
}

/// The ALPN protocol of ACME's tls-alpn-01 validation (RFC 8737): a
/// handshake offering it wants the challenge certificate, not the portal.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The portal's certificate and key: read from two PEM files and re-read on
/// [`reload`](Self::reload), or installed by the ACME task. The TLS server
/// asks it for the current one at every handshake, so connections already
/// open keep theirs.
pub struct TlsCert {
    /// Where [`reload`](Self::reload) reads; `None` when ACME supplies the
    /// certificate.
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
    /// `None` only under ACME before the first certificate arrived: until
    /// then handshakes fail (there is nothing to serve).
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// tls-alpn-01 answers by domain, while an ACME order is open.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for TlsCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCert")
            .field("files", &self.files)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl TlsCert {
    /// Reads the certificate chain (leaf first) and its private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<TlsCert>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(&provider, cert_path, key_path)?;
        Ok(Arc::new(TlsCert {
            files: Some((cert_path.to_path_buf(), key_path.to_path_buf())),
            provider,
            current: RwLock::new(Some(Arc::new(current))),
            challenges: RwLock::default(),
        }))
    }

    /// No certificate yet: the ACME task installs one
    /// ([`install_files`](Self::install_files)) and answers its challenges
    /// through this.
    pub fn for_acme() -> Arc<TlsCert> {
        Arc::new(TlsCert {
            files: None,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: RwLock::default(),
            challenges: RwLock::default(),
        })
    }

    /// Reads both files again and serves the new certificate to every new
    /// connection. On any error the current certificate stays. Under ACME
    /// there are no files to read: nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        if let Some((cert, key)) = &self.files {
            self.install_files(cert, key)?;
        }
        Ok(())
    }

    /// Serves the certificate in `cert` and `key` to every new connection
    /// from now on, if both read well.
    pub(crate) fn install_files(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fresh = read(&self.provider, cert, key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fresh));
        Ok(())
    }

    /// SHA-256 of the leaf certificate being served, hex: what `openssl
    /// x509 -fingerprint -sha256` shows, for the logs ("none" before ACME
    /// delivered the first).
    pub fn fingerprint(&self) -> String {
        let Some(current) = self.current() else {
            return "none".to_string();
        };
        let leaf = current.cert.first().map(|der| der.as_ref()).unwrap_or(&[]);
        Sha256::digest(leaf)
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers tls-alpn-01 handshakes for `domain` with `certificate`
    /// (self-signed, carrying the key authorization's digest).
    pub(crate) fn set_challenge(&self, domain: &str, certificate: CertifiedKey) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), Arc::new(certificate));
    }

    pub(crate) fn clear_challenges(&self) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The server side: TLS 1.2 and 1.3, HTTP/1.1 only (axum is built
    /// without HTTP/2; WebSockets upgrade over HTTP/1.1), and ACME's
    /// `acme-tls/1` when ACME supplies the certificate.
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if self.files.is_none() {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for TlsCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        if validation {
            let name = hello.server_name()?.to_ascii_lowercase();
            let answer = self
                .challenges
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
            // Logged here, where the answer is chosen: a validator may close
            // the connection as soon as it has the certificate, before the
            // handshake completes.
            if answer.is_some() {
                tracing::info!(domain = %name, "answered an ACME tls-alpn-01 validation");
            }
            return answer;
        }
        self.current()
    }
}

fn read(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|reason| TlsError::Certificate {
            path: cert.to_path_buf(),
            reason,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_path_buf(),
        },
        reason => TlsError::Key {
            path: key.to_path_buf(),
            reason,
        },
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|reason| TlsError::UnusableKey {
            path: key.to_path_buf(),
            reason,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type whose public half rustls cannot tell: nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(reason) => Err(TlsError::UnusableCertificate {
            path: cert.to_path_buf(),
            reason,
        }),
    }
}

/// TLS handshakes under way at once; past it the listener stops accepting
/// until some finish (the kernel's backlog holds the rest).
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands axum only those whose TLS handshake
/// completed; each handshake runs on its own task, so a slow or silent
/// client holds up nobody else.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        TlsListener {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }

    fn start_handshake(&mut self, tcp: TcpStream, remote: SocketAddr) {
        super::no_delay(&tcp);
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                // An ACME validation ends at the handshake: no HTTP follows.
                Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => None,
                Ok(Ok(stream)) => Some((stream, remote)),
                Ok(Err(error)) => {
                    tracing::debug!(%remote, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as axum needs: both branches are.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((tcp, remote)) => self.start_handshake(tcp, remote),
                        Err(error) => accept_error(error).await,
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener does: a connection gone before it was accepted is
/// nothing; anything else (out of file descriptors) is logged, and accepting
/// pauses a second.
async fn accept_error(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

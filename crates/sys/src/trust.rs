//! Which portals the daemons talk to (SPEC 7.2). Bearer tokens, the TURN
//! secret and every preshared key cross the portal channel, so an
//! `https://` portal is verified against the system's roots plus an
//! optional `--ca-file`, and a plain `http://` portal is accepted only on
//! loopback or when the operator says `--insecure-http`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use url::{Host, Url};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the CA file {0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("the CA file {path} holds a certificate that cannot be a root: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("portal URL {0:?} is not http:// or https://")]
    Scheme(String),
    #[error(
        "portal URL {0:?} is plain http:// off loopback: tokens, the TURN secret and preshared \
         keys would cross the network in clear text; use https:// (with --ca-file for a private \
         CA), or pass --insecure-http for a lab"
    )]
    InsecureHttp(String),
}

/// The daemon's trust in portals: roots for `https://` and whether plain
/// `http://` off loopback is allowed.
#[derive(Clone)]
pub struct PortalTrust {
    tls: Arc<rustls::ClientConfig>,
    insecure_http: bool,
}

impl std::fmt::Debug for PortalTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalTrust")
            .field("insecure_http", &self.insecure_http)
            .finish_non_exhaustive()
    }
}

impl PortalTrust {
    /// The system's roots (whatever `/etc/ssl/certs` holds; none is not an
    /// error, an `https://` portal then needs `--ca-file`) and the
    /// certificates of `ca_file`.
    pub fn new(ca_file: Option<&Path>, insecure_http: bool) -> Result<Self, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        let (added, ignored) = roots.add_parsable_certificates(system.certs);
        tracing::debug!(added, ignored, "system roots");
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|error| TrustError::CaFile {
                    path: shown.clone(),
                    reason: error.to_string(),
                })?;
            if certificates.is_empty() {
                return Err(TrustError::NoCertificate(shown));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| TrustError::BadCertificate {
                        path: shown.clone(),
                        reason: error.to_string(),
                    })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TrustError::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PortalTrust {
            tls: Arc::new(tls),
            insecure_http,
        })
    }

    /// The rustls configuration for connections to the portal.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// Checks a portal URL: `https://`, or `http://` on loopback or with
    /// `--insecure-http`. True when the portal is plain http off loopback
    /// (allowed, and worth a warning).
    pub fn check(&self, portal: &str) -> Result<bool, TrustError> {
        let url = Url::parse(portal).map_err(|_| TrustError::Scheme(portal.to_string()))?;
        match url.scheme() {
            "https" => Ok(false),
            "http" if on_loopback(&url) => Ok(false),
            "http" if self.insecure_http => Ok(true),
            "http" => Err(TrustError::InsecureHttp(portal.to_string())),
            _ => Err(TrustError::Scheme(portal.to_string())),
        }
    }
}

/// Whether the URL's host is this machine (traffic never leaves it).
fn on_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// One line for a failed TLS handshake with the portal, saying what to do.
pub fn describe_tls_error(error: &rustls::Error, portal_host: &str) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            C::UnknownIssuer => "the portal's certificate is not signed by a trusted CA (give \
                                 the CA with --ca-file)"
                .to_string(),
            C::Expired | C::ExpiredContext { .. } => {
                "the portal's certificate has expired".to_string()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the portal's certificate is not valid yet (check the clocks)".to_string()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("the portal's certificate is not valid for {portal_host}")
            }
            C::Revoked => "the portal's certificate is revoked".to_string(),
            other => format!("the portal's certificate is refused: {other:?}"),
        },
        other => format!("TLS with the portal failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_unless_asked() {
        let strict = PortalTrust::new(None, false).unwrap();
        for fine in [
            "https://portal.example.com",
            "https://198.18.0.2:8443/prefix",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert!(!strict.check(fine).unwrap(), "{fine}");
        }
        for refused in ["http://198.18.0.2:8080", "http://portal.example.com"] {
            assert!(
                matches!(strict.check(refused), Err(TrustError::InsecureHttp(_))),
                "{refused}"
            );
        }
        assert!(matches!(
            strict.check("ftp://portal"),
            Err(TrustError::Scheme(_))
        ));
        let lab = PortalTrust::new(None, true).unwrap();
        assert!(lab.check("http://198.18.0.2:8080").unwrap());
        assert!(!lab.check("https://portal.example.com").unwrap());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("postern-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            PortalTrust::new(Some(&empty), false),
            Err(TrustError::NoCertificate(_))
        ));
        let missing = dir.join("missing.pem");
        assert!(matches!(
            PortalTrust::new(Some(&missing), false),
            Err(TrustError::CaFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

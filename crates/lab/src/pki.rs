//! A certificate authority for the lab: the portal serves a certificate
//! from it over TLS, as a real one would, and the daemons trust it through
//! `--ca-file`. Tests also make certificates a daemon must refuse: from
//! another CA, expired, or for another name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PublicKeyData,
};
use rustls::pki_types::CertificateDer;

use crate::error::{LabError, Result};

fn pki_error(error: rcgen::Error) -> LabError {
    LabError::Io(std::io::Error::other(format!("test certificate: {error}")))
}

/// A test CA.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What a server certificate should be like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
}

/// A server certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// The SHA-256 of the certificate's public key (its
    /// SubjectPublicKeyInfo): what a browser pins (Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it in base64).
    pub fn spki_sha256(&self) -> Result<[u8; 32]> {
        let pem = std::fs::read_to_string(&self.key)?;
        let key = KeyPair::from_pem(&pem).map_err(pki_error)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        Ok(hash)
    }
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(pki_error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(pki_error)?;
        Ok(TestCa { issuer })
    }

    /// Writes the CA certificate (what `--ca-file` takes) to `path`.
    pub fn write_ca(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.issuer.pem())?;
        Ok(path.to_path_buf())
    }

    /// Writes a server certificate for `names` (DNS names or IP addresses)
    /// to `<stem>.pem` and its key to `<stem>.key` (0600) in `dir`.
    pub fn write_server(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        validity: Validity,
    ) -> Result<CertificateFiles> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(pki_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "postern lab portal");
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().map_err(pki_error)?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(pki_error)?;
        let files = CertificateFiles {
            certificate: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.certificate, certificate.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A rustls client configuration that trusts this CA only (for the
    /// lab's own requests to the portal).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let der: CertificateDer<'static> = self.issuer.der().clone();
        roots
            .add(der)
            .map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A new file, mode 0600 (a key).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

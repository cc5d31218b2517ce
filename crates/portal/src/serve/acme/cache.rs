//! The ACME account and the last certificate on disk (`--acme-cache`), so
//! a restart serves at once and does not spend the CA's rate limits. Keys
//! are written mode 0600 in a 0700 directory, each file by rename so a
//! crash leaves the old one or the new one.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use instant_acme::AccountCredentials;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{AcmeError, AcmeSettings, Validity};

pub(super) struct Cache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// What the kept certificate was ordered for: another directory (staging
/// to production) or other domains mean a new order.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct StoredOrder {
    directory: String,
    domains: BTreeSet<String>,
}

impl StoredOrder {
    fn of(settings: &AcmeSettings) -> StoredOrder {
        StoredOrder {
            directory: settings.directory.clone(),
            domains: settings.domains.iter().cloned().collect(),
        }
    }
}

impl Cache {
    pub(super) fn open(dir: &Path) -> Result<Cache, AcmeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AcmeError::Io {
                action: "create the ACME cache directory",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The account kept for `directory`, if any.
    pub(super) fn account(&self, directory: &str) -> Result<Option<AccountCredentials>, AcmeError> {
        let Some(stored) = self.read_json::<StoredAccount>("account.json")? else {
            return Ok(None);
        };
        Ok((stored.directory == directory).then_some(stored.credentials))
    }

    pub(super) fn store_account(
        &self,
        directory: &str,
        credentials: &AccountCredentials,
    ) -> Result<(), AcmeError> {
        let stored = serde_json::json!({ "directory": directory, "credentials": credentials });
        self.write("account.json", stored.to_string().as_bytes(), 0o600)
    }

    /// The kept certificate if it was ordered for these settings: its
    /// validity and its chain and key files.
    pub(super) fn certificate(
        &self,
        settings: &AcmeSettings,
    ) -> Result<Option<(Validity, PathBuf, PathBuf)>, AcmeError> {
        let Some(stored) = self.read_json::<StoredOrder>("certificate.json")? else {
            return Ok(None);
        };
        if stored != StoredOrder::of(settings) {
            tracing::info!("the kept ACME certificate was ordered for other domains or another CA");
            return Ok(None);
        }
        let cert = self.path("certificate.pem");
        let chain = std::fs::read(&cert).map_err(|source| AcmeError::Io {
            action: "read",
            path: cert.clone(),
            source,
        })?;
        let validity = validity(&chain).map_err(|reason| AcmeError::Damaged {
            path: cert.clone(),
            reason,
        })?;
        Ok(Some((validity, cert, self.path("certificate.key"))))
    }

    /// Keeps a new certificate; answers its validity and files.
    pub(super) fn store_certificate(
        &self,
        settings: &AcmeSettings,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(Validity, PathBuf, PathBuf), AcmeError> {
        let validity = validity(chain_pem.as_bytes()).map_err(|reason| AcmeError::Damaged {
            path: self.path("certificate.pem"),
            reason: format!("as downloaded: {reason}"),
        })?;
        self.write("certificate.key", key_pem.as_bytes(), 0o600)?;
        self.write("certificate.pem", chain_pem.as_bytes(), 0o644)?;
        let order = serde_json::to_vec(&StoredOrder::of(settings)).unwrap_or_default();
        self.write("certificate.json", &order, 0o644)?;
        Ok((
            validity,
            self.path("certificate.pem"),
            self.path("certificate.key"),
        ))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, AcmeError> {
        let path = self.path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AcmeError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| AcmeError::Damaged {
                path,
                reason: error.to_string(),
            })
    }

    fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), AcmeError> {
        let path = self.path(name);
        let temporary = self.path(&format!(".{name}.new"));
        let failed = |source| AcmeError::Io {
            action: "write",
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .map_err(failed)?;
        file.write_all(contents).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&temporary, &path).map_err(failed)
    }
}

/// The validity of the first (leaf) certificate of a PEM chain.
fn validity(chain_pem: &[u8]) -> Result<Validity, String> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .ok_or("no certificate in it")?
        .map_err(|error| error.to_string())?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&leaf).map_err(|error| error.to_string())?;
    let time = |asn1: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(asn1.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(Validity {
        not_before: time(parsed.validity().not_before),
        not_after: time(parsed.validity().not_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, domains: &[&str], directory: &str) -> AcmeSettings {
        AcmeSettings {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            directory: directory.to_string(),
            email: None,
            cache_dir: dir.to_path_buf(),
            ca_file: None,
        }
    }

    fn self_signed(name: &str, days: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let now = rcgen::date_time_ymd(2030, 1, 1);
        params.not_before = now;
        params.not_after = now + time_days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn time_days(days: i64) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(days).unwrap() * 86_400)
    }

    #[test]
    fn a_kept_certificate_is_reused_only_for_the_same_domains_and_ca() {
        let dir = std::env::temp_dir().join(format!("postern-acme-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::open(&dir).unwrap();
        let wanted = settings(&dir, &["a.test", "b.test"], "https://ca.test/dir");
        assert!(
            cache.certificate(&wanted).unwrap().is_none(),
            "nothing kept yet"
        );

        let (chain, key) = self_signed("a.test", 90);
        let (stored, _, key_path) = cache.store_certificate(&wanted, &chain, &key).unwrap();
        let day = 86_400;
        assert_eq!(
            stored
                .not_after
                .duration_since(stored.not_before)
                .unwrap()
                .as_secs(),
            90 * day
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");

        let reordered = settings(&dir, &["b.test", "a.test"], "https://ca.test/dir");
        let (kept, _, _) = cache.certificate(&reordered).unwrap().unwrap();
        assert_eq!(kept, stored, "the order of --acme-domain does not matter");
        let more = settings(&dir, &["a.test", "b.test", "c.test"], "https://ca.test/dir");
        assert!(cache.certificate(&more).unwrap().is_none());
        let staging = settings(&dir, &["a.test", "b.test"], "https://staging.test/dir");
        assert!(cache.certificate(&staging).unwrap().is_none());

        std::fs::write(dir.join("certificate.pem"), "garbage").unwrap();
        assert!(matches!(
            cache.certificate(&wanted),
            Err(AcmeError::Damaged { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

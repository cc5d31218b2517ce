//! Secrets at rest (SPEC F31): identity-provider client secrets are sealed
//! with AES-256-GCM under the portal's secret key, which never enters the
//! database. The key comes from `POSTERN_SECRET_KEY` or a key file that the
//! first start generates (0600). A check value in `settings` makes a portal
//! started with the wrong key stop at once instead of failing every sign-in.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::token::random_bytes;
use crate::store::{Store, StoreError, settings};

/// What sealed values start with, so a later key scheme can be told apart.
const SEALED_PREFIX: &str = "v1:";
const CHECK_SETTING: &str = "secret_key_check";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the secret key must be 32 bytes in base64 (44 characters); generate one with `openssl rand -base64 32`"
    )]
    BadKey,
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the secret key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the secret key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error(
        "this database was set up with a different secret key: start the portal with the key \
         it was first started with (POSTERN_SECRET_KEY or --secret-key-file)"
    )]
    WrongKey,
    #[error("a sealed secret in the database is damaged or was sealed with another key")]
    Unseal,
    #[error(transparent)]
    Random(#[from] crate::auth::token::RandomError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The portal's 256-bit secret key.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Parses base64 of exactly 32 bytes (whitespace around it ignored).
    pub fn parse(text: &str) -> Result<SecretKey, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(key))
    }

    pub fn generate() -> Result<SecretKey, SecretError> {
        let mut key = [0u8; 32];
        random_bytes(&mut key)?;
        Ok(SecretKey(key))
    }

    /// Reads the key file, or creates it (mode 0600, parent directories too)
    /// with a fresh key if it does not exist. Whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), SecretError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)
                    .map_err(|source| SecretError::Read {
                        path: shown.clone(),
                        source,
                    })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(SecretError::Permissions {
                        path: shown,
                        mode: mode & 0o777,
                    });
                }
                Ok((SecretKey::parse(&text)?, false))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = SecretKey::generate()?;
                let create = |source| SecretError::Create {
                    path: shown.clone(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(create)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(create)?;
                writeln!(file, "{}", STANDARD.encode(key.0)).map_err(create)?;
                file.sync_all().map_err(create)?;
                Ok((key, true))
            }
            Err(source) => Err(SecretError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Seals `plaintext`, bound to `context` (the row's id): a sealed value
    /// copied into another row does not open.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; 12];
        random_bytes(&mut nonce)?;
        let cipher = Aes256Gcm::new(&self.0.into());
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(out)))
    }

    /// Whether `value` is sealed (plaintext stored before sealing is not).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(SEALED_PREFIX)
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|bytes| bytes.len() >= 12 + 16)
            .ok_or(SecretError::Unseal)?;
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Unseal)?;
        let cipher = Aes256Gcm::new(&self.0.into());
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plain).map_err(|_| SecretError::Unseal)
    }

    /// A keyed hash for values that must be found again but not read back
    /// (OIDC `state`), and for the key check.
    pub fn mac(&self, label: &str, value: &str) -> String {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A key for one purpose (`label`), derived so that no two purposes
    /// share key material (the cluster bus's HMAC key, say).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"postern derive v1\0");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Stores this key's check value on first use; later starts must present
    /// the same key.
    pub async fn check_against(&self, store: &Store) -> Result<(), SecretError> {
        let mine = self.mac("key check", "postern");
        let mut tx = store.write().await?;
        let stored = settings::get_or_create(&mut tx, CHECK_SETTING, || mine.clone()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if stored == mine {
            Ok(())
        } else {
            Err(SecretError::WrongKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_context() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("client-secret", "provider-1").unwrap();
        assert!(!sealed.contains("client-secret"));
        assert_eq!(key.open(&sealed, "provider-1").unwrap(), "client-secret");
        assert!(key.open(&sealed, "provider-2").is_err());
        let other = SecretKey::generate().unwrap();
        assert!(other.open(&sealed, "provider-1").is_err());
        // Two seals of one value differ (fresh nonce).
        assert_ne!(key.seal("client-secret", "provider-1").unwrap(), sealed);
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        for bad in [tampered.as_str(), "", "v1:", "v1:AAAA", "v2:abc", "v1:!!"] {
            assert!(key.open(bad, "provider-1").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        let key = STANDARD.encode([7u8; 32]);
        assert!(SecretKey::parse(&format!(" {key}\n")).is_ok());
        assert!(SecretKey::parse(&STANDARD.encode([7u8; 31])).is_err());
        assert!(SecretKey::parse("not base64!").is_err());
    }

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("postern-key-{}", std::process::id()));
        let path = dir.join("sub/secret.key");
        let (created, fresh) = SecretKey::load_or_create(&path).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, fresh) = SecretKey::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(read.0, created.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::load_or_create(&path),
            Err(SecretError::Permissions { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

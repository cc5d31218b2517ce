//! Certificates from an ACME CA (RFC 8555), such as Let's Encrypt, for the
//! portal's own listener (`postern portal --acme-domain`). The CA validates
//! with tls-alpn-01 (RFC 8737) on that same listener, so nothing else has to
//! listen (no port 80); it must reach the listener at port 443 of each
//! domain. The protocol is instant-acme's; this file only decides when to
//! order, answers the challenges through [`TlsCert`] and keeps the account
//! and certificate on disk, so a restart serves at once and orders nothing.

mod cache;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

use super::tls::{TlsCert, TlsError};
use cache::Cache;
pub use schedule::{Validity, retry_delay};

/// Let's Encrypt's production directory: the default of `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// What to order, from where, and where to keep it.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// DNS names the certificate is for (the first is its subject).
    pub domains: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// An address the CA may write to about the certificates (expiry,
    /// revocations); Let's Encrypt no longer mails expiry notices.
    pub email: Option<String>,
    /// Account key and certificate, kept across restarts (keys mode 0600).
    pub cache_dir: PathBuf,
    /// Trust only this CA certificate for the ACME server's own HTTPS (a
    /// private CA such as step-ca or pebble); default: the system roots.
    pub ca_file: Option<PathBuf>,
}

/// Why an order, or reading or writing the cache, failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME server {directory}: cannot {action}: {source}")]
    Protocol {
        directory: String,
        action: &'static str,
        source: instant_acme::Error,
    },
    #[error(
        "ACME server {directory} offers no tls-alpn-01 challenge for {domain}; the portal can only answer that one"
    )]
    NoTlsAlpn { directory: String, domain: String },
    #[error("ACME server {directory}: the authorization for {domain} is {status:?}")]
    Authorization {
        directory: String,
        domain: String,
        status: AuthorizationStatus,
    },
    #[error(
        "ACME server {directory}: the order ended {status:?} (did the CA reach port 443 of every domain?)"
    )]
    Order {
        directory: String,
        status: OrderStatus,
    },
    #[error("cannot make the tls-alpn-01 certificate: {0}")]
    Challenge(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ACME cache file {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("the certificate from the ACME server is unusable: {0}")]
    Tls(#[from] TlsError),
}

/// Serves the cached certificate if there is a fitting one, then keeps a
/// valid certificate in `tls`: orders one now when there is none, and
/// renews with a third of its life left, retrying failures with backoff.
/// The task runs as long as the runtime.
pub fn start(settings: AcmeSettings, tls: Arc<TlsCert>) -> Result<(), AcmeError> {
    let cache = Cache::open(&settings.cache_dir)?;
    let cached = match cache.certificate(&settings) {
        Ok(Some((validity, cert, key))) => match tls.install_files(&cert, &key) {
            Ok(()) => {
                tracing::info!(
                    domains = ?settings.domains,
                    not_after = %schedule::display(validity.not_after),
                    sha256 = %tls.fingerprint(),
                    "serving the certificate kept from ACME"
                );
                Some(validity)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot serve the kept ACME certificate; ordering a new one");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "ordering a new certificate");
            None
        }
    };
    tokio::spawn(keep_certificate(settings, cache, tls, cached));
    Ok(())
}

async fn keep_certificate(
    settings: AcmeSettings,
    cache: Cache,
    tls: Arc<TlsCert>,
    mut current: Option<Validity>,
) {
    let mut failures = 0;
    loop {
        if let Some(validity) = current {
            let renew_at = validity.renew_at();
            tracing::info!(
                renew_at = %schedule::display(renew_at),
                not_after = %schedule::display(validity.not_after),
                "next ACME renewal"
            );
            // In slices, so a clock that jumps (a host waking from
            // suspend) is noticed within the hour.
            while let Ok(left) = renew_at.duration_since(SystemTime::now()) {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
            }
        }
        tracing::info!(domains = ?settings.domains, directory = %settings.directory, "ordering a certificate from the ACME server");
        match order(&settings, &cache, &tls).await {
            Ok(validity) => {
                failures = 0;
                current = Some(validity);
                tracing::info!(
                    domains = ?settings.domains,
                    not_after = %schedule::display(validity.not_after),
                    sha256 = %tls.fingerprint(),
                    "ACME certificate issued; new connections get it"
                );
            }
            Err(error) => {
                failures += 1;
                let delay = retry_delay(failures);
                tracing::error!(
                    %error,
                    failures,
                    retry_in_secs = delay.as_secs(),
                    still_serving = %tls.fingerprint(),
                    "ACME order failed"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One order: account, authorizations answered by tls-alpn-01, a new key
/// and CSR, the chain; written to the cache, then served.
async fn order(
    settings: &AcmeSettings,
    cache: &Cache,
    tls: &TlsCert,
) -> Result<Validity, AcmeError> {
    let directory = settings.directory.clone();
    let failed = |action: &'static str| {
        let directory = directory.clone();
        move |source| AcmeError::Protocol {
            directory,
            action,
            source,
        }
    };
    let account = account(settings, cache).await?;
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|domain| Identifier::Dns(domain.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(failed("create an order"))?;
    // The challenge answers live only as long as the order is open.
    let _answers = ClearOnDrop(tls);
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(failed("read an authorization"))?;
        let domain = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Authorization {
                    directory,
                    domain,
                    status,
                });
            }
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| AcmeError::NoTlsAlpn {
                directory: directory.clone(),
                domain: domain.clone(),
            })?;
        let digest = challenge.key_authorization().digest();
        tls.set_challenge(
            &domain,
            challenge_certificate(tls.provider(), &domain, digest.as_ref())?,
        );
        challenge
            .set_ready()
            .await
            .map_err(failed("start the validation"))?;
    }
    let status = order
        .poll_ready(&RetryPolicy::default())
        .await
        .map_err(failed("wait for the validation"))?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order { directory, status });
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(failed("finalize the order"))?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(failed("download the certificate"))?;
    let (validity, cert, key) = cache.store_certificate(settings, &chain_pem, &key_pem)?;
    tls.install_files(&cert, &key)?;
    Ok(validity)
}

/// The account kept in the cache for this directory, or a new one (which
/// agrees to the CA's terms of service, as `--acme-domain` says).
async fn account(settings: &AcmeSettings, cache: &Cache) -> Result<Account, AcmeError> {
    let failed = |action: &'static str| {
        let directory = settings.directory.clone();
        move |source| AcmeError::Protocol {
            directory,
            action,
            source,
        }
    };
    let builder = match &settings.ca_file {
        Some(ca_file) => Account::builder_with_root(ca_file),
        None => Account::builder(),
    }
    .map_err(failed("set up HTTPS to it"))?;
    if let Some(credentials) = cache.account(&settings.directory)? {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(failed("read its directory"));
    }
    let contact = settings
        .email
        .as_ref()
        .map(|email| format!("mailto:{email}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials): (Account, AccountCredentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(failed("create an account"))?;
    cache.store_account(&settings.directory, &credentials)?;
    tracing::info!(account = account.id(), "ACME account created");
    Ok(account)
}

/// The self-signed certificate a tls-alpn-01 validation expects: the
/// domain as its name and the key authorization's SHA-256 in the critical
/// acmeIdentifier extension (RFC 8737 section 3).
fn challenge_certificate(
    provider: &CryptoProvider,
    domain: &str,
    digest: &[u8],
) -> Result<CertifiedKey, AcmeError> {
    let failed = |error: rcgen::Error| AcmeError::Challenge(error.to_string());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let certificate = params.self_signed(&key).map_err(failed)?;
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|error| AcmeError::Challenge(error.to_string()))?;
    Ok(CertifiedKey::new(vec![certificate.der().clone()], signing))
}

/// Takes the tls-alpn-01 answers down when an order ends, however it ends.
struct ClearOnDrop<'a>(&'a TlsCert);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear_challenges();
    }
}

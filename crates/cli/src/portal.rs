//! `postern portal`, `postern portal init` and `postern portal relay-token`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use postern_portal::auth::email::Mailer;
use postern_portal::geoip::GeoIp;
use postern_portal::secrets::SecretKey;
use postern_portal::serve::TlsCert;
use postern_portal::state::AppState;
use postern_portal::{Store, setup};

use crate::args::PortalArgs;
use crate::daemon;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn open(database: &str) -> anyhow::Result<Store> {
    Store::open(database)
        .await
        .with_context(|| format!("cannot open the database {}", redact(database)))
}

/// Database URLs may carry a password: never print it.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

pub fn init(database: &str, account: &str, admin_email: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let store = open(database).await?;
        let initialized = setup::init_account(&store, account, admin_email).await?;
        store.close().await;
        eprintln!(
            "created account {} with admin {}; the admin API token follows (shown once)",
            initialized.account.slug, admin_email
        );
        println!("{}", initialized.token);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn backup(database: &str, output: &std::path::Path) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let store = open(database).await?;
        store.backup_to(output).await?;
        store.close().await;
        eprintln!(
            "wrote {} (mode 0600); keep it with the portal's secret key, which it needs",
            output.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn restore(database: &str, input: &std::path::Path) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let copied = postern_portal::backup::restore(input, database).await?;
        eprintln!(
            "restored {} rows in {} tables from {}; start the portal with the secret key of the \
             portal that made the backup",
            copied.rows,
            copied.tables,
            input.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn relay_token(database: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let store = open(database).await?;
        let token = setup::relay_token(&store).await?;
        store.close().await;
        println!("{token}");
        Ok(ExitCode::SUCCESS)
    })
}

/// The key that seals identity-provider secrets: `POSTERN_SECRET_KEY`, or
/// the key file (created on first start).
fn secret_key(args: &PortalArgs) -> anyhow::Result<SecretKey> {
    if let Some(text) = &args.secret_key {
        return SecretKey::parse(text).context("POSTERN_SECRET_KEY");
    }
    let path = match &args.secret_key_file {
        Some(path) => path.clone(),
        None => beside_database(&args.database, "secret.key"),
    };
    let (key, created) = SecretKey::load_or_create(&path)?;
    if created {
        tracing::info!(
            path = %path.display(),
            "created a new secret key; back it up with the database (identity-provider secrets cannot be read without it)"
        );
    }
    Ok(key)
}

/// `name` beside a SQLite database, else in ./postern-data: where the
/// portal keeps what belongs with its data (the secret key, ACME's cache).
fn beside_database(database: &str, name: &str) -> std::path::PathBuf {
    let sqlite = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|path| !path.is_empty() && *path != ":memory:");
    match sqlite.and_then(|path| std::path::Path::new(path).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => std::path::Path::new("postern-data").join(name),
    }
}

/// The SMTP password from `--smtp-password-file` or `POSTERN_SMTP_PASSWORD`
/// (review L6); a password inside `--smtp-url` is used as it is, with a
/// warning.
fn smtp_password(args: &PortalArgs) -> anyhow::Result<Option<String>> {
    if args
        .smtp_url
        .as_deref()
        .is_some_and(postern_portal::auth::email::smtp_url_has_password)
    {
        tracing::warn!(
            "--smtp-url carries the SMTP password: on the command line every user of this \
             machine sees it in ps; use --smtp-password-file or POSTERN_SMTP_PASSWORD"
        );
    }
    match (&args.smtp_password_file, &args.smtp_password) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the SMTP password file {}", path.display())
            })?;
            // One line; a password may have spaces, so only its end goes.
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                bail!("the SMTP password file {} is empty", path.display());
            }
            Ok(Some(password.to_string()))
        }
        (None, Some(password)) if !password.is_empty() => Ok(Some(password.clone())),
        _ => Ok(None),
    }
}

/// The certificate for `--tls-cert`/`--tls-key`, read again at every
/// SIGHUP; a reload that fails keeps the certificate being served.
fn tls(cert: &Path, key: &Path) -> anyhow::Result<Arc<TlsCert>> {
    let tls = TlsCert::load(cert, key).context("cannot serve HTTPS")?;
    tracing::info!(
        cert = %cert.display(),
        key = %key.display(),
        sha256 = %tls.fingerprint(),
        "serving HTTPS and WSS; SIGHUP reads the certificate and key again"
    );
    let reloading = Arc::clone(&tls);
    let cert = cert.to_path_buf();
    daemon::on_hangup(move || match reloading.reload() {
        Ok(()) => tracing::info!(
            cert = %cert.display(),
            sha256 = %reloading.fingerprint(),
            "SIGHUP: reloaded the TLS certificate; new connections get it"
        ),
        Err(error) => tracing::error!(
            %error,
            sha256 = %reloading.fingerprint(),
            "SIGHUP: kept the old TLS certificate"
        ),
    })
    .context("cannot watch for SIGHUP")?;
    Ok(tls)
}

/// Keeps an ACME certificate in `tls` (a cached one at once, if it fits).
fn start_acme(args: &PortalArgs, tls: Arc<TlsCert>) -> anyhow::Result<()> {
    let cache_dir = match &args.acme_cache {
        Some(dir) => dir.clone(),
        None => beside_database(&args.database, "acme"),
    };
    if args.listen.port() != 443 {
        tracing::info!(
            listen = %args.listen,
            "ACME validates on port 443 of each domain: forward it to --listen"
        );
    }
    let settings = postern_portal::serve::acme::AcmeSettings {
        domains: args.acme_domain.clone(),
        directory: args.acme_directory.clone(),
        email: args.acme_email.clone(),
        cache_dir,
        ca_file: args.acme_ca_file.clone(),
    };
    postern_portal::serve::acme::start(settings, tls).context("cannot start ACME")
}

pub fn serve(args: PortalArgs) -> anyhow::Result<ExitCode> {
    daemon::init_logging(args.daemon.log_format);
    runtime()?.block_on(async {
        // Before the database: a bad certificate stops the start having
        // created nothing.
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls(cert, key)?),
            _ if !args.acme_domain.is_empty() => Some(TlsCert::for_acme()),
            _ => None,
        };
        if tls.is_some()
            && let Some(url) = args.external_url.as_deref().filter(|u| u.starts_with("http://"))
        {
            tracing::warn!(
                external_url = url,
                "the portal serves HTTPS but --external-url says http://: links and OIDC redirects will not work"
            );
        }
        let store = open(&args.database).await?;
        let listener = postern_sys::tcp::listen(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // A descriptor per connected client.
        match postern_sys::tcp::raise_open_file_limit() {
            Ok(limit) if limit < 4096 => tracing::warn!(
                open_files = limit,
                "the open-file limit caps this portal at fewer than {limit} clients: raise it \
                 (LimitNOFILE= in the service unit, ulimit -Hn)"
            ),
            Ok(limit) => tracing::debug!(open_files = limit, "open-file limit"),
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
        }
        let mut state = AppState::new(store.clone());
        state.limits.devices_per_actor = args.max_devices_per_actor;
        state.limits.devices_per_token = args.max_devices_per_token;
        state.limits.channel_rate.messages_per_second = args.channel_message_rate;
        state.limits.channel_rate.message_burst = args.channel_message_rate.saturating_mul(10);
        match &args.geoip_db {
            Some(path) => state.geoip = Some(GeoIp::open(path)?),
            None => tracing::info!("no --geoip-db: country conditions fail closed"),
        }
        state.trusted_proxies = postern_portal::client_ip::TrustedProxies {
            networks: args.trusted_proxies.clone(),
            header: args.proxy_header,
        };
        if !args.trusted_proxies.is_empty() {
            tracing::info!(
                proxies = ?args.trusted_proxies,
                header = args.proxy_header.name(),
                "taking client addresses from trusted proxies"
            );
        }
        let key = secret_key(&args)?;
        key.check_against(&store).await?;
        state.secret_key = Some(key);
        state.external_url = args.external_url.clone();
        state.mailer = match &args.smtp_url {
            Some(url) => Mailer::smtp(url, smtp_password(&args)?.as_deref(), &args.smtp_from)?,
            None => {
                tracing::info!(
                    "development mail mode: no --smtp-url, so sign-in codes are written to this log"
                );
                Mailer::Log
            }
        };
        let state = Arc::new(state);
        postern_portal::retention::spawn(store.clone(), args.log_retention_days);
        postern_portal::spawn_directory_sync(Arc::clone(&state));
        if let Some(tls) = tls.as_ref().filter(|_| !args.acme_domain.is_empty()) {
            start_acme(&args, Arc::clone(tls))?;
        }
        if let Some(address) = args.daemon.metrics {
            let published = Arc::clone(&state);
            postern_sys::metrics::serve(address, move || {
                let (gateways, clients) = published.online_counts();
                published.metrics.render(gateways, clients)
            })
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        }
        tracing::info!(
            listen = %args.listen,
            scheme = if tls.is_some() { "https" } else { "http" },
            external_url = args.external_url.as_deref().unwrap_or("(not set)"),
            database = %redact(&args.database),
            "portal serving the REST API at /api/v1, SCIM at /{{account}}/scim/v2 and the channels at \
             /v1/{{client,gateway,relay}}"
        );
        postern_portal::serve::serve_with(listener, state, tls, daemon::stop_signal())
            .await
            .context("serving failed")?;
        store.close().await;
        tracing::info!("portal stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn args(extra: &[&str]) -> PortalArgs {
        let mut argv = vec!["postern", "portal"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Portal(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn logs_are_kept_ninety_days_unless_told_and_never_zero() {
        assert_eq!(args(&[]).log_retention_days, 90);
        assert_eq!(args(&["--log-retention-days", "7"]).log_retention_days, 7);
        let zero = Cli::try_parse_from(["postern", "portal", "--log-retention-days", "0"]);
        assert!(zero.is_err(), "0 days would delete every log at once");
    }

    #[test]
    fn the_smtp_password_file_is_read_to_its_line_end() {
        let dir = std::env::temp_dir().join(format!("postern-smtp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, " pass word \n").unwrap();
        let url = "smtp://mailer@mail.test:587";
        let file_arg = file.to_str().unwrap();
        let with_file = args(&["--smtp-url", url, "--smtp-password-file", file_arg]);
        assert_eq!(
            smtp_password(&with_file).unwrap().as_deref(),
            Some(" pass word ")
        );
        assert_eq!(smtp_password(&args(&["--smtp-url", url])).unwrap(), None);
        std::fs::write(&file, "\n").unwrap();
        assert!(smtp_password(&with_file).is_err());
        let missing = dir.join("missing");
        let missing = args(&[
            "--smtp-url",
            url,
            "--smtp-password-file",
            missing.to_str().unwrap(),
        ]);
        assert!(smtp_password(&missing).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

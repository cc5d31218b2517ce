//! `postern portal`, `postern portal init` and `postern portal relay-token`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use postern_portal::auth::email::Mailer;
use postern_portal::geoip::GeoIp;
use postern_portal::secrets::SecretKey;
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
        None => default_key_path(&args.database),
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

/// `secret.key` beside a SQLite database, else in ./postern-data.
fn default_key_path(database: &str) -> std::path::PathBuf {
    let sqlite = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|path| !path.is_empty() && *path != ":memory:");
    match sqlite.and_then(|path| std::path::Path::new(path).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("secret.key"),
        _ => std::path::PathBuf::from("postern-data/secret.key"),
    }
}

pub fn serve(args: PortalArgs) -> anyhow::Result<ExitCode> {
    daemon::init_logging(args.daemon.log_format);
    runtime()?.block_on(async {
        let store = open(&args.database).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut state = AppState::new(store.clone());
        state.limits.devices_per_actor = args.max_devices_per_actor;
        state.limits.devices_per_token = args.max_devices_per_token;
        state.limits.channel_rate.messages_per_second = args.channel_message_rate;
        state.limits.channel_rate.message_burst = args.channel_message_rate.saturating_mul(10);
        match &args.geoip_db {
            Some(path) => state.geoip = Some(GeoIp::open(path)?),
            None => tracing::info!("no --geoip-db: country conditions fail closed"),
        }
        let key = secret_key(&args)?;
        key.check_against(&store).await?;
        state.secret_key = Some(key);
        state.external_url = args.external_url.clone();
        state.mailer = match &args.smtp_url {
            Some(url) => Mailer::smtp(url, &args.smtp_from)?,
            None => {
                tracing::info!(
                    "development mail mode: no --smtp-url, so sign-in codes are written to this log"
                );
                Mailer::Log
            }
        };
        let state = Arc::new(state);
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
            external_url = args.external_url.as_deref().unwrap_or("(not set)"),
            database = %redact(&args.database),
            "portal serving the REST API at /api/v1 and the channels at /v1/{{client,gateway,relay}}"
        );
        postern_portal::serve::serve(listener, state, daemon::stop_signal())
            .await
            .context("serving failed")?;
        store.close().await;
        tracing::info!("portal stopped");
        Ok(ExitCode::SUCCESS)
    })
}

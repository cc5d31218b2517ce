//! What every daemon shares: logging to stderr and waiting for a signal.

use nix::sys::signal::{SigSet, Signal};

use crate::args::LogFormat;

/// Logs to stderr in the chosen format; `RUST_LOG` refines the level
/// (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs in files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread it starts
/// afterwards), so that [`wait_for_stop`] can take them synchronously.
pub fn block_stop_signals() -> nix::Result<SigSet> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    Ok(signals)
}

/// Waits for SIGINT or SIGTERM.
pub fn wait_for_stop(signals: &SigSet) -> nix::Result<Signal> {
    signals.wait()
}

/// SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the portal with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// Calls `reload` at every SIGHUP from now on. The handler is in place when
/// this returns, so a SIGHUP no longer ends the process.
pub fn on_hangup(reload: impl Fn() + Send + 'static) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload();
        }
    });
    Ok(())
}

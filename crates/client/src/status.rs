//! `postern client status`: the daemon answers on a root-only unix socket
//! with one JSON document (resources, per-resource access, gateway, path,
//! bytes); the CLI prints it as a table or as is (`--json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/postern/client.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub portal: String,
    pub connected: bool,
    pub interface: Option<InterfaceStatus>,
    pub resources: Vec<ResourceLine>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub name: String,
    pub ipv4: String,
    pub ipv6: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceLine {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
    /// idle, requested, granted, denied.
    pub access: String,
    /// Why access was denied (and which conditions failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// direct, relayed or connecting, once granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
}

/// A status request from the socket to the daemon's loop.
pub type Request = oneshot::Sender<Status>;

/// Serves the socket (mode 0600, owner root); each connection gets one
/// document and is closed.
pub fn serve(path: &Path, requests: mpsc::Sender<Request>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A socket left by a crashed run.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (reply, answer) = oneshot::channel();
            if requests.send(reply).await.is_err() {
                return;
            }
            if let Ok(status) = answer.await
                && let Ok(text) = serde_json::to_vec(&status)
            {
                let _ = stream.write_all(&text).await;
                let _ = stream.shutdown().await;
            }
        }
    });
    Ok(())
}

/// Removes the socket file when the daemon stops.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks a running daemon.
pub async fn query(path: &Path) -> anyhow::Result<Status> {
    use anyhow::Context;
    let mut stream = tokio::net::UnixStream::connect(path).await.with_context(|| {
        format!(
            "no client daemon answers on {} (is `postern client up` running? status needs root)",
            path.display()
        )
    })?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).await?;
    serde_json::from_slice(&text).context("the daemon's answer is not a status document")
}

/// The status as a table for people.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "portal: {} ({})\n",
        status.portal,
        if status.connected {
            "connected"
        } else {
            "disconnected, retrying"
        }
    );
    if let Some(interface) = &status.interface {
        out.push_str(&format!(
            "interface: {} {} {}\n",
            interface.name, interface.ipv4, interface.ipv6
        ));
    }
    if status.resources.is_empty() {
        out.push_str("no resources\n");
        return out;
    }
    out.push_str(&format!(
        "{:<24} {:<20} {:<10} {:<10} {:>12} {:>12}\n",
        "RESOURCE", "ADDRESS", "ACCESS", "PATH", "SENT", "RECEIVED"
    ));
    for line in &status.resources {
        let access = match &line.reason {
            Some(reason) => format!("{} ({reason})", line.access),
            None => line.access.clone(),
        };
        out.push_str(&format!(
            "{:<24} {:<20} {:<10} {:<10} {:>12} {:>12}\n",
            line.name,
            line.address.as_deref().unwrap_or("-"),
            access,
            line.path.as_deref().unwrap_or("-"),
            line.bytes_sent,
            line.bytes_received
        ));
    }
    out
}

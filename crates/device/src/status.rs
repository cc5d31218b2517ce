//! `postern client status`: the daemon answers on a root-only unix socket
//! with one JSON document (the portal, the interface, and the role's own
//! status: resources, per-resource access, gateway, path, bytes); the CLI
//! prints it as a table or as is (`--json`). A connection may first send
//! one command line (`internet on`, `internet off`) and half-close; the
//! answer is the status after it.

use std::path::{Path, PathBuf};

use postern_tunnel::client::status::ClientStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/postern/client.sock";

/// What the socket answers: the shell's facts around the role's status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusDocument<S> {
    pub portal: String,
    /// The tunnel interface's name, once it exists.
    pub interface: Option<String>,
    /// Where the userspace client's SOCKS5 proxy listens (no interface
    /// then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5: Option<std::net::SocketAddr>,
    /// Resource prefixes that overlap this host's local networks, and
    /// which side wins.
    #[serde(default)]
    pub overlaps: Vec<crate::apply::Overlap>,
    #[serde(flatten)]
    pub status: S,
}

/// What a connection asks before the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    /// `postern client internet on|off`.
    Internet(bool),
}

impl Command {
    /// The command line a connection sent (empty: just the status).
    pub fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "" | "status" => Some(Command::Status),
            "internet on" => Some(Command::Internet(true)),
            "internet off" => Some(Command::Internet(false)),
            _ => None,
        }
    }

    fn line(self) -> &'static str {
        match self {
            Command::Status => "",
            Command::Internet(true) => "internet on",
            Command::Internet(false) => "internet off",
        }
    }
}

/// A request from the socket to the daemon's loop: the command, and where
/// the document goes, serialized.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// How long a connection has to send its command (a local socket: the
/// CLI's arrives at once).
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// A command line is short.
const MAX_COMMAND: usize = 64;

/// Serves the socket (mode 0600, owner root); each connection gets one
/// document and is closed.
pub fn serve(path: &Path, requests: mpsc::Sender<Request>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Bound under a temporary name, closed to others, then renamed into
    // place: nobody can connect in the moment between bind and chmod.
    let mut temporary = path.to_path_buf();
    temporary.set_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = tokio::net::UnixListener::bind(&temporary)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
    // (Replacing a socket left by a crashed run.)
    std::fs::rename(&temporary, path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Each connection on its own: one that sends nothing never
            // holds up the next.
            tokio::spawn(answer(stream, requests.clone()));
        }
    });
    Ok(())
}

/// One connection: its command line (up to its half-close; nothing within
/// [`COMMAND_WAIT`] is a plain status request, as older callers make), then
/// the document.
async fn answer(mut stream: tokio::net::UnixStream, requests: mpsc::Sender<Request>) {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        COMMAND_WAIT,
        (&mut stream)
            .take(MAX_COMMAND as u64)
            .read_to_end(&mut line),
    )
    .await;
    let command = match read {
        Ok(Ok(_)) => Command::parse(&String::from_utf8_lossy(&line)),
        Ok(Err(_)) => None,
        Err(_) => Some(Command::Status),
    };
    let Some(command) = command else {
        let _ = stream.write_all(b"{\"error\":\"unknown command\"}").await;
        let _ = stream.shutdown().await;
        return;
    };
    let (reply, answer) = oneshot::channel();
    if requests.send(Request { command, reply }).await.is_err() {
        return;
    }
    if let Ok(document) = answer.await {
        let _ = stream.write_all(&document).await;
        let _ = stream.shutdown().await;
    }
}

/// Removes the socket file when the daemon stops.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why `postern client status` could not tell.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no client daemon answers on {path} (is `postern client up` running? status needs root): {source}"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("reading the daemon's answer: {0}")]
    Read(std::io::Error),
    #[error("the daemon's answer is not a status document: {0}")]
    Parse(serde_json::Error),
}

/// Asks a running client daemon.
pub async fn query(path: &Path) -> Result<StatusDocument<ClientStatus>, QueryError> {
    ask(path, Command::Status).await
}

/// Tells a running client daemon `command`; its status after it.
pub async fn ask(
    path: &Path,
    command: Command,
) -> Result<StatusDocument<ClientStatus>, QueryError> {
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| QueryError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    stream
        .write_all(command.line().as_bytes())
        .await
        .map_err(QueryError::Read)?;
    stream.shutdown().await.map_err(QueryError::Read)?;
    let mut text = Vec::new();
    stream
        .read_to_end(&mut text)
        .await
        .map_err(QueryError::Read)?;
    serde_json::from_slice(&text).map_err(QueryError::Parse)
}

/// The status as a table for people.
pub fn render(document: &StatusDocument<ClientStatus>) -> String {
    let status = &document.status;
    let mut out = format!(
        "portal: {} ({})\n",
        document.portal,
        if status.connected {
            "connected"
        } else {
            "disconnected, retrying"
        }
    );
    if let Some(internet) = &status.internet {
        out.push_str(&format!("internet resource: {internet}\n"));
    }
    if let (Some(listen), Some(addresses)) = (&document.socks5, &status.addresses) {
        out.push_str(&format!(
            "userspace: SOCKS5 proxy on {listen}, no TUN; sends as {} {}\n",
            addresses.ipv4, addresses.ipv6
        ));
    }
    if let (Some(name), Some(addresses)) = (&document.interface, &status.addresses) {
        out.push_str(&format!(
            "interface: {name} {} {}\n",
            addresses.ipv4, addresses.ipv6
        ));
    }
    for overlap in &document.overlaps {
        let winner = match overlap.winner {
            crate::apply::Winner::Tunnel => "the tunnel wins",
            crate::apply::Winner::Local => "the local network wins",
        };
        out.push_str(&format!(
            "overlap: resource {} and local network {} on {}: {winner}\n",
            overlap.resource, overlap.local, overlap.interface
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket takes a command line, or none from a caller that sends
    /// nothing (older CLIs, scripts), and refuses unknown ones.
    #[tokio::test]
    async fn commands_come_in_and_silent_callers_still_get_the_status() {
        let path = std::env::temp_dir().join(format!("postern-status-{}.sock", std::process::id()));
        let (requests, mut incoming) = mpsc::channel(8);
        serve(&path, requests).unwrap();
        let seen = tokio::spawn(async move {
            let mut commands = Vec::new();
            while let Some(Request { command, reply }) = incoming.recv().await {
                commands.push(command);
                let _ = reply.send(b"{}".to_vec());
                if commands.len() == 2 {
                    return commands;
                }
            }
            commands
        });
        // A silent caller: no command, no half-close.
        let mut silent = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            silent.read_to_end(&mut answer),
        )
        .await
        .expect("answered after the command wait")
        .unwrap();
        assert_eq!(answer, b"{}");
        // The CLI's command.
        let mut cli = tokio::net::UnixStream::connect(&path).await.unwrap();
        cli.write_all(b"internet off").await.unwrap();
        cli.shutdown().await.unwrap();
        let mut answer = Vec::new();
        cli.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"{}");
        assert_eq!(
            seen.await.unwrap(),
            vec![Command::Status, Command::Internet(false)]
        );
        // Nonsense is refused without reaching the daemon.
        let mut odd = tokio::net::UnixStream::connect(&path).await.unwrap();
        odd.write_all(b"rm -rf /").await.unwrap();
        odd.shutdown().await.unwrap();
        let mut answer = String::new();
        odd.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("unknown command"), "{answer}");
        let _ = std::fs::remove_file(&path);
    }
}

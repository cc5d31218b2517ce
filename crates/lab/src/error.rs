use std::io;

/// Everything that can go wrong while building or running a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the network lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN to create network namespaces); run as root, e.g. with sudo"
    )]
    NotRoot,
    #[error("`{tool}` is not installed; install the Debian package `{package}`")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {namespace}: {source}")]
    Enter {
        namespace: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

//! `postern`: the one binary (SPEC.md section 3).
//!
//! Exit codes: 0 success; 1 bad configuration or failure (one line on
//! stderr).

mod admin;
mod args;
mod daemon;
mod demo;
mod device;
mod paths;
mod portal;
mod relay;
mod sign_in;
mod values;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use args::{AdminCommand, Cli, ClientCommand, Command, PortalCommand};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    match cli.command {
        Command::Portal(portal) => match portal.command {
            Some(PortalCommand::Init {
                ref database,
                ref account,
                ref admin_email,
            }) => finish("portal init", portal::init(database, account, admin_email)),
            Some(PortalCommand::Backup {
                ref database,
                ref output,
            }) => finish("portal backup", portal::backup(database, output)),
            Some(PortalCommand::Restore {
                ref database,
                ref input,
            }) => finish("portal restore", portal::restore(database, input)),
            Some(PortalCommand::RelayToken { ref database }) => {
                finish("portal relay-token", portal::relay_token(database))
            }
            None => finish("portal", portal::serve(*portal)),
        },
        Command::Gateway(args) => match args.command {
            Some(args::GatewayCommand::Check { ref interface }) => {
                finish("gateway check", device::gateway_check(interface))
            }
            None => finish("gateway", device::gateway(args)),
        },
        Command::Relay(args) => finish("relay", relay::run(args)),
        Command::Client(client) => match client.command {
            ClientCommand::Up(args) => finish("client up", device::client_up(*args)),
            ClientCommand::SignIn {
                portal,
                trust,
                account,
                no_browser,
                state,
                timeout,
            } => finish(
                "client sign-in",
                sign_in::sign_in(
                    &portal,
                    &trust,
                    &account,
                    no_browser,
                    &state.dir,
                    std::time::Duration::from_secs(timeout.max(1)),
                ),
            ),
            ClientCommand::SignOut { state, trust } => {
                finish("client sign-out", sign_in::sign_out(&state.dir, &trust))
            }
            ClientCommand::Status { json, ref socket } => finish(
                "client status",
                device::client_status(json, &paths::socket_to_ask(socket.path.as_deref())),
            ),
            ClientCommand::Internet {
                ref state,
                ref dir,
                ref socket,
            } => finish(
                "client internet",
                device::client_internet(
                    state == "on",
                    &dir.dir,
                    &paths::socket_to_ask(socket.path.as_deref()),
                ),
            ),
        },
        Command::Demo(args) => finish("demo", demo::run(args)),
        Command::Admin(admin) => match admin.command {
            AdminCommand::Apply {
                ref file,
                prune,
                dry_run,
                ref connection,
            } => finish(
                "admin apply",
                admin::apply(file, prune, dry_run, connection),
            ),
            AdminCommand::Export { ref connection } => {
                finish("admin export", admin::export(connection))
            }
        },
    }
}

/// Turns a command's outcome into an exit code: an error is one line on
/// stderr (with its causes) and exit code 1.
fn finish(command: &str, outcome: anyhow::Result<ExitCode>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("postern {command}: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Help and version go to stdout with exit 0. A usage error becomes one line
/// on stderr (clap's message without its usage block) and exit code 1.
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(1)
        }
        _ => {
            eprintln!("{} (see --help)", one_line(&error.render().to_string()));
            ExitCode::from(1)
        }
    }
}

/// Clap's message up to its usage block, folded onto one line.
fn one_line(rendered: &str) -> String {
    let message = rendered
        .split("\n\nUsage:")
        .next()
        .unwrap_or(rendered)
        .split("\n\nFor more information")
        .next()
        .unwrap_or(rendered);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

//! The WebSocket end of a channel: authenticate before the upgrade (so a bad
//! token is an HTTP 401 the daemon never retries), register the device, then
//! pump frames between the socket and the hub. Pings every 10 s; 30 s of
//! silence or a peer that stops reading ends the connection. What a channel
//! sends is held to its allowance (see `allowance`) before the hub sees it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use postern_model::protocol::{DisconnectReason, PortalToClient, PortalToGateway, PortalToRelay};
use postern_model::{PublicKey, RelayId};
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Inbox;
use super::admission::{Admission, Registration};
use super::allowance::{Allowance, ChannelRate, Verdict};
use super::hub::{DeviceDetails, DeviceFacts, Inbound, Joined, Party, TokenFacts};
use super::inbound::{MAX_MESSAGE, Speaker, parse};
use super::shell::{HubEvent, Outbound};
use crate::client_ip::ClientAddr;
use crate::domain::{DeviceKind, TokenKind, TokenRecord};
use crate::problem::Problem;
use crate::state::AppState;

const PING_EVERY: Duration = Duration::from_secs(10);
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const READ_BUFFER: usize = 4 * 1024;
const CLIENT_READ_BUFFER: usize = 512;
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

#[derive(Deserialize, Debug, Default)]
pub(super) struct ConnectParams {
    device_id: Option<String>,
    public_key: Option<String>,
    name: Option<String>,
    os: Option<String>,
    version: Option<String>,
}

type Shared = State<Arc<AppState>>;

pub(super) async fn client(
    state: Shared,
    peer: ClientAddr,
    headers: HeaderMap,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    join(state, peer, headers, params, ws, TokenKind::Client)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn gateway(
    state: Shared,
    peer: ClientAddr,
    headers: HeaderMap,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    join(state, peer, headers, params, ws, TokenKind::Gateway)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A relay sends only its `version`; the device parameters are ignored.
pub(super) async fn relay(
    state: Shared,
    peer: ClientAddr,
    headers: HeaderMap,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    let params = ConnectParams {
        version: params.version,
        ..ConnectParams::default()
    };
    join(state, peer, headers, params, ws, TokenKind::Relay)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn bad_request(field: &str, detail: &str) -> Problem {
    let mut problem = Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {detail}"));
    problem.field = Some(field.to_string());
    problem
}

/// A printable parameter of bounded length.
fn text_param(
    field: &str,
    value: Option<&str>,
    required: bool,
    max: usize,
) -> Result<Option<String>, Problem> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None if required => Err(bad_request(field, "required")),
        None => Ok(None),
        Some(v) if v.chars().count() > max || v.chars().any(char::is_control) => Err(bad_request(
            field,
            &format!("at most {max} printable characters"),
        )),
        Some(v) => Ok(Some(v.to_string())),
    }
}

async fn join(
    State(state): Shared,
    ClientAddr(remote_ip): ClientAddr,
    headers: HeaderMap,
    params: ConnectParams,
    ws: WebSocketUpgrade,
    kind: TokenKind,
) -> Result<Response, Problem> {
    let Some(Inbox { hub, admission }) = state.hub::<Inbox>().cloned() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the portal is starting",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| Problem::unauthorized("send the token as Authorization: Bearer <token>"))?;
    let invalid =
        || Problem::unauthorized("the token is invalid, expired or revoked: sign in again");
    let token = crate::auth::authenticate(&state.store, presented, Timestamp::now())
        .await?
        .filter(|t| t.kind == kind)
        .ok_or_else(invalid)?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect::<String>());
    // After the token, so only its holders learn the portal's version;
    // before anything is recorded, so a refused daemon leaves no trace.
    let version = text_param("version", params.version.as_deref(), false, 64)?;
    let who = match kind {
        TokenKind::Relay => "relay".to_string(),
        // Debug-quoted: the id is the daemon's word, not yet checked.
        _ => format!(
            "{} {:?}",
            kind.as_str(),
            params
                .device_id
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(128)
                .collect::<String>()
        ),
    };
    if let Some(refused) = super::version::refusal(version.as_deref(), &who) {
        return Ok(refused);
    }

    let (party, public_key, speaker, details) = match kind {
        TokenKind::Relay => {
            let id = RelayId(Uuid::new_v4());
            let details = DeviceDetails::default();
            (
                Party::Relay { id },
                PublicKey([0; 32]),
                Speaker::Relay,
                details,
            )
        }
        TokenKind::Client | TokenKind::Gateway => {
            let device_id = text_param("device_id", params.device_id.as_deref(), true, 128)?
                .unwrap_or_default();
            let public_key = params
                .public_key
                .as_deref()
                .map(str::trim)
                .unwrap_or_default();
            let public_key = PublicKey::from_base64(public_key)
                .ok_or_else(|| bad_request("public_key", "base64 of a 32-byte X25519 key"))?;
            let name = text_param("name", params.name.as_deref(), false, 255)?
                .unwrap_or_else(|| device_id.clone());
            let os = text_param("os", params.os.as_deref(), false, 64)?;
            // Two devices joining at once may pick the same address index; the
            // unique index refuses one, which tries again.
            let mut attempts = 0;
            let party = loop {
                match register(
                    &state,
                    &admission,
                    &token,
                    kind,
                    &device_id,
                    &name,
                    os.as_deref(),
                    version.as_deref(),
                    remote_ip,
                    user_agent.as_deref(),
                )
                .await
                {
                    Err(problem) if problem.status == StatusCode::CONFLICT && attempts < 3 => {
                        attempts += 1
                    }
                    other => break other,
                }
            }?
            .ok_or_else(invalid)?;
            let speaker = match kind {
                TokenKind::Client => Speaker::Client,
                _ => Speaker::Gateway,
            };
            let details = DeviceDetails {
                name,
                os,
                version: version.clone(),
            };
            (party, public_key, speaker, details)
        }
        TokenKind::Api | TokenKind::Browser => return Err(invalid()),
    };

    let id = state.next_connection_id();
    // A gateway hears for all its clients: a deeper queue before it counts
    // as too slow (and is dropped, with every client it serves).
    let depth = match speaker {
        Speaker::Gateway => state.outbound_queue.saturating_mul(4),
        Speaker::Client | Speaker::Relay => state.outbound_queue,
    };
    let (sender, outbound) = mpsc::channel(depth.max(1));
    let rate = match speaker {
        Speaker::Gateway => state.limits.channel_rate.gateway(),
        Speaker::Client | Speaker::Relay => state.limits.channel_rate,
    };
    let counted = state.clone();
    // Boxed here, before the closures and futures that carry it capture
    // it: each would keep room for the whole struct for the life of the
    // channel (see `pump`).
    let joined = Box::new(Joined {
        conn: id,
        party,
        token: TokenFacts::from(&token),
        public_key,
        remote_ip,
        details,
    });
    // Small buffers: ten thousand idle channels must not cost a gigabyte.
    // A client says little (an access request, candidates); a gateway or
    // relay speaks for many and reads in bigger steps. A longer message
    // grows the buffer as it must.
    let read_buffer = match speaker {
        Speaker::Client => CLIENT_READ_BUFFER,
        Speaker::Gateway | Speaker::Relay => READ_BUFFER,
    };
    Ok(ws
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            // Boxed before the future that owns it is made: the socket is
            // moved into `pump`, and both futures would keep room for it.
            let socket = Box::new(socket);
            async move {
                let flooded = pump(socket, hub, joined, sender, outbound, speaker, rate).await;
                if flooded {
                    counted
                        .metrics
                        .channels_rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }))
}

/// Records the device (new ones get their addresses) and the session, in
/// the next group the admission batcher commits.
#[allow(clippy::too_many_arguments)]
async fn register(
    state: &AppState,
    admission: &Admission,
    token: &TokenRecord,
    kind: TokenKind,
    device_id: &str,
    name: &str,
    os: Option<&str>,
    version: Option<&str>,
    remote_ip: std::net::IpAddr,
    user_agent: Option<&str>,
) -> Result<Option<Party>, Problem> {
    let Some(account) = token.account_id else {
        return Ok(None);
    };
    let (device_kind, actor_id, site_id) = match (kind, token.actor_id, token.site_id) {
        (TokenKind::Client, Some(actor_id), _) => (DeviceKind::Client, Some(actor_id), None),
        (TokenKind::Gateway, _, Some(site_id)) => (DeviceKind::Gateway, None, Some(site_id)),
        _ => return Ok(None),
    };
    let registration = Registration {
        account,
        kind: device_kind,
        actor_id,
        site_id,
        token_id: token.id,
        device_id: device_id.to_string(),
        name: name.to_string(),
        os: os.map(str::to_string),
        version: version.map(str::to_string),
        remote_ip,
        user_agent: user_agent.map(str::to_string),
    };
    let Some(device) = admission.register(registration).await? else {
        return Ok(None);
    };
    // The OS this connection says, not the one stored from the last: the
    // stored details are updated only once the hub admits the channel.
    let mut facts = DeviceFacts::from(&device);
    facts.os = os.map(str::to_string);
    Ok(Some(match kind {
        TokenKind::Client => Party::Client {
            account,
            actor_id: actor_id.unwrap_or_default(),
            device: facts,
            country: state.geoip.as_ref().and_then(|g| g.country(remote_ip)),
        },
        _ => Party::Gateway {
            account,
            site_id: site_id.unwrap_or_default(),
            device: facts,
        },
    }))
}

/// Pumps frames until either side ends; `true` if the channel was cut off
/// for flooding.
///
/// One of these futures lives as long as each channel: 100,000 of them on a
/// busy node. Its arguments stay in it to the end, so the big ones come
/// boxed (one pointer each) and the rarely needed timer is boxed on demand.
async fn pump(
    mut socket: Box<WebSocket>,
    hub: mpsc::Sender<HubEvent>,
    joined: Box<Joined>,
    sender: mpsc::Sender<Outbound>,
    mut outbound: mpsc::Receiver<Outbound>,
    speaker: Speaker,
    rate: ChannelRate,
) -> bool {
    let id = joined.conn;
    let event = HubEvent::Joined { joined, sender };
    if hub.send(event).await.is_err() {
        return false;
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut allowance = Allowance::new(rate, Instant::now());
    // A message over the allowance waits here, and nothing more is read.
    let mut held: Option<(Inbound, Pin<Box<tokio::time::Sleep>>)> = None;
    let mut flooded = false;
    loop {
        tokio::select! {
            incoming = socket.recv(), if held.is_none() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    last_heard = now;
                    let verdict = allowance.admit(text.len(), now);
                    if verdict == Verdict::Abuse {
                        tracing::warn!(conn = id, "channel flooding the portal; disconnecting it");
                        for frame in cut_off(speaker, &rate) {
                            let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(frame.into()))).await;
                        }
                        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
                        flooded = true;
                        break;
                    }
                    let message = parse(speaker, text.as_str());
                    if let Verdict::After(wait) = verdict {
                        held = Some((message, Box::pin(tokio::time::sleep(wait))));
                        continue;
                    }
                    if hub.send(HubEvent::Message { conn: id, message }).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {
                    last_heard = Instant::now();
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            _ = release(&mut held), if held.is_some() => {
                if let Some((message, _)) = held.take()
                    && hub.send(HubEvent::Message { conn: id, message }).await.is_err()
                {
                    break;
                }
            },
            out = outbound.recv() => match out {
                Some(Outbound::Text(text)) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text((&*text).into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                Some(Outbound::Close) | None => {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
                    break;
                }
            },
            _ = ping.tick() => {
                // A channel held back is not read: its silence is ours.
                if held.is_none() && last_heard.elapsed() > SILENCE_LIMIT {
                    tracing::debug!(conn = id, "channel silent for too long");
                    break;
                }
                let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Vec::new().into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    let _ = hub.send(HubEvent::Closed { conn: id }).await;
    flooded
}

/// When the held message may go.
async fn release(held: &mut Option<(Inbound, Pin<Box<tokio::time::Sleep>>)>) {
    match held {
        Some((_, timer)) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What a flooding channel hears before it is closed: an `error` saying
/// why, and `disconnect` (`overloaded`: it may reconnect, slower).
fn cut_off(speaker: Speaker, rate: &ChannelRate) -> Vec<String> {
    let message = format!(
        "too many messages: at most {} a second ({} at once); disconnecting",
        rate.messages_per_second, rate.message_burst
    );
    let reason = DisconnectReason::Overloaded;
    let frames = match speaker {
        Speaker::Client => [
            serde_json::to_string(&PortalToClient::Error {
                reference: None,
                message,
            }),
            serde_json::to_string(&PortalToClient::Disconnect { reason }),
        ],
        Speaker::Gateway => [
            serde_json::to_string(&PortalToGateway::Error {
                reference: None,
                message,
            }),
            serde_json::to_string(&PortalToGateway::Disconnect { reason }),
        ],
        Speaker::Relay => [
            serde_json::to_string(&PortalToRelay::Error {
                reference: None,
                message,
            }),
            serde_json::to_string(&PortalToRelay::Disconnect { reason }),
        ],
    };
    frames.into_iter().filter_map(Result::ok).collect()
}

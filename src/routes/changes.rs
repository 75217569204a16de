//! What changed: the live event stream of one profile (Server-Sent Events)
//! and the change feed for integrations.

use std::collections::VecDeque;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::inputs::deserialize_limit;
use super::profiles::customer_id;
use super::resource;
use crate::auth::{Authorized, ReadChanges, ReadProfiles};
use crate::domain::CustomerId;
use crate::domain::{parse_decimal, ChangeKind};
use crate::error::{ApiError, ErrorBody};
use crate::service::live::{ChangePage, EventStream, StreamEvent, MAX_CHANGES_PAGE};
use crate::service::{ServiceError, Services};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/changes", "GET").route(web::get().to(changes)))
        .service(resource("/v1/profiles/{customer_id}/events", "GET").route(web::get().to(events)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Read the changes after this cursor (a `next_cursor`); from the oldest
    /// change kept when absent.
    #[param(example = "1042", pattern = "^[0-9]{1,19}$")]
    pub after: Option<String>,
    /// Most changes to return, 1 to 1000 (default 100).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The change feed: every change to every profile, oldest first, kept for
/// `changes.retention_secs`. Replayed from the start it tells which customer
/// ids exist, which were merged into which, and which were erased. It holds
/// no personal data: read the profile for the content.
#[utoipa::path(
    get, path = "/v1/changes", tag = "changes",
    params(ChangesQuery),
    responses(
        (status = 200, body = ChangePage),
        (status = 400, description = "Malformed cursor or limit", body = ErrorBody),
        (status = 410, description = "The cursor is older than what is kept: start again without one", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn changes(
    _auth: Authorized<ReadChanges>,
    services: web::Data<Services>,
    query: web::Query<ChangesQuery>,
) -> Result<web::Json<ChangePage>, ApiError> {
    let after = match &query.after {
        Some(c) => Some(parse_decimal(c).ok_or(ServiceError::InvalidCursor)?),
        None => None,
    };
    let limit = match query.limit {
        None => 100,
        Some(n) if (1..=MAX_CHANGES_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::InvalidQuery(format!(
                "limit must be 1 to {MAX_CHANGES_PAGE}"
            )))
        }
    };
    Ok(web::Json(services.changes(after, limit)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event id (for clients that cannot send the
    /// `Last-Event-ID` header; the header wins).
    #[param(example = "1042", pattern = "^[0-9]{1,19}$")]
    pub last_event_id: Option<String>,
}

/// One Server-Sent Event as it goes on the wire (heartbeats are comments).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventFrame {
    /// The event's position in the change log: send it back as `Last-Event-ID`.
    #[schema(pattern = "^[0-9]{1,19}$")]
    id: Option<String>,
    /// The kind of change, or `stream.dropped` / `stream.closed` as the last event.
    #[schema(value_type = String, example = "answer.captured", pattern = "^(profile\\.(created|updated|merged|unmerged|erased)|answer\\.captured|interaction\\.added|episode\\.updated|stream\\.(dropped|closed))$")]
    event: Option<String>,
    /// One line of JSON: the change (as in the change feed) and, for answers,
    /// interactions and episodes, `data` (as the reads show it); for the last
    /// event, `reason` and `resume_after`.
    data: String,
    /// Milliseconds a client waits before reconnecting.
    retry: Option<u64>,
}

/// Headers of an event-stream request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct EventsHeaders {
    /// Resume after this event id (what an `EventSource` sends on reconnecting).
    #[param(rename = "Last-Event-ID", value_type = String, required = false, example = "1042", pattern = "^[0-9]{1,19}$")]
    pub last_event_id: Option<String>,
}

/// Live events of one profile, as Server-Sent Events: `profile.updated`
/// (with the new version), `answer.captured`, `interaction.added`,
/// `episode.updated`, `profile.merged` (on the absorbed profile's stream too,
/// which then carries the survivor's events), `profile.unmerged`,
/// `profile.erased` (the stream ends), and `profile.created`. Each event's
/// `id` is its change-feed position: send it back as `Last-Event-ID` to
/// resume without gaps. An idle stream gets a comment line every
/// `events.heartbeat_secs`. A consumer too slow to keep up gets a final
/// `stream.dropped` event naming the id to resume after; at shutdown, when
/// the token expires, and after `events.max_stream_secs`, `stream.closed`
/// likewise (`reason`: `shutting_down`, `token_expired`, `max_duration`).
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/events", tag = "profiles",
    params(
        ("customer_id" = CustomerId, Path, description = "The customer id"),
        EventsHeaders,
        EventsQuery,
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = EventFrame),
        (status = 400, description = "Malformed customer id or event id", body = ErrorBody),
        (status = 404, description = "No such profile", body = ErrorBody),
        (status = 503, description = "Too many streams open", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = customer_id(&path)?;
    let header_id = request
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("").trim().to_owned());
    let last_event_id = match header_id.or_else(|| query.last_event_id.clone()) {
        Some(raw) if raw.is_empty() => None,
        Some(raw) => Some(parse_decimal(&raw).ok_or(ServiceError::InvalidCursor)?),
        None => None,
    };
    let stream = services.open_stream(
        id,
        last_event_id,
        auth.principal.access(),
        auth.principal.budget_key(),
    )?;
    let heartbeat = services.heartbeat();
    // The stream lives as long as its token, at most `events.max_stream_secs`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token_left = Duration::from_secs(auth.principal.valid_until.saturating_sub(now));
    let (life, end_reason) = if token_left < services.max_stream() {
        (token_left, "token_expired")
    } else {
        (services.max_stream(), "max_duration")
    };
    let state = Streaming {
        services: services.clone(),
        stream,
        out: VecDeque::from([Bytes::from_static(b"retry: 2000\n: connected\n\n")]),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        ends: Box::pin(tokio::time::sleep(life)),
        end_reason,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<Bytes, actix_web::Error>(chunk), state))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Compressing would hold events back in the encoder's buffer.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

struct Streaming {
    services: web::Data<Services>,
    stream: EventStream,
    out: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    ends: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Why the stream ends when `ends` fires.
    end_reason: &'static str,
    done: bool,
}

impl Streaming {
    /// The next bytes to send, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            if !self.stream.replay_done {
                match self.services.replay_next(&mut self.stream) {
                    Ok(Some(event)) => self.send(&event),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "replaying events failed");
                        self.finish("stream.closed", "store_unavailable");
                    }
                }
                continue;
            }
            tokio::select! {
                event = self.stream.subscription.events.recv() => match event {
                    Some(event) => {
                        if self.stream.is_new(&event) {
                            let event = self.services.live_event(&event, &self.stream);
                            self.send(&event);
                        }
                    }
                    None => {
                        let reason = if self.stream.subscription.overflowed() {
                            "slow_consumer"
                        } else {
                            "closed"
                        };
                        self.finish("stream.dropped", reason);
                    }
                },
                _ = self.heartbeat.tick() => {
                    self.out.push_back(Bytes::from_static(b": heartbeat\n\n"));
                }
                _ = self.stream.subscription.closing.changed() => {
                    self.finish("stream.closed", "shutting_down");
                }
                _ = &mut self.ends => {
                    self.finish("stream.closed", self.end_reason);
                }
            }
        }
    }

    fn send(&mut self, event: &StreamEvent) {
        self.stream.note_sent(event.seq);
        self.heartbeat.reset();
        self.out.push_back(Bytes::from(format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            event.seq,
            event.kind.as_str(),
            event.json
        )));
        if event.kind == ChangeKind::Erased {
            self.done = true;
        }
    }

    /// The last event: why the stream ends and where to resume.
    fn finish(&mut self, kind: &str, reason: &str) {
        let resume = self.stream.position();
        self.out.push_back(Bytes::from(format!(
            "event: {kind}\ndata: {{\"reason\":\"{reason}\",\"resume_after\":\"{resume}\"}}\n\n"
        )));
        self.done = true;
    }
}

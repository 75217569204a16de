//! Acting on the memory: episodes and the follow-ups they leave, segments
//! and offers behind consent, and the export of everything held about a
//! customer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::views::{self, episode_view, Access, EpisodeView, InteractionView, PersonalizationView};
use super::{ServiceError, Services};
use crate::domain::{CustomerId, EpisodeStatus, NormaliseOutcome, Profile};
use crate::domain::{FollowUpKey, TimelinePosition};

/// The consent purpose that personalisation needs.
pub const PERSONALIZATION: &str = "personalization";

/// Why a profile gets no personalisation.
pub const NO_CONSENT: &str = "consent_not_given";
pub const CONSENT_DENIED: &str = "consent_denied";

/// A profile's episodes, as `GET /v1/profiles/{id}/episodes` returns them.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EpisodesPage {
    pub customer_id: CustomerId,
    /// Not resolved first (last touched first), then resolved (last resolved first).
    pub episodes: Vec<EpisodeView>,
}

/// One follow-up due: call the customer back about a resolved episode.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FollowUpView {
    pub customer_id: CustomerId,
    pub episode_id: String,
    pub title: Option<String>,
    pub resolved_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub channels: Vec<String>,
    pub last_channel: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FollowUpPage {
    /// Soonest due first.
    pub follow_ups: Vec<FollowUpView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An episode as its customer sees it: what it is about (its id), where it
/// stands and the line written for them. Titles are written for the desk
/// and are not shown.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OwnEpisodeView {
    #[schema(example = "order-A-1001")]
    pub id: String,
    pub status: EpisodeStatus,
    /// A status line meant for the customer.
    #[schema(example = "Your parcel left our depot")]
    pub public_status: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/me/episodes`: the open episodes of the customer a token is
/// bound to, last touched first.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OwnEpisodesPage {
    pub episodes: Vec<OwnEpisodeView>,
}

fn decode_cursor(cursor: &str) -> Result<FollowUpKey, ServiceError> {
    FollowUpKey::from_cursor(cursor).ok_or(ServiceError::InvalidCursor)
}

impl Services {
    /// A profile's episodes with one of `statuses` (all when empty).
    pub async fn episodes(
        &self,
        id: CustomerId,
        statuses: &[EpisodeStatus],
        access: Access,
    ) -> Result<EpisodesPage, ServiceError> {
        let source = self.source(id, 0).await?;
        let p = &source.profile;
        let m = self.masking(access);
        Ok(EpisodesPage {
            customer_id: p.customer_id,
            episodes: views::ordered_episodes(p)
                .into_iter()
                .filter(|e| statuses.is_empty() || statuses.contains(&e.status))
                .map(|e| episode_view(e, &m))
                .collect(),
        })
    }

    /// The open episodes of the customer who holds `kind:value`, for a token
    /// bound to them. Only a verified identifier of one person counts: one
    /// that was only ever claimed may have been typed by someone else, a
    /// session identifier names a browser, and a type that does not merge
    /// (a phone, by default `"suggest"`) may be a household's. A customer
    /// nobody holds that way has no open episodes.
    pub async fn own_episodes(
        &self,
        kind: &str,
        value: &str,
    ) -> Result<OwnEpisodesPage, ServiceError> {
        let shared =
            |r: &crate::domain::TypeRule| r.session || r.merge != crate::config::MergePolicy::Merge;
        if self.rules.identifiers.rule(kind).is_some_and(shared) {
            return Err(ServiceError::Identifier(
                crate::domain::IdentifierError::Invalid {
                    kind: kind.to_owned(),
                    reason: "names a browser, a device, a conversation or a number people share, not one customer".into(),
                },
            ));
        }
        let identifier = match self.rules.identifiers.normalise(kind, value)? {
            NormaliseOutcome::Usable(id) => id,
            NormaliseOutcome::Ignored(_) => return Ok(OwnEpisodesPage { episodes: vec![] }),
        };
        let source = match self.source_by(kind, value, 0).await {
            Ok(source) => source,
            Err(ServiceError::ProfileNotFound(_) | ServiceError::IdentifierNotOwned) => {
                return Ok(OwnEpisodesPage { episodes: vec![] })
            }
            Err(e) => return Err(e),
        };
        let p = &source.profile;
        let verified = p
            .identifiers
            .iter()
            .any(|r| r.identifier == identifier && !r.claimed);
        if !verified {
            return Ok(OwnEpisodesPage { episodes: vec![] });
        }
        Ok(OwnEpisodesPage {
            episodes: views::ordered_episodes(p)
                .into_iter()
                .filter(|e| e.status.is_open())
                .map(|e| OwnEpisodeView {
                    id: e.id.clone(),
                    status: e.status,
                    public_status: e.public_status.clone(),
                    opened_at: e.opened_at,
                    updated_at: e.updated_at,
                })
                .collect(),
        })
    }

    /// Follow-ups due before `due_before`, soonest first, a page at a time.
    pub fn follow_ups(
        &self,
        due_before: DateTime<Utc>,
        limit: usize,
        cursor: Option<&str>,
        access: Access,
    ) -> Result<FollowUpPage, ServiceError> {
        let m = self.masking(access);
        let after = cursor.map(decode_cursor).transpose()?;
        let delay = self.rules.follow_up_delay;
        let resolved_before = u64::try_from((due_before - delay).timestamp_millis()).unwrap_or(0);
        let mut out = Vec::with_capacity(limit);
        let mut after = after;
        let mut more = false;
        // Entries whose profile moved on between the index read and the
        // profile read are skipped; the loop reads on until the page is full.
        'pages: loop {
            let keys = self
                .store
                .follow_ups(after.as_ref(), resolved_before, limit + 1)?;
            let exhausted = keys.len() <= limit;
            for key in keys {
                if out.len() == limit {
                    more = true;
                    break 'pages;
                }
                after = Some(key.clone());
                let Some(p) = self.store.profile(key.customer)? else {
                    continue;
                };
                let Some(e) = p.episodes.get(&key.episode) else {
                    continue;
                };
                // The profile may have moved on since the index was read.
                let Some(resolved_at) = e
                    .awaiting_feedback()
                    .filter(|r| r.timestamp_millis() == key.resolved_millis as i64)
                else {
                    continue;
                };
                out.push(FollowUpView {
                    customer_id: p.customer_id,
                    episode_id: e.id.clone(),
                    title: m.title(&e.title),
                    resolved_at,
                    due_at: resolved_at + delay,
                    channels: e.channels.iter().cloned().collect(),
                    last_channel: e.last_channel.clone(),
                });
            }
            if exhausted {
                break;
            }
        }
        let next_cursor = match (more, &after) {
            (true, Some(last)) => Some(last.to_cursor()),
            _ => None,
        };
        Ok(FollowUpPage {
            follow_ups: out,
            next_cursor,
        })
    }

    /// Segments and ranked offers of a profile, when it consented.
    pub async fn personalization(
        &self,
        id: CustomerId,
    ) -> Result<PersonalizationView, ServiceError> {
        let source = self.source(id, 0).await?;
        Ok(self.personalize(&source.profile))
    }

    /// The same, for the owner of an identifier (an anonymous visitor's cookie).
    pub async fn personalization_by(
        &self,
        kind: &str,
        value: &str,
    ) -> Result<PersonalizationView, ServiceError> {
        let source = self.source_by(kind, value, 0).await?;
        Ok(self.personalize(&source.profile))
    }

    fn personalize(&self, p: &Profile) -> PersonalizationView {
        let refused = match p.consents.get(PERSONALIZATION) {
            Some(c) if c.granted => None,
            Some(_) => Some(CONSENT_DENIED),
            None => Some(NO_CONSENT),
        };
        if let Some(reason) = refused {
            return PersonalizationView {
                customer_id: p.customer_id,
                consent: false,
                reason: Some(reason.to_owned()),
                segments: Vec::new(),
                offers: Vec::new(),
            };
        }
        let rules = &self.rules.personalization;
        let segments = rules.current(p, Services::now());
        let offers = rules
            .offers(&segments)
            .into_iter()
            .map(|(o, matched)| views::offer_view(o, matched))
            .collect();
        PersonalizationView {
            customer_id: p.customer_id,
            consent: true,
            reason: None,
            segments,
            offers,
        }
    }

    /// Starts an export of everything held about `id`. The profile is read
    /// now (so a wrong id fails before anything is sent); the timeline and
    /// the ledgers are read a page at a time as the export is sent.
    pub fn export(self: Arc<Self>, id: CustomerId) -> Result<Export, ServiceError> {
        let profile = self.live(id)?;
        let masking = self.masking(Access { pii: true });
        let head = ExportHead {
            exported_at: Services::now(),
            customer_id: profile.customer_id,
            profile: views::profile_view(&profile, &masking),
            segments: self
                .rules
                .personalization
                .current(&profile, Services::now()),
            suggestions: self.suggestions_of(&profile, Access { pii: true })?,
        };
        let mut opening = serde_json::to_vec(&head).map_err(encoding)?;
        // The head is a JSON object: reopen it to append the long parts.
        opening.pop();
        opening.extend_from_slice(b",\"timeline\":[");
        let members = profile.members().collect();
        Ok(Export {
            services: self,
            profile,
            members,
            phase: Phase::Opening(opening),
            first: true,
        })
    }
}

/// Writes every live profile to `out` as NDJSON, one profile per line as
/// `GET /v1/profiles/{id}` shows it to a token with `pii:read`, in id order,
/// a page at a time; `progress` hears the running count. For
/// `anamnesis export`, over a store no service is writing to.
pub fn export_profiles(
    store: &dyn crate::store::Store,
    settings: &crate::config::Settings,
    out: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<u64> {
    let rules = settings.validate()?;
    let fields = views::FieldRules::new(settings);
    let masking = views::Masking::new(Access { pii: true }, &rules, &fields);
    let mut written = 0;
    let mut after = None;
    loop {
        let page = store.profiles_after(after, EXPORT_PAGE)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.customer_id);
        for p in &page {
            serde_json::to_writer(&mut *out, &views::profile_view(p, &masking))?;
            out.write_all(b"\n")?;
            written += 1;
        }
        progress(written);
    }
    out.flush()?;
    Ok(written)
}

fn encoding(e: serde_json::Error) -> ServiceError {
    ServiceError::Store(crate::store::StoreError::Engine(format!(
        "encoding failed: {e}"
    )))
}

/// What the export starts with.
#[derive(Serialize)]
struct ExportHead {
    exported_at: DateTime<Utc>,
    customer_id: CustomerId,
    profile: views::ProfileView,
    segments: Vec<String>,
    suggestions: Vec<views::SuggestionView>,
}

/// One ledger entry in an export, with the id whose ledger holds it.
#[derive(Serialize)]
struct ExportedEntry {
    ledger_of: CustomerId,
    #[serde(flatten)]
    entry: views::HistoryEntry,
}

enum Phase {
    Opening(Vec<u8>),
    Timeline(Option<TimelinePosition>),
    /// The ledger of `members[index]`, before `before`.
    History {
        index: usize,
        before: Option<u64>,
    },
    Done,
}

/// Interactions and ledger entries per chunk of an export.
const EXPORT_PAGE: usize = 200;

/// An export being sent: `{"exported_at", "customer_id", "profile",
/// "segments", "suggestions", "timeline": [...], "history": [...]}`.
pub struct Export {
    services: Arc<Services>,
    profile: Profile,
    members: Vec<CustomerId>,
    phase: Phase,
    /// Whether the array being written is still empty.
    first: bool,
}

impl Export {
    /// The next piece of the document, or `None` when it is complete.
    pub fn next_chunk(&mut self) -> Option<Result<Vec<u8>, ServiceError>> {
        let result = self.advance();
        match result {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => None,
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e))
            }
        }
    }

    fn push_items<T: Serialize>(
        &mut self,
        out: &mut Vec<u8>,
        items: &[T],
    ) -> Result<(), ServiceError> {
        for item in items {
            if !std::mem::take(&mut self.first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, item).map_err(encoding)?;
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<Vec<u8>>, ServiceError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Opening(bytes) => {
                self.phase = Phase::Timeline(None);
                Ok(Some(bytes))
            }
            Phase::Timeline(before) => {
                let (page, more) =
                    self.services
                        .interactions(&self.profile, before, EXPORT_PAGE, None)?;
                let next = page.last().and_then(|i| TimelinePosition::from_id(&i.id));
                let masking = self.services.masking(Access { pii: true });
                let items: Vec<InteractionView> = page
                    .into_iter()
                    .map(|i| views::interaction_view(i, &masking))
                    .collect();
                let mut out = Vec::new();
                self.push_items(&mut out, &items)?;
                if more && next.is_some() {
                    self.phase = Phase::Timeline(next);
                } else {
                    out.extend_from_slice(b"],\"history\":[");
                    self.first = true;
                    self.phase = Phase::History {
                        index: 0,
                        before: None,
                    };
                }
                Ok(Some(out))
            }
            Phase::History { index, before } => {
                let Some(&member) = self.members.get(index) else {
                    // Erased or merged away while it was read: what was
                    // sent may be incomplete, so the document must not end.
                    if self
                        .services
                        .store
                        .profile(self.profile.customer_id)?
                        .is_none()
                    {
                        return Err(ServiceError::ProfileNotFound(
                            "profile (it was erased or merged during the export)",
                        ));
                    }
                    return Ok(Some(b"]}".to_vec()));
                };
                let mut entries = self
                    .services
                    .store
                    .history(member, before, EXPORT_PAGE + 1)?;
                let more = entries.len() > EXPORT_PAGE;
                entries.truncate(EXPORT_PAGE);
                let next = entries.last().map(|(seq, _)| *seq);
                let masking = self.services.masking(Access { pii: true });
                let items: Vec<ExportedEntry> = entries
                    .into_iter()
                    .map(|(seq, e)| ExportedEntry {
                        ledger_of: member,
                        entry: views::history_view(seq, e, &masking),
                    })
                    .collect();
                let mut out = Vec::new();
                self.push_items(&mut out, &items)?;
                self.phase = if more {
                    Phase::History {
                        index,
                        before: next,
                    }
                } else {
                    Phase::History {
                        index: index + 1,
                        before: None,
                    }
                };
                Ok(Some(out))
            }
            Phase::Done => Ok(None),
        }
    }
}

//! Who is who: manual merge and unmerge, detaching an identifier, merge
//! suggestions, and the identity ledger.

use std::collections::BTreeMap;

use super::{live_in, update, Attribution, HistoryQuery, MAX_PAGE};
use crate::domain::{
    parse_decimal, Caps, ConflictReason, CustomerId, IdentityEventKind, NormaliseOutcome, Profile,
    Suggestion,
};
use crate::service::ingest::{absorb, detach, event, Cause, Linking};
use crate::service::views::{self, Access, HistoryPage, ProfileView, SuggestionView};
use crate::service::{atomically, Caller, ServiceError, Services};

impl Services {
    /// A confirmed manual merge of `source` into `target`. Merging a source that
    /// already belongs to the target succeeds again (a retry is harmless).
    pub async fn merge(
        &self,
        target: CustomerId,
        source: CustomerId,
        caller: Caller,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        if target == source {
            return Err(ServiceError::SameProfile);
        }
        let now = Services::now();
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, &rules, target, now, Attribution::Whole, |tx, t| {
                    let s = match tx.profile(source)? {
                        Some(s) => s,
                        None => match tx.alias(source)? {
                            Some(to) if to == target => return Ok(()),
                            Some(to) => tx
                                .profile(to)?
                                .ok_or(ServiceError::ProfileNotFound("source profile"))?,
                            None => return Err(ServiceError::ProfileNotFound("source profile")),
                        },
                    };
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for r in t.identifiers.iter().chain(&s.identifiers) {
                        *counts.entry(r.identifier.kind()).or_default() += 1;
                    }
                    for (kind, n) in counts {
                        let limit = rules.identifiers.rule(kind).and_then(|r| r.limit);
                        if limit.is_some_and(|l| n > l) {
                            return Err(ServiceError::merge_refused(
                                ConflictReason::IdentifierLimit,
                            ));
                        }
                    }
                    let bytes =
                        tx.profile_bytes(t.customer_id)? + tx.profile_bytes(s.customer_id)?;
                    check_caps(t, &s, bytes, &rules.caps)?;
                    let cause = Cause::request(&caller);
                    absorb(tx, t, s, Linking::default(), &cause, now, &rules.channels)?;
                    Ok(())
                })
            })
            .await?;
        // Counted once committed: a shared store may run the write again.
        metrics::counter!("anamnesis_merges_total", "kind" => "manual").increment(1);
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Undoes the merge of `merged` into `id`: `merged` comes back under its
    /// own id with exactly what it (and whatever it had absorbed) contributed,
    /// including what arrived since through its own identifiers; `id` keeps
    /// only its own. Returns both, survivor first.
    pub async fn unmerge(
        &self,
        id: CustomerId,
        merged: CustomerId,
        caller: Caller,
        access: Access,
    ) -> Result<(ProfileView, ProfileView), ServiceError> {
        let now = Services::now();
        let rules = self.rules.clone();
        let (survivor, restored) = self
            .committer
            .run(move |store| {
                atomically(store, |tx| {
                    let mut p = live_in(tx, id)?;
                    let mut restored = p
                        .split(merged, &rules.channels, now)
                        .map_err(|_| ServiceError::NothingToUnmerge(merged))?;
                    for r in &restored.identifiers {
                        tx.set_owner(&r.identifier, merged);
                    }
                    tx.delete_alias(merged);
                    for member in &restored.merged_ids {
                        tx.put_alias(*member, merged);
                    }
                    rules.refresh(&mut p, now);
                    rules.refresh(&mut restored, now);
                    tx.put_profile(&p)?;
                    tx.put_profile(&restored)?;
                    let cause = Cause::request(&caller);
                    let mut on_survivor = event(IdentityEventKind::Unmerged, now, &cause);
                    on_survivor.other_id = Some(merged);
                    tx.add_history(id, &on_survivor)?;
                    let mut on_restored = event(IdentityEventKind::Unmerged, now, &cause);
                    on_restored.other_id = Some(id);
                    tx.add_history(merged, &on_restored)?;
                    Ok((p, restored))
                })
            })
            .await?;
        metrics::counter!("anamnesis_unmerges_total").increment(1);
        let masking = self.masking(access);
        Ok((
            views::profile_view(&survivor, &masking),
            views::profile_view(&restored, &masking),
        ))
    }

    /// Detaches a wrongly linked identifier: future signals with it no longer
    /// resolve to this profile.
    pub async fn remove_identifier(
        &self,
        id: CustomerId,
        kind: String,
        value: String,
        caller: Caller,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        let identifier = match self.rules.identifiers.normalise(&kind, &value)? {
            NormaliseOutcome::Usable(identifier) => identifier,
            NormaliseOutcome::Ignored(_) => return Err(ServiceError::IdentifierNotOnProfile),
        };
        let now = Services::now();
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, &rules, id, now, Attribution::Own, |tx, p| {
                    if !p.owns(&identifier) {
                        return Err(ServiceError::IdentifierNotOnProfile);
                    }
                    let cause = Cause::request(&caller);
                    detach(tx, p, &identifier, &cause, now, &rules.channels)?;
                    tx.remove_owner(&identifier);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Open merge suggestions involving this profile (or any profile it
    /// absorbed), one per other live profile, with the evidence.
    pub fn suggestions(
        &self,
        id: CustomerId,
        access: Access,
    ) -> Result<Vec<SuggestionView>, ServiceError> {
        self.suggestions_of(&self.live(id)?, access)
    }

    /// The same for a profile already read.
    pub(in crate::service) fn suggestions_of(
        &self,
        p: &Profile,
        access: Access,
    ) -> Result<Vec<SuggestionView>, ServiceError> {
        let mut by_other: BTreeMap<CustomerId, Suggestion> = BTreeMap::new();
        for member in p.members() {
            for (other, s) in self.store.suggestions(member)? {
                if s.dismissed_at.is_some() {
                    continue;
                }
                let Some(live) = self.current(other)?.map(|o| o.customer_id) else {
                    continue;
                };
                if live == p.customer_id {
                    continue;
                }
                match by_other.get_mut(&live) {
                    None => {
                        by_other.insert(live, s);
                    }
                    Some(seen) => {
                        for e in s.evidence {
                            if !seen.evidence.contains(&e) {
                                seen.evidence.push(e);
                            }
                        }
                        seen.count += s.count;
                        seen.first_at = seen.first_at.min(s.first_at);
                        seen.last_at = seen.last_at.max(s.last_at);
                    }
                }
            }
        }
        let masking = self.masking(access);
        Ok(by_other
            .into_iter()
            .map(|(other, s)| views::suggestion_view(other, s, &masking))
            .collect())
    }

    /// Dismisses the suggestion that `id` and `other` are one person; it is
    /// remembered and not proposed again.
    pub async fn dismiss_suggestion(
        &self,
        id: CustomerId,
        other: CustomerId,
        caller: Caller,
    ) -> Result<(), ServiceError> {
        let now = Services::now();
        self.committer
            .run(move |store| {
                atomically(store, |tx| {
                    let p = live_in(tx, id)?;
                    let o = tx.profile(other)?.ok_or(ServiceError::SuggestionNotFound)?;
                    let mut found = false;
                    for a in p.members() {
                        for b in o.members() {
                            if let Some(mut s) = tx.suggestion(a, b)? {
                                if s.dismissed_at.is_none() {
                                    s.dismissed_at = Some(now);
                                    s.last_cause = Cause::request(&caller).text;
                                    tx.put_suggestion(a, b, &s)?;
                                    found = true;
                                }
                            }
                        }
                    }
                    if found {
                        Ok(())
                    } else {
                        Err(ServiceError::SuggestionNotFound)
                    }
                })
            })
            .await
    }

    /// A profile's identity ledger, newest first. Absorbed and erased ids keep
    /// theirs (an erased one only the erasure entry).
    pub fn history(
        &self,
        id: CustomerId,
        q: &HistoryQuery,
        access: Access,
    ) -> Result<HistoryPage, ServiceError> {
        let before = match &q.cursor {
            Some(c) => Some(parse_decimal(c).ok_or(ServiceError::InvalidCursor)?),
            None => None,
        };
        let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let mut entries = self.store.history(id, before, limit + 1)?;
        if entries.is_empty() && before.is_none() {
            // Nothing recorded: tell a typo from a quiet profile.
            self.live(id).map(|_| ()).or_else(|e| match e {
                ServiceError::Moved { .. } => Ok(()),
                other => Err(other),
            })?;
        }
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_cursor = if more {
            entries.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        let masking = self.masking(access);
        Ok(HistoryPage {
            customer_id: id,
            events: entries
                .into_iter()
                .map(|(seq, e)| views::history_view(seq, e, &masking))
                .collect(),
            next_cursor,
        })
    }
}

/// Refuses a manual merge that would make a profile hold more merged
/// profiles or identifiers, or take more bytes, than the configured caps. (A signal's merges are
/// held to the same caps by the planner, which stores what fits instead.)
fn check_caps(
    target: &Profile,
    absorbed: &Profile,
    bytes: usize,
    caps: &Caps,
) -> Result<(), ServiceError> {
    if bytes > caps.max_profile_bytes {
        return Err(ServiceError::CapExceeded {
            what: "bytes",
            cap: caps.max_profile_bytes,
        });
    }
    let merged = target.merged_ids.len() + absorbed.merged_ids.len() + 1;
    if merged > caps.max_merged {
        return Err(ServiceError::CapExceeded {
            what: "merged profiles",
            cap: caps.max_merged,
        });
    }
    let identifiers = target.identifiers.len() + absorbed.identifiers.len();
    if identifiers > caps.max_identifiers {
        return Err(ServiceError::CapExceeded {
            what: "identifiers",
            cap: caps.max_identifiers,
        });
    }
    Ok(())
}

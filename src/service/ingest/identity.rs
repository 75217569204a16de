//! Identity changes and their ledger: absorbing a profile into another,
//! suggesting a merge, detaching an identifier, and the entry each writes,
//! naming its [`Cause`]. Signals and direct requests share them.

use chrono::{DateTime, Utc};

use crate::domain::{
    ChannelRules, Contribution, CustomerId, Identifier, IdentityEvent, IdentityEventKind, Profile,
    ProfileEdit, Suggestion,
};
use crate::service::{Caller, ServiceError};
use crate::store::StoreTx;

/// The identifiers through which a signal reached the two sides of a merge
/// (none for a manual merge).
#[derive(Debug, Default)]
pub(in crate::service) struct Linking {
    pub survivor: Option<Identifier>,
    pub absorbed: Option<Identifier>,
}

/// Who made an identity change, and through what: named in every ledger entry.
#[derive(Debug, Clone)]
pub(in crate::service) struct Cause {
    /// `signal:<signal_id>`, `signal`, or `token:<subject>`.
    pub text: String,
    pub by: Option<String>,
    pub channel: Option<String>,
}

impl Cause {
    /// A change a caller asked for directly (not through a signal).
    pub fn request(caller: &Caller) -> Cause {
        Cause {
            text: format!("token:{}", caller.subject),
            by: Some(caller.subject.clone()),
            channel: caller.channel.clone(),
        }
    }
}

/// Folds `absorbed` into `target` and re-points everything that named it. The
/// cost depends on the number of identifiers and merged ids, never on the
/// length of the timeline, which stays where it was written.
pub(in crate::service) fn absorb(
    tx: &mut dyn StoreTx,
    target: &mut Profile,
    absorbed: Profile,
    linking: Linking,
    cause: &Cause,
    now: DateTime<Utc>,
    channels: &ChannelRules,
) -> Result<(), ServiceError> {
    let survivor = target.customer_id;
    let absorbed_id = absorbed.customer_id;
    for record in &absorbed.identifiers {
        tx.set_owner(&record.identifier, survivor);
    }
    for old in absorbed.members() {
        tx.put_alias(old, survivor);
    }
    tx.delete_profile(absorbed_id);
    // A suggestion between the two is settled by the merge.
    tx.delete_suggestion(survivor, absorbed_id);
    let contributed = Contribution::of(&absorbed);
    let survivor_contributed = Some(Contribution::of(target));
    let mut merged_in = event(IdentityEventKind::MergedIn, now, cause);
    // Each side's ledger names its own identifier of the link: a ledger goes
    // with its profile when that is erased, and so does what it names.
    merged_in.identifier = linking.survivor;
    merged_in.other_id = Some(absorbed_id);
    merged_in.contributed = Some(contributed);
    merged_in.survivor_contributed = survivor_contributed;
    tx.add_history(survivor, &merged_in)?;
    let mut merged_out = event(IdentityEventKind::MergedOut, now, cause);
    merged_out.identifier = linking.absorbed;
    merged_out.other_id = Some(survivor);
    merged_out.contributed = Some(contributed);
    merged_out.survivor_contributed = survivor_contributed;
    tx.add_history(absorbed_id, &merged_out)?;
    for purpose in target.absorb_member(absorbed, &cause.text, now, channels) {
        let mut restricted = event(IdentityEventKind::ConsentRestricted, now, cause);
        restricted.other_id = Some(absorbed_id);
        restricted.purpose = Some(purpose);
        tx.add_history(survivor, &restricted)?;
    }
    Ok(())
}

/// Records (or strengthens) the suggestion that `a` and `b` are one person,
/// unless a person already dismissed it.
pub(super) fn suggest(
    tx: &mut dyn StoreTx,
    (a, a_members): (CustomerId, &[CustomerId]),
    (b, b_members): (CustomerId, &[CustomerId]),
    evidence: &Identifier,
    cause: &str,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    // A dismissal is remembered whatever either side absorbed since.
    for x in a_members {
        for y in b_members {
            if tx
                .suggestion(*x, *y)?
                .is_some_and(|s| s.dismissed_at.is_some())
            {
                return Ok(());
            }
        }
    }
    let mut s = match tx.suggestion(a, b)? {
        Some(s) if s.dismissed_at.is_some() => return Ok(()),
        Some(s) => s,
        None => Suggestion {
            evidence: Vec::new(),
            first_at: now,
            last_at: now,
            count: 0,
            last_cause: String::new(),
            dismissed_at: None,
        },
    };
    if !s.evidence.contains(evidence) {
        s.evidence.push(evidence.clone());
    }
    s.count += 1;
    s.last_at = now;
    s.last_cause = cause.to_owned();
    tx.put_suggestion(a, b, &s)?;
    metrics::counter!("anamnesis_merge_suggestions_total").increment(1);
    Ok(())
}

/// Takes `identifier` off profile `p`, from the member that holds it, and
/// records the removal in that member's ledger (which goes with it if it is
/// erased). Returns the member. The identifier index is the caller's to
/// update: it either frees the value or hands it to another profile.
pub(in crate::service) fn detach(
    tx: &mut dyn StoreTx,
    p: &mut Profile,
    identifier: &Identifier,
    cause: &Cause,
    now: DateTime<Utc>,
    channels: &ChannelRules,
) -> Result<CustomerId, ServiceError> {
    let member = p.member_of(identifier);
    p.apply(
        member,
        &ProfileEdit::RemoveIdentifier(identifier.clone()),
        channels,
    );
    let mut removed = event(IdentityEventKind::IdentifierRemoved, now, cause);
    removed.identifier = Some(identifier.clone());
    tx.add_history(member, &removed)?;
    Ok(member)
}

/// A ledger entry with no identifier, other profile or contribution yet.
pub(in crate::service) fn event(
    kind: IdentityEventKind,
    at: DateTime<Utc>,
    cause: &Cause,
) -> IdentityEvent {
    IdentityEvent {
        kind,
        at,
        cause: cause.text.clone(),
        identifier: None,
        other_id: None,
        contributed: None,
        survivor_contributed: None,
        purpose: None,
        by: cause.by.clone(),
        channel: cause.channel.clone(),
    }
}

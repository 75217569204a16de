//! The audit log: one JSON line per destructive or administrative action —
//! who (the token's subject), what, on which customer id, when, and how it
//! ended. Events go to the `tracing` target `audit`; [`crate::telemetry`]
//! writes that target as JSON lines of its own (to stdout, or to
//! `telemetry.audit_file`), whatever the format of the other logs.
//!
//! No personal data: ids, identifier types and error codes only, never an
//! identifier's value or a trait.

use crate::auth::Principal;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::middleware::current_request;

/// The `tracing` target of audit events.
pub const TARGET: &str = "audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Erase,
    Merge,
    Unmerge,
    RemoveIdentifier,
    Export,
    /// Profiles a signal merged (one line per absorbed profile).
    SignalMerge,
    /// Lookups by identifier refused once the subject's budget of misses
    /// was spent (at most one line a minute per subject).
    Lookup,
    /// A backup of the whole store was taken (or refused).
    Backup,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Erase => "erase",
            Action::Merge => "merge",
            Action::Unmerge => "unmerge",
            Action::RemoveIdentifier => "remove_identifier",
            Action::Export => "export",
            Action::SignalMerge => "merge_by_signal",
            Action::Lookup => "lookup",
            Action::Backup => "backup",
        }
    }
}

/// What the action touched besides the profile it was addressed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detail<'a> {
    /// The other profile of a merge (the source) or unmerge (the restored id).
    pub other_id: Option<CustomerId>,
    /// The type of a removed identifier (never its value).
    pub identifier_type: Option<&'a str>,
}

/// Records one action and how it ended: `ok`, or the error code it failed with.
pub fn record<T>(
    who: &Principal,
    action: Action,
    customer_id: CustomerId,
    detail: Detail<'_>,
    outcome: &Result<T, ApiError>,
) {
    write(who, action, Some(customer_id), detail, outcome);
}

/// Records an action on the whole store (no one customer) and how it ended.
pub fn record_store_action<T>(who: &Principal, action: Action, outcome: &Result<T, ApiError>) {
    write(who, action, None, Detail::default(), outcome);
}

/// Records an action refused before it started (the token lacks its scope).
/// The customer id is the one in the path when it is a customer id at all.
pub fn record_refusal<T>(
    who: &Principal,
    action: Action,
    customer_id: Option<CustomerId>,
    outcome: &Result<T, ApiError>,
) {
    write(who, action, customer_id, Detail::default(), outcome);
}

/// Records a merge a signal made: the caller who sent it, the survivor and
/// the absorbed profile. Called once the merge is committed.
pub fn record_signal_merge(
    subject: &str,
    channel: Option<&str>,
    customer_id: CustomerId,
    other_id: CustomerId,
) {
    let detail = Detail {
        other_id: Some(other_id),
        identifier_type: None,
    };
    line(
        subject,
        channel,
        Action::SignalMerge,
        Some(customer_id),
        detail,
        "ok",
    );
}

fn write<T>(
    who: &Principal,
    action: Action,
    customer_id: Option<CustomerId>,
    detail: Detail<'_>,
    outcome: &Result<T, ApiError>,
) {
    let outcome = match outcome {
        Ok(_) => "ok",
        Err(e) => e.status_and_code().1,
    };
    line(
        &who.subject,
        who.channel.as_deref(),
        action,
        customer_id,
        detail,
        outcome,
    );
}

fn line(
    who: &str,
    channel: Option<&str>,
    action: Action,
    customer_id: Option<CustomerId>,
    detail: Detail<'_>,
    outcome: &str,
) {
    let request_id = current_request().map(|r| r.request_id).unwrap_or_default();
    tracing::info!(
        target: TARGET,
        who,
        channel,
        action = action.as_str(),
        customer_id = customer_id.map(|id| id.to_string()),
        other_id = detail.other_id.map(|id| id.to_string()),
        identifier_type = detail.identifier_type,
        outcome,
        request_id = %request_id,
    );
}

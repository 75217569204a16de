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

use crate::telemetry::audit_line as line;
pub use crate::telemetry::{record_signal_merge, Action, Detail, TARGET};

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

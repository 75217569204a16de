//! Segments and offers as a channel may personalise with them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::CustomerId;

/// What a channel may personalise with, as
/// `GET /v1/profiles/{customer_id}/personalization` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PersonalizationView {
    pub customer_id: CustomerId,
    /// Whether the customer granted the `personalization` purpose.
    pub consent: bool,
    /// Why there is nothing: `consent_not_given` or `consent_denied`.
    #[schema(example = json!(null))]
    pub reason: Option<String>,
    /// Segments the profile is in (none without consent).
    pub segments: Vec<String>,
    /// Offers for those segments, best first (none without consent).
    pub offers: Vec<OfferView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OfferView {
    #[schema(example = "pink_roadster_test_drive")]
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    /// Higher first.
    pub priority: i64,
    /// The profile's segments this offer targets.
    pub segments: Vec<String>,
    /// As configured, for the channel to render.
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, Value>,
}

pub fn offer_view(o: &crate::domain::Offer, matched: Vec<String>) -> OfferView {
    OfferView {
        id: o.id.clone(),
        title: o.title.clone(),
        description: o.description.clone(),
        priority: o.priority,
        segments: matched,
        data: o.data.clone(),
    }
}

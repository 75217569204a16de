//! Positions in a customer's history and the text forms the API hands out
//! for them: an interaction's id (its place on the timeline), the follow-up
//! feed's cursor, and the decimal numbers both are made of. The store keeps
//! entries in this order; the routes read and write these texts.

use super::CustomerId;

/// Where a page of timeline starts: strictly older than this position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimelinePosition {
    pub millis: u64,
    pub seq: u64,
}

impl TimelinePosition {
    /// The interaction id that encodes this position.
    pub fn to_id(self) -> String {
        format!("{:013}-{}", self.millis, self.seq)
    }

    /// Reads an id back; only the shape [`Self::to_id`] writes is one
    /// (`<digits>-<digits>`, each at most 19 digits).
    pub fn from_id(id: &str) -> Option<TimelinePosition> {
        let (millis, seq) = id.split_once('-')?;
        Some(TimelinePosition {
            millis: parse_decimal(millis)?,
            seq: parse_decimal(seq)?,
        })
    }
}

/// A number as this service writes it in ids and cursors: 1 to 19 decimal
/// digits (so every such text fits a `u64`), nothing else (no sign, no space).
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One entry of the follow-up index: an episode resolved at `resolved_millis`
/// that awaits the customer's feedback. Entries sort by resolution time,
/// so "due before" is a range of keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FollowUpKey {
    pub resolved_millis: u64,
    pub customer: CustomerId,
    pub episode: String,
}

impl FollowUpKey {
    /// `<millis>-<customer id>-<episode id in hex>`: the shape
    /// `names::FOLLOW_UP_CURSOR_PATTERN` publishes. The episode id is in hex
    /// so the cursor needs no escaping in a URL (ids may hold `+`, `&`, `#`).
    pub fn to_cursor(&self) -> String {
        let hex: String = self.episode.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{hex}", self.resolved_millis, self.customer)
    }

    pub fn from_cursor(cursor: &str) -> Option<FollowUpKey> {
        let (millis, rest) = cursor.split_once('-')?;
        let (customer, hex) = rest.split_once('-')?;
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let shape =
            !hex.is_empty() && hex.len() % 2 == 0 && hex.len() <= 256 && hex.bytes().all(lower_hex);
        shape.then_some(())?;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<_>>()?;
        // Episode ids are printable ASCII.
        bytes.iter().all(u8::is_ascii_graphic).then_some(())?;
        Some(FollowUpKey {
            resolved_millis: parse_decimal(millis)?,
            customer: CustomerId::parse(customer).ok()?,
            episode: String::from_utf8(bytes).ok()?,
        })
    }
}

//! What the store keeps per `signal_id`: a fingerprint of the signal, to
//! tell a replay from a reuse, and the first result, to answer a replay
//! with. The result is kept in the store's own shape: the API's response
//! may grow or change without changing the bytes on disk; the service
//! converts between the two.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{ConflictReason, CustomerId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRecord {
    /// Fingerprint of the signal's content.
    pub fingerprint: String,
    /// The first result; `None` once the profile was erased.
    pub result: Option<StoredResult>,
}

/// A signal's result as it was first answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub customer_id: CustomerId,
    pub created: bool,
    pub merged_ids: Vec<CustomerId>,
    pub conflicts: Vec<StoredConflict>,
    pub version: u64,
    pub ignored_identifiers: Vec<StoredIgnored>,
    /// Records written before profile caps existed have none.
    #[serde(default)]
    pub not_stored: Vec<StoredLeftOut>,
}

/// An identifier of the signal that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConflict {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub reason: ConflictReason,
}

/// A placeholder identifier left out, by its position in the signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredIgnored {
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub reason: String,
}

/// A trait, answer or episode left out because the profile was full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLeftOut {
    pub item: String,
    pub reason: String,
}

impl SignalRecord {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Engine(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<SignalRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: "signal record".into(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as earlier releases wrote them read back, and are written
    /// again byte for byte.
    #[test]
    fn stored_records_keep_their_bytes() {
        let written = [
            r#"{"fingerprint":"9f0c5e1d2a3b4c5d","result":{"customer_id":"cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z5","created":true,"merged_ids":["cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z6"],"conflicts":[{"type":"email","value":"a@example.com","reason":"merge_not_allowed"}],"version":3,"ignored_identifiers":[{"index":1,"type":"phone","value":"0000","reason":"placeholder"}],"not_stored":[{"item":"traits.colour","reason":"max_traits"}]}}"#,
            r#"{"fingerprint":"00","result":null}"#,
        ];
        for bytes in written {
            let record = SignalRecord::decode(bytes.as_bytes()).expect("it reads");
            assert_eq!(record.encode().unwrap(), bytes.as_bytes());
        }
        // Before profile caps, results had no `not_stored`.
        let old = r#"{"fingerprint":"01","result":{"customer_id":"cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z5","created":false,"merged_ids":[],"conflicts":[],"version":1,"ignored_identifiers":[]}}"#;
        let record = SignalRecord::decode(old.as_bytes()).expect("it reads");
        assert!(record.result.expect("a result").not_stored.is_empty());
    }
}

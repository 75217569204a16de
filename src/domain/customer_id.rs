use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The stable key of a profile: `cus_` followed by a ULID (26 Crockford base32
/// characters), so ids sort by creation time and are recognisable in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(ulid::Ulid);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a customer id (expected `cus_` and 26 base32 characters)")]
pub struct CustomerIdError(pub String);

const PREFIX: &str = "cus_";

impl CustomerId {
    /// A fresh id; only the store creates profiles, so only it calls this.
    pub fn generate() -> CustomerId {
        CustomerId(ulid::Ulid::new())
    }

    pub fn parse(s: &str) -> Result<CustomerId, CustomerIdError> {
        let err = || CustomerIdError(truncate_for_message(s));
        let rest = s.strip_prefix(PREFIX).ok_or_else(err)?;
        if rest.len() != 26 {
            return Err(err());
        }
        let ulid = ulid::Ulid::from_string(rest).map_err(|_| err())?;
        // Only the canonical upper-case spelling is an id, so one customer has one key.
        if ulid.to_string() != rest {
            return Err(err());
        }
        Ok(CustomerId(ulid))
    }

    /// Fixed-width bytes used as the key prefix of everything this id owns.
    pub fn to_key(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    pub fn from_key(bytes: &[u8]) -> Option<CustomerId> {
        let arr: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(CustomerId(ulid::Ulid::from_bytes(arr)))
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.0)
    }
}

impl FromStr for CustomerId {
    type Err = CustomerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CustomerId::parse(s)
    }
}

impl Serialize for CustomerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CustomerId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_key() {
        let id = CustomerId::generate();
        assert_eq!(CustomerId::parse(&id.to_string()), Ok(id));
        assert_eq!(CustomerId::from_key(&id.to_key()), Some(id));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "cus_",
            "01J0000000000000000000000",
            "cus_01j9zzzzzzzzzzzzzzzzzzzzzz",
            "cus_!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "usr_01J9ZZZZZZZZZZZZZZZZZZZZZZ",
        ] {
            assert!(CustomerId::parse(bad).is_err(), "{bad} parsed");
        }
    }
}

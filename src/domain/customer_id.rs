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
        let mut canonical = [0u8; ulid::ULID_LEN];
        if ulid.array_to_str(&mut canonical) != rest {
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

/// `cus_` and 26 characters.
const TEXT_LEN: usize = PREFIX.len() + ulid::ULID_LEN;

impl CustomerId {
    /// The id as text, written into `buf` without allocating (ids are
    /// serialised many times per context card).
    fn encode(self, buf: &mut [u8; TEXT_LEN]) -> &str {
        let (prefix, rest) = buf.split_at_mut(PREFIX.len());
        prefix.copy_from_slice(PREFIX.as_bytes());
        let rest: &mut [u8; ulid::ULID_LEN] = rest.try_into().expect("the buffer fits an id");
        self.0.array_to_str(rest);
        // Both parts are ASCII.
        std::str::from_utf8(buf).expect("an id is ASCII")
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; TEXT_LEN]))
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
        s.serialize_str(self.encode(&mut [0; TEXT_LEN]))
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

//! The key scheme. Every key starts with `redis.key_prefix` and names the
//! store; on a cluster it also names a bucket, one hash slot by its hash tag,
//! with a generation of its own (see the module doc of the cache).

use sha2::{Digest, Sha256};

use super::RedisLink;
use crate::domain::{CustomerId, Identifier};

/// The buckets of a cluster's keys: one hash slot each, so they spread over
/// up to this many primaries (more than a cluster of this service needs),
/// while bumping every generation after an outage stays one short burst.
pub(super) const CLUSTER_BUCKETS: u32 = 256;

impl RedisLink {
    /// What starts every key of `bucket`: on a cluster
    /// `<prefix>{<store>:<bucket>}:`, the braces making the bucket the key's
    /// hash slot; on one server `<prefix><store>:`.
    fn bucket_prefix(&self, bucket: u32) -> String {
        if self.buckets == 1 {
            format!("{}{}:", self.prefix, self.store)
        } else {
            format!("{}{{{}:{bucket}}}:", self.prefix, self.store)
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let bucket = bucket_of(id, self.buckets);
        format!("{}{kind}:{id}", self.bucket_prefix(bucket))
    }

    pub(super) fn bucket_generation(&self, bucket: u32) -> String {
        format!("{}generation", self.bucket_prefix(bucket))
    }

    /// The generation of the bucket `key` is in (on its hash slot): the
    /// key's own bucket prefix, which the store id (alphanumeric) and the
    /// prefix (no braces) cannot confuse.
    pub(super) fn generation_key(&self, key: &str) -> String {
        match key.find("}:") {
            Some(end) if self.buckets > 1 => format!("{}generation", &key[..end + 2]),
            _ => self.bucket_generation(0),
        }
    }

    pub(super) fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    pub fn card_key(&self, id: CustomerId) -> String {
        self.key("card", &id.to_string())
    }

    /// Identifiers are hashed: no phone number or email appears in a key.
    pub fn owner_key(&self, identifier: &Identifier) -> String {
        let digest = Sha256::digest(identifier.key());
        let mut hex = String::with_capacity(64);
        for b in digest {
            hex.push_str(&format!("{b:02x}"));
        }
        self.key("owner", &hex)
    }
}

/// Which of `buckets` an id's keys go to (FNV-1a: stable across builds and
/// instances, which must all agree).
fn bucket_of(id: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % buckets
}

#[cfg(test)]
mod tests {
    use super::{bucket_of, CLUSTER_BUCKETS};

    #[test]
    fn ids_spread_over_every_bucket_and_always_to_the_same_one() {
        assert_eq!(bucket_of("01JABCDEF", 1), 0);
        assert_eq!(
            bucket_of("a", CLUSTER_BUCKETS),
            bucket_of("a", CLUSTER_BUCKETS)
        );
        let mut seen = vec![0u32; CLUSTER_BUCKETS as usize];
        for i in 0..25_600 {
            seen[bucket_of(
                &ulid::Ulid::from(i as u128 * 7919).to_string(),
                CLUSTER_BUCKETS,
            ) as usize] += 1;
        }
        let (least, most) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        assert!(*least > 50 && *most < 150, "uneven: {least}..{most}");
    }
}

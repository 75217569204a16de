//! Verified tokens remembered until they expire, so an asymmetric signature is
//! checked once per token rather than once per request.
//!
//! An entry is only as good as the key ring it was verified with: each carries
//! the ring's generation, and a reloaded ring (a rotated JWKS) makes every
//! older entry a miss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Principal;

const SHARDS: usize = 16;

struct Entry {
    principal: Arc<Principal>,
    /// Unix seconds after which the token no longer verifies (exp + leeway).
    valid_until: u64,
    generation: u64,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    /// Holds at most about `capacity` tokens; 0 disables the cache.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Entry>> {
        // The last characters are signature bytes: as good as a hash, free.
        let last = token.as_bytes().last().copied().unwrap_or(0) as usize;
        &self.shards[last % SHARDS]
    }

    pub fn get(&self, token: &str, generation: u64, now: u64) -> Option<Arc<Principal>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(token)?;
        (entry.generation == generation && now <= entry.valid_until)
            .then(|| entry.principal.clone())
    }

    pub fn insert(
        &self,
        token: &str,
        principal: Arc<Principal>,
        valid_until: u64,
        generation: u64,
        now: u64,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.generation == generation && now <= e.valid_until);
            if shard.len() >= self.per_shard {
                // Full of live tokens: start over rather than track recency.
                shard.clear();
            }
        }
        shard.insert(
            token.into(),
            Entry {
                principal,
                valid_until,
                generation,
            },
        );
    }
}

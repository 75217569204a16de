//! The in-process layer in front of Redis (or of the store, without Redis):
//! decoded cards and identifier owners, so a hot read costs neither a round
//! trip, nor a store read, nor decoding.
//!
//! Only this process writes to its store (the committer), so it knows every
//! change: entries are dropped once the group of writes that changed them is
//! applied, on the committer thread, and again once the group's Redis
//! markers are written (an entry copied from Redis in between may predate
//! them), both times before the writes are acknowledged. A reader notes its shard's epoch before
//! it reads (from Redis or the store) and keeps what it read only if no
//! change to that shard came in between, so a fill can never bring back what
//! a write replaced.
//!
//! Without Redis the layer sits in front of the store and works the same
//! way (only the second drop is missing, there being no markers).
//!
//! Memory is bounded by `cache.local_bytes`, counted as each entry's size as
//! JSON (what it holds decoded is a small multiple of that); a full shard
//! drops arbitrary entries. Entries are used for `redis.ttl_secs` at most,
//! like Redis's own.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::{CustomerId, Identifier};

use super::profiles::CardSource;

const SHARDS: usize = 32;

/// A card and what it counts for: its size and when it was kept.
type CardEntry = (Arc<CardSource>, usize, Instant);

#[derive(Default)]
struct Shard {
    /// Bumped by every change to an entry of this shard.
    epoch: u64,
    cards: HashMap<CustomerId, CardEntry>,
    owners: HashMap<Vec<u8>, (CustomerId, Instant)>,
    bytes: usize,
}

/// What an owner entry counts for, beyond its key.
const OWNER_BYTES: usize = 64;

impl Shard {
    /// Drops entries (from the larger map, an arbitrary one each time)
    /// until `need` more bytes fit.
    fn make_room(&mut self, budget: usize, need: usize) {
        while self.bytes + need > budget && !(self.cards.is_empty() && self.owners.is_empty()) {
            if self.cards.len() >= self.owners.len() {
                if let Some(victim) = self.cards.keys().next().copied() {
                    if let Some((_, size, _)) = self.cards.remove(&victim) {
                        self.bytes -= size;
                    }
                }
            } else if let Some(victim) = self.owners.keys().next().cloned() {
                self.owners.remove(&victim);
                self.bytes -= victim.len() + OWNER_BYTES;
            }
        }
    }
}

/// The epoch a reader noted before reading, to keep what it read.
#[derive(Debug, Clone, Copy)]
pub struct Noted {
    shard: usize,
    epoch: u64,
}

pub struct HotCards {
    shards: Vec<Mutex<Shard>>,
    /// The store's generation the entries were read under (see [`HotCards::follow`]).
    generation: AtomicU64,
    budget: usize,
    /// Entries older than this are not used (as in Redis): nothing a gap in
    /// the Redis layer let in stays longer than there.
    ttl: Duration,
}

fn shard_of(value: &impl Hash) -> usize {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl HotCards {
    /// `bytes`: the most the layer holds, over all shards, counted as the
    /// entries' size as JSON; `ttl`: how long an entry is used.
    pub fn new(bytes: usize, ttl: Duration) -> HotCards {
        HotCards {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            generation: AtomicU64::new(0),
            budget: bytes / SHARDS,
            ttl,
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The card of `id`, or the epoch to note before reading it elsewhere.
    pub fn card(&self, id: CustomerId) -> Result<Arc<CardSource>, Noted> {
        let shard = shard_of(&id);
        let s = self.lock(shard);
        match s.cards.get(&id) {
            Some((card, _, at)) if at.elapsed() < self.ttl => Ok(card.clone()),
            _ => Err(Noted {
                shard,
                epoch: s.epoch,
            }),
        }
    }

    /// Keeps a card read since `noted`, unless its shard changed meanwhile.
    pub fn keep_card(&self, id: CustomerId, noted: Noted, card: Arc<CardSource>, size: usize) {
        if size > self.budget / 4 {
            return;
        }
        let mut s = self.lock(noted.shard);
        if s.epoch != noted.epoch {
            return;
        }
        let replaced = s.cards.remove(&id);
        if let Some((_, old, _)) = &replaced {
            s.bytes -= old;
        }
        s.make_room(self.budget, size);
        s.cards.insert(id, (card, size, Instant::now()));
        s.bytes += size;
        drop(s);
        drop(replaced);
    }

    /// The owner of `identifier`, or the epoch to note before reading it elsewhere.
    pub fn owner(&self, identifier: &Identifier) -> Result<CustomerId, Noted> {
        let key = identifier.key();
        let shard = shard_of(&key);
        let s = self.lock(shard);
        match s.owners.get(key.as_slice()) {
            Some((id, at)) if at.elapsed() < self.ttl => Ok(*id),
            _ => Err(Noted {
                shard,
                epoch: s.epoch,
            }),
        }
    }

    pub fn keep_owner(&self, identifier: &Identifier, noted: Noted, owner: CustomerId) {
        let mut s = self.lock(noted.shard);
        if s.epoch != noted.epoch {
            return;
        }
        let key = identifier.key();
        let size = key.len() + OWNER_BYTES;
        if s.owners.remove(key.as_slice()).is_some() {
            s.bytes -= size;
        }
        s.make_room(self.budget, size);
        s.owners.insert(key, (owner, Instant::now()));
        s.bytes += size;
    }

    /// Forgets every entry when the store's generation moved on: the store
    /// replaced its database after a failure, and what was read before may
    /// include writes that never reached the disk. Every shard's epoch moves
    /// too, so a reader that noted one before cannot keep what it read.
    pub fn follow(&self, generation: u64) {
        if self.generation.load(Ordering::SeqCst) == generation
            || self.generation.swap(generation, Ordering::SeqCst) == generation
        {
            return;
        }
        for shard in 0..SHARDS {
            let mut s = self.lock(shard);
            s.epoch += 1;
            let cards = std::mem::take(&mut s.cards);
            s.owners.clear();
            s.bytes = 0;
            drop(s);
            drop(cards);
        }
    }

    /// Drops what a write changed (called on the committer thread once the
    /// write is applied, and again once its Redis markers are written).
    pub fn invalidate(&self, customers: &BTreeSet<CustomerId>, identifiers: &BTreeSet<Identifier>) {
        for id in customers {
            let mut s = self.lock(shard_of(id));
            s.epoch += 1;
            let removed = s.cards.remove(id);
            if let Some((_, size, _)) = &removed {
                s.bytes -= size;
            }
            // A card is freed after the lock, off the shard's critical path.
            drop(s);
            drop(removed);
        }
        for identifier in identifiers {
            let key = identifier.key();
            let mut s = self.lock(shard_of(&key));
            s.epoch += 1;
            if s.owners.remove(key.as_slice()).is_some() {
                s.bytes -= key.len() + OWNER_BYTES;
            }
        }
    }
}

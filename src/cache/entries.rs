//! Entries, `<generation>:<position>:<body>`: reading one, filling it after
//! a miss, and marking entries stale after a write, the last two by Lua
//! scripts so that an older position never overwrites a newer one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::RedisResult;

use super::RedisLink;

/// Fills an entry unless it holds a newer position (or the generation moved).
/// KEYS: generation, entry. ARGV: generation, position, value, ttl ms.
pub(super) const FILL: &str = r"
local g = redis.call('GET', KEYS[1]) or '0'
if g ~= ARGV[1] then return 0 end
local cur = redis.call('GET', KEYS[2])
if cur then
  local cg, cs = string.match(cur, '^(%d+):(%d+):')
  if cg == g and tonumber(cs) > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
";

/// Marks entries stale at a position, unless they hold a newer one, then
/// publishes the events. KEYS: generation, entries... ARGV: position, ttl ms,
/// channel, message ('' for none).
pub(super) const MARK: &str = r"
local g = redis.call('GET', KEYS[1]) or '0'
local s = tonumber(ARGV[1])
local mark = g .. ':' .. ARGV[1] .. ':'
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  local keep = false
  if cur then
    local cg, cs = string.match(cur, '^(%d+):(%d+):')
    keep = cg == g and tonumber(cs) >= s
  end
  if not keep then redis.call('SET', KEYS[i], mark, 'PX', ARGV[2]) end
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return #KEYS - 1
";

/// A value as Redis returns it (absent: `None`).
type Raw = Option<Vec<u8>>;

/// What a cache read found.
pub enum Cached {
    /// The entry's body.
    Hit(Vec<u8>),
    /// Nothing usable; fill at this generation.
    Miss { generation: u64 },
    /// Redis is not to be used now: read the store.
    Off,
}

impl RedisLink {
    /// Reads an entry.
    pub async fn get(&self, key: &str, kind: &'static str) -> Cached {
        let mut conn = self.conn();
        let found: Option<(Raw, Raw)> = self
            .call(
                "read",
                redis::cmd("MGET")
                    .arg(self.generation_key(key))
                    .arg(key)
                    .query_async(&mut conn),
            )
            .await;
        let Some((generation, entry)) = found else {
            return Cached::Off;
        };
        let generation = generation
            .as_deref()
            .and_then(|g| std::str::from_utf8(g).ok())
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let hit = entry.and_then(|e| match split_entry(&e) {
            Some((g, _, body)) if g == generation && !body.is_empty() => Some(body.to_vec()),
            _ => None,
        });
        let result = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("anamnesis_cache_requests_total", "kind" => kind, "result" => result)
            .increment(1);
        match hit {
            Some(body) => Cached::Hit(body),
            None => Cached::Miss { generation },
        }
    }

    /// Stores what a reader read from the store, in the background; `seq` is
    /// the durable position noted before that read.
    pub fn fill(self: &Arc<Self>, key: String, generation: u64, seq: u64, body: Vec<u8>) {
        if !self.healthy() {
            return;
        }
        let link = self.clone();
        self.handle.spawn(async move {
            let mut value = format!("{generation}:{seq}:").into_bytes();
            value.extend_from_slice(&body);
            let mut conn = link.conn();
            let mut invocation = link.fill.key(link.generation_key(&key));
            invocation
                .key(key)
                .arg(generation)
                .arg(seq)
                .arg(value)
                .arg(link.ttl_ms);
            let _: Option<i64> = link.call("fill", invocation.invoke_async(&mut conn)).await;
        });
    }

    /// Marks `keys` stale at position `seq` (and publishes `message` on the
    /// bus unless empty); when Redis cannot be reached, makes sure the
    /// generation is bumped before it is used again.
    pub(super) async fn mark_stale(&self, keys: &[&String], seq: u64, message: String) {
        if !self.healthy() && !self.returning.load(Ordering::SeqCst) {
            if !keys.is_empty() {
                self.dirty.store(true, Ordering::SeqCst);
            }
            return;
        }
        // Each bucket's keys, with the bucket's generation first.
        let mut buckets: Vec<(String, Vec<&String>)> = Vec::new();
        for key in keys {
            let generation = self.generation_key(key);
            match buckets.iter_mut().find(|(g, _)| *g == generation) {
                Some((_, in_bucket)) => in_bucket.push(*key),
                None => buckets.push((generation, vec![*key])),
            }
        }
        if buckets.is_empty() {
            buckets.push((self.bucket_generation(0), Vec::new()));
        }
        // One bucket: marked and published in one script run. Several: the
        // events go out once every bucket is marked.
        let publish_apart = buckets.len() > 1;
        let channel = self.channel();
        let runs = buckets.iter().map(|(generation, in_bucket)| {
            let mut conn = self.conn();
            let mut invocation = self.mark.key(generation);
            for key in in_bucket {
                invocation.key(*key);
            }
            invocation
                .arg(seq)
                .arg(self.ttl_ms)
                .arg(&channel)
                .arg(if publish_apart { "" } else { message.as_str() });
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        });
        let marked = tokio::time::timeout(self.timeout, async {
            for run in join_all(runs).await {
                run?;
            }
            if publish_apart && !message.is_empty() {
                let mut conn = self.conn();
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&message)
                    .query_async::<i64>(&mut conn)
                    .await?;
            }
            RedisResult::Ok(())
        })
        .await;
        match marked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.degrade(&format!("invalidation: {e}"), true),
            Err(_) => self.degrade("invalidation: no answer in time", true),
        }
    }
}

/// `<generation>:<position>:<body>` -> its parts.
fn split_entry(entry: &[u8]) -> Option<(u64, u64, &[u8])> {
    let mut parts = entry.splitn(3, |b| *b == b':');
    let generation = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((generation, seq, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::split_entry;

    #[test]
    fn entries_split_into_generation_position_and_body() {
        assert_eq!(split_entry(b"3:17:{}"), Some((3, 17, &b"{}"[..])));
        assert_eq!(split_entry(b"3:17:"), Some((3, 17, &b""[..])));
        assert_eq!(split_entry(b"3:17:a:b"), Some((3, 17, &b"a:b"[..])));
        assert_eq!(split_entry(b"x:17:"), None);
        assert_eq!(split_entry(b"3"), None);
    }
}

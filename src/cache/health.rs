//! The health state machine. Redis is in use (healthy), degraded (every
//! call is answered from the store) or returning (it answers again, and
//! writes mark their entries while every generation is bumped); a
//! background check brings it back from degraded.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::RedisResult;

use super::RedisLink;

impl RedisLink {
    /// Whether Redis is in use (not degraded).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Redis went wrong: stop using it until the check finds it again.
    pub(super) fn degrade(&self, why: &str, stale_possible: bool) {
        if stale_possible {
            self.dirty.store(true, Ordering::SeqCst);
        }
        self.returning.store(false, Ordering::SeqCst);
        if self.healthy.swap(false, Ordering::SeqCst) {
            metrics::gauge!("anamnesis_redis_up").set(0.0);
            tracing::warn!(reason = why, "Redis degraded: serving from the store");
        }
    }

    /// Runs one Redis call within the timeout; `None` (and degraded) otherwise.
    pub(super) async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if !self.healthy() {
            metrics::counter!("anamnesis_cache_fallbacks_total", "reason" => "degraded")
                .increment(1);
            return None;
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                metrics::counter!("anamnesis_cache_fallbacks_total", "reason" => "error")
                    .increment(1);
                let timed_out = e.is_timeout();
                self.degrade(&format!("{what}: {e}"), !timed_out);
                None
            }
            Err(_) => {
                metrics::counter!("anamnesis_cache_fallbacks_total", "reason" => "timeout")
                    .increment(1);
                self.degrade(&format!("{what}: no answer in time"), false);
                None
            }
        }
    }

    /// Bumps every bucket's generation: each entry written before is unusable.
    async fn bump_generations(&self) -> bool {
        let bumps = (0..self.buckets).map(|bucket| {
            let mut conn = self.conn();
            let key = self.bucket_generation(bucket);
            async move {
                redis::cmd("INCR")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
            }
        });
        let bumped = tokio::time::timeout(self.timeout * 4, join_all(bumps)).await;
        matches!(bumped, Ok(results) if results.iter().all(Result::is_ok))
    }

    /// While degraded, checks Redis every 200 ms; once it answers and the
    /// generation is bumped, uses it again.
    pub(super) async fn recover(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut failed_checks = 0u32;
        loop {
            tick.tick().await;
            if self.healthy() || self.closed.load(Ordering::SeqCst) {
                failed_checks = 0;
                continue;
            }
            let mut conn = self.conn();
            let ping = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            if !matches!(ping, Ok(Ok(_))) {
                failed_checks += 1;
                self.reconnect_now_and_then(failed_checks);
                continue;
            }
            // Always a new generation after an outage: entries may predate
            // a marker this instance or another could not write (a slow
            // Redis, a failover to a replica that lags, an old snapshot).
            // Every bucket answering is also the check that every node of
            // a cluster does. A write left unmarked sets `dirty` after it
            // committed: cleared before the bump, it was committed before
            // the bump (harmless: every reader after the bump sees it);
            // set after, it calls for another round.
            self.returning.store(true, Ordering::SeqCst);
            self.dirty.store(false, Ordering::SeqCst);
            if !self.bump_generations().await {
                self.returning.store(false, Ordering::SeqCst);
                self.dirty.store(true, Ordering::SeqCst);
                failed_checks += 1;
                self.reconnect_now_and_then(failed_checks);
                continue;
            }
            if self.dirty.load(Ordering::SeqCst) {
                continue;
            }
            self.healthy.store(true, Ordering::SeqCst);
            if self.dirty.load(Ordering::SeqCst) {
                // A marker failed while this check ran: not yet.
                self.healthy.store(false, Ordering::SeqCst);
                continue;
            }
            metrics::gauge!("anamnesis_redis_up").set(1.0);
            tracing::info!("Redis is back: cache and event bus in use");
        }
    }
}

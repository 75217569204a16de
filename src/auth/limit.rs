//! Per-subject rate limiting: a generic cell rate algorithm (GCRA), one
//! timestamp per subject, so a limit costs a hash lookup and no timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LimitSettings;

const SHARDS: usize = 16;
/// Subjects tracked per shard before idle ones are forgotten.
const PRUNE_AT: usize = 4096;

pub struct RateLimiter {
    /// Pause before a refusal is answered (see [`RateLimiter::reject_delay`]).
    reject_delay: Duration,
    /// Nanoseconds one request costs of the budget; 0 when off.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance: u64,
    epoch: Instant,
    /// Subject -> theoretical arrival time of its next request, in ns since
    /// `epoch`.
    shards: Vec<Mutex<HashMap<Arc<str>, u64>>>,
}

impl RateLimiter {
    pub fn new(settings: &LimitSettings) -> RateLimiter {
        let interval = if settings.rate_per_second == 0 {
            0
        } else {
            1_000_000_000 / u64::from(settings.rate_per_second)
        };
        RateLimiter {
            reject_delay: Duration::from_millis(settings.reject_delay_ms),
            interval,
            tolerance: interval * u64::from(settings.burst),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// How long to hold a refusal: `limits.reject_delay_ms`, spread at random
    /// over half to one and a half times that, so the refused connections of
    /// a flooding client come back one by one rather than in one wave.
    pub fn reject_delay(&self) -> Duration {
        self.reject_delay.mul_f64(0.5 + rand::random::<f64>())
    }

    /// Spends one request of `subject`'s budget, or says how long until one
    /// is available again.
    pub fn check(&self, subject: &Arc<str>) -> Result<(), Duration> {
        if self.interval == 0 {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let index = subject
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) ^ b as usize);
        let mut shard = self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= PRUNE_AT && !shard.contains_key(subject) {
            shard.retain(|_, tat| *tat > now);
        }
        let tat = shard.get(subject).copied().unwrap_or(now).max(now);
        let next = tat + self.interval;
        if next - now > self.tolerance {
            return Err(Duration::from_nanos(next - now - self.tolerance));
        }
        shard.insert(subject.clone(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_and_the_next_request_waits() {
        let limiter = RateLimiter::new(&LimitSettings {
            rate_per_second: 10,
            burst: 5,
            reject_delay_ms: 0,
        });
        let who: Arc<str> = "bot".into();
        for i in 0..5 {
            assert!(limiter.check(&who).is_ok(), "request {i} of the burst");
        }
        let wait = limiter.check(&who).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another subject has its own budget.
        assert!(limiter.check(&"desk".into()).is_ok());
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let limiter = RateLimiter::new(&LimitSettings {
            rate_per_second: 0,
            burst: 0,
            reject_delay_ms: 0,
        });
        let who: Arc<str> = "bot".into();
        assert!((0..10_000).all(|_| limiter.check(&who).is_ok()));
    }
}

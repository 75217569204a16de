//! Per-subject rate limiting: a generic cell rate algorithm (GCRA), one
//! timestamp per subject, so a limit costs a hash lookup and no timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Principal;
use crate::audit::{self, Action};
use crate::config::LimitSettings;
use crate::error::ApiError;

const SHARDS: usize = 16;
/// Subjects tracked per shard before idle ones are forgotten.
const PRUNE_AT: usize = 4096;

pub struct RateLimiter {
    /// Pause before a refusal is answered (see [`RateLimiter::reject_delay`]).
    reject_delay: Duration,
    cells: Cells,
    /// Signals per subject: a batch of N spends N, so batches cannot carry
    /// a subject past what its requests alone would be allowed.
    signals: Cells,
}

/// Per-subject budgets by the generic cell rate algorithm: `interval`
/// nanoseconds of budget per unit, `tolerance` of burst.
struct Cells {
    /// Nanoseconds one unit costs of the budget; 0 when off.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance: u64,
    epoch: Instant,
    /// Subject -> theoretical arrival time of its next unit, in ns since
    /// `epoch`.
    shards: Vec<Mutex<HashMap<Arc<str>, u64>>>,
}

impl Cells {
    /// `rate` units per `period` (0: no limit), `burst` more at once.
    fn new(rate: u32, period: Duration, burst: u32) -> Cells {
        let interval = match rate {
            0 => 0,
            n => period.as_nanos() as u64 / u64::from(n),
        };
        Cells {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn shard(&self, subject: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        let index = subject
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) ^ b as usize);
        self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `subject` has a unit left; if not, how long until it has.
    fn available(&self, subject: &str) -> Result<(), Duration> {
        if self.interval == 0 {
            return Ok(());
        }
        let now = self.now();
        let tat = self.shard(subject).get(subject).copied().unwrap_or(now);
        let next = tat.max(now) + self.interval;
        match next - now > self.tolerance {
            true => Err(Duration::from_nanos(next - now - self.tolerance)),
            false => Ok(()),
        }
    }

    /// Gives back one unit spent by `subject` (never more than spent).
    fn refund(&self, subject: &str) {
        if self.interval == 0 {
            return;
        }
        let now = self.now();
        if let Some(tat) = self.shard(subject).get_mut(subject) {
            *tat = tat.saturating_sub(self.interval).max(now);
        }
    }

    /// Spends one unit of `subject`'s budget, or says how long until one is
    /// available again.
    fn spend(&self, subject: &Arc<str>) -> Result<(), Duration> {
        self.spend_many(subject, 1)
    }

    /// Spends `units` of `subject`'s budget at once, or none and says how
    /// long until that many are available.
    fn spend_many(&self, subject: &Arc<str>, units: u64) -> Result<(), Duration> {
        if self.interval == 0 {
            return Ok(());
        }
        let now = self.now();
        let mut shard = self.shard(subject);
        if shard.len() >= PRUNE_AT && !shard.contains_key(subject) {
            shard.retain(|_, tat| *tat > now);
        }
        let tat = shard.get(subject).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(self.interval.saturating_mul(units));
        if next - now > self.tolerance {
            return Err(Duration::from_nanos(next - now - self.tolerance));
        }
        shard.insert(subject.clone(), next);
        Ok(())
    }
}

impl RateLimiter {
    pub fn new(settings: &LimitSettings) -> RateLimiter {
        RateLimiter {
            reject_delay: Duration::from_millis(settings.reject_delay_ms),
            cells: Cells::new(
                settings.rate_per_second,
                Duration::from_secs(1),
                settings.burst,
            ),
            signals: Cells::new(
                settings.signals_per_second,
                Duration::from_secs(1),
                settings.signal_burst,
            ),
        }
    }

    /// Spends `count` signals of the caller's budget, or refuses the whole
    /// request with 429 `rate_limited` (after the reject delay) and spends
    /// nothing. A batch spends one per signal it holds.
    pub async fn spend_signals(&self, principal: &Principal, count: usize) -> Result<(), ApiError> {
        match self.signals.spend_many(&principal.rate_key, count as u64) {
            Ok(()) => Ok(()),
            Err(wait) => {
                tokio::time::sleep(self.reject_delay()).await;
                Err(ApiError::SignalRateLimited { wait })
            }
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
        self.cells.spend(subject)
    }
}

/// The budget of lookups that find nobody, per token subject: what keeps a
/// token from unmasking a value by trying every spelling the mask hides.
/// A lookup first asks whether the subject has budget left (refused when
/// not, hit or miss alike, so the refusal tells nothing), and a miss then
/// spends one unit.
pub struct LookupBudget {
    cells: Cells,
    /// When each exhausted subject was last written to the audit log.
    audited: Mutex<HashMap<Arc<str>, Instant>>,
}

/// A lookup admitted by the budget, which spent one unit up front; settled
/// once its outcome is known: a hit gives the unit back.
#[must_use]
pub struct LookupTicket<'a> {
    budget: &'a LookupBudget,
    principal: Option<&'a Principal>,
}

impl LookupTicket<'_> {
    /// Gives the unit back unless the lookup found nobody.
    pub fn settle<T>(self, outcome: &Result<T, ApiError>) {
        let Some(principal) = self.principal else {
            return;
        };
        let missed = matches!(outcome, Err(e) if e.status_and_code().1 == "profile_not_found");
        if !missed {
            self.budget.cells.refund(&principal.rate_key);
        }
    }
}

/// An exhausted subject's refusals are audited at most this often.
const AUDIT_EVERY: Duration = Duration::from_secs(60);

impl LookupBudget {
    pub fn new(settings: &LimitSettings) -> LookupBudget {
        LookupBudget {
            cells: Cells::new(
                settings.lookup_misses_per_hour,
                Duration::from_secs(3600),
                settings.lookup_miss_burst,
            ),
            audited: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a lookup by `principal` (`counted`: by a person-identifying
    /// type; session identifiers are random and name no person, so they
    /// neither spend nor are refused), or refuses it with 429
    /// `lookup_budget_exhausted`, audited.
    pub fn admit<'a>(
        &'a self,
        principal: &'a Principal,
        counted: bool,
    ) -> Result<LookupTicket<'a>, ApiError> {
        if !counted {
            return Ok(LookupTicket {
                budget: self,
                principal: None,
            });
        }
        // Spent before the lookup runs, so lookups in flight at once cannot
        // all pass on the same last unit.
        if let Err(wait) = self.cells.spend(&principal.rate_key) {
            let refusal = Err(ApiError::LookupBudgetExhausted(wait));
            if self.should_audit(&principal.rate_key) {
                audit::record_refusal(principal, Action::Lookup, None, &refusal);
            }
            return refusal;
        }
        Ok(LookupTicket {
            budget: self,
            principal: Some(principal),
        })
    }

    /// Whether `subject` may look up now; if not, how long until it may.
    pub fn check(&self, subject: &Arc<str>) -> Result<(), Duration> {
        self.cells.available(subject)
    }

    /// Whether a refusal of `subject` should be audited now: the first, then
    /// one a minute while it stays refused, so a flood of refusals cannot
    /// flood the audit log.
    pub fn should_audit(&self, subject: &Arc<str>) -> bool {
        let now = Instant::now();
        let mut audited = self.audited.lock().unwrap_or_else(|p| p.into_inner());
        if audited.len() >= PRUNE_AT {
            audited.retain(|_, at| now.duration_since(*at) < AUDIT_EVERY);
        }
        match audited.get(subject) {
            Some(at) if now.duration_since(*at) < AUDIT_EVERY => false,
            _ => {
                audited.insert(subject.clone(), now);
                true
            }
        }
    }
}

/// Work one subject may have in progress at once (exports): a slot is held
/// until its [`Slot`] is dropped, which for a streamed response is when the
/// stream ends or the client goes away.
pub struct Concurrency {
    max: usize,
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One held slot of a [`Concurrency`].
pub struct Slot {
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    subject: Arc<str>,
}

impl Concurrency {
    /// At most `max` at once per subject.
    pub fn new(max: usize) -> Concurrency {
        Concurrency {
            max,
            held: Arc::default(),
        }
    }

    /// The most one subject may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `subject`, or `None` when it holds `max` already.
    pub fn acquire(&self, subject: &Arc<str>) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(subject.clone()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: self.held.clone(),
            subject: subject.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit off.
    fn off() -> LimitSettings {
        LimitSettings {
            rate_per_second: 0,
            burst: 0,
            reject_delay_ms: 0,
            signals_per_second: 0,
            signal_burst: 0,
            lookup_misses_per_hour: 0,
            lookup_miss_burst: 0,
            exports_per_subject: 1,
        }
    }

    #[test]
    fn a_batch_spends_one_unit_per_signal() {
        let limiter = RateLimiter::new(&LimitSettings {
            signals_per_second: 100,
            signal_burst: 50,
            ..off()
        });
        let who: Arc<str> = "importer".into();
        limiter.signals.spend_many(&who, 40).unwrap();
        // 10 left of the burst: a batch of 20 waits for 10 more (100 ms),
        // and spends nothing while refused.
        let wait = limiter.signals.spend_many(&who, 20).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        limiter.signals.spend_many(&who, 10).unwrap();
        assert!(limiter.signals.spend_many(&who, 1).is_err());
        // The request budget is another one.
        assert!(limiter.check(&who).is_ok());
    }

    #[test]
    fn a_subject_holds_at_most_its_share_of_slots() {
        let exports = Concurrency::new(2);
        let desk: Arc<str> = "desk".into();
        let a = exports.acquire(&desk).unwrap();
        let _b = exports.acquire(&desk).unwrap();
        assert!(exports.acquire(&desk).is_none());
        assert!(exports.acquire(&"other".into()).is_some());
        drop(a);
        assert!(exports.acquire(&desk).is_some());
    }

    #[test]
    fn a_burst_passes_and_the_next_request_waits() {
        let limiter = RateLimiter::new(&LimitSettings {
            rate_per_second: 10,
            burst: 5,
            lookup_misses_per_hour: 0,
            lookup_miss_burst: 0,
            ..off()
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
            lookup_misses_per_hour: 0,
            lookup_miss_burst: 0,
            ..off()
        });
        let who: Arc<str> = "bot".into();
        assert!((0..10_000).all(|_| limiter.check(&who).is_ok()));
    }

    #[test]
    fn misses_spend_the_lookup_budget_and_hits_give_their_unit_back() {
        let budget = LookupBudget::new(&LimitSettings {
            rate_per_second: 0,
            burst: 0,
            lookup_misses_per_hour: 3600,
            lookup_miss_burst: 3,
            ..off()
        });
        let desk: Arc<str> = "desk".into();
        // Hits: spent up front, given back.
        for _ in 0..100 {
            budget.cells.spend(&desk).unwrap();
            budget.cells.refund(&desk);
        }
        for _ in 0..3 {
            assert!(budget.check(&desk).is_ok());
            budget.cells.spend(&desk).unwrap();
        }
        let wait = budget.check(&desk).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(budget.cells.spend(&desk).is_err());
        // A refund never gives back more than was spent.
        for _ in 0..10 {
            budget.cells.refund(&desk);
        }
        for _ in 0..3 {
            budget.cells.spend(&desk).unwrap();
        }
        assert!(budget.cells.spend(&desk).is_err());
        assert!(budget.check(&"other".into()).is_ok());
        assert!(budget.should_audit(&desk));
        assert!(!budget.should_audit(&desk));
    }
}

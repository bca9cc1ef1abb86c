//! Pacing teacher requests: a concurrency gate that shrinks when the server says "too many at
//! once", and requests/tokens-per-minute buckets with a shared pause for "too fast".
//!
//! Both are shared by every request of a run, so one 429 slows the whole run instead of each
//! worker discovering the limit on its own.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Successful requests after which a shrunken gate grows back by one slot.
const GROW_AFTER: usize = 20;

/// At most `max` requests in flight. [`Gate::overloaded`] halves the limit (down to one) and
/// successes raise it back one slot at a time (up to `max`): additive increase,
/// multiplicative decrease, as TCP does, so a server that is full sheds load at once.
pub struct Gate {
    semaphore: Arc<Semaphore>,
    max: usize,
    limit: AtomicUsize,
    /// Slots to retire as permits come back (the limit was lowered while they were in use).
    debt: Arc<AtomicUsize>,
    streak: AtomicUsize,
    /// Bumped at every cut: the requests already in flight then see the same overload, and
    /// their answers must not cut again (16 concurrent 503s halve once, not down to one).
    epoch: AtomicUsize,
}

/// One slot; returned (or retired, when the gate shrank) on drop.
pub struct GatePermit {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
    /// The gate's epoch when the slot was taken (pass it to [`Gate::overloaded`]).
    pub epoch: usize,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let retire = self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok();
        if let Some(permit) = self.permit.take() {
            if retire {
                permit.forget();
            }
        }
    }
}

impl Gate {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Gate {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
            limit: AtomicUsize::new(max),
            debt: Arc::new(AtomicUsize::new(0)),
            streak: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
        }
    }

    pub async fn acquire(&self) -> GatePermit {
        let permit = Arc::clone(&self.semaphore).acquire_owned().await.expect("the gate's semaphore is never closed");
        GatePermit { permit: Some(permit), debt: Arc::clone(&self.debt), epoch: self.epoch.load(Ordering::Acquire) }
    }

    /// Current limit on requests in flight.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// The server said "too many at once" to a request sent in `epoch`: halve the requests in
    /// flight, unless the limit was already cut after that request was sent.
    pub fn overloaded(&self, epoch: usize) {
        self.streak.store(0, Ordering::Release);
        if self.epoch.compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let Ok(before) = self.limit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| (l > 1).then_some(l / 2))
        else {
            return;
        };
        // Retire idle slots now, and the rest as slots in use come back.
        let cut = before - before / 2;
        let idle = self.semaphore.forget_permits(cut);
        self.debt.fetch_add(cut - idle, Ordering::AcqRel);
    }

    /// A request succeeded: after a streak of them, give back one slot taken by `overloaded`.
    pub fn succeeded(&self) {
        if self.limit() >= self.max || self.streak.fetch_add(1, Ordering::AcqRel) + 1 < GROW_AFTER {
            return;
        }
        self.streak.store(0, Ordering::Release);
        if self.limit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| (l < self.max).then(|| l + 1)).is_ok() {
            // Cancel a pending retirement if there is one, else add a permit.
            if self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_err() {
                self.semaphore.add_permits(1);
            }
        }
    }
}

/// A token bucket that lets callers go into debt: each reservation returns how long to wait,
/// so concurrent callers line up instead of all retrying at once.
struct Bucket {
    per_sec: f64,
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn per_minute(limit: u32, now: Instant) -> Option<Self> {
        (limit > 0).then(|| {
            let per_sec = f64::from(limit) / 60.0;
            // One second's worth of burst: smooth pacing, as providers meter at sub-minute grain.
            let capacity = per_sec.max(1.0);
            Bucket { per_sec, capacity, level: capacity, last: now }
        })
    }

    fn reserve(&mut self, amount: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity) - amount;
        self.last = now;
        if self.level >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.level / self.per_sec) }
    }
}

struct Pacing {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
}

/// Requests-per-minute and tokens-per-minute limits plus a run-wide pause after a 429.
pub struct RateLimiter {
    state: Mutex<Pacing>,
}

impl RateLimiter {
    /// `rpm` / `tpm` of 0 mean unlimited.
    pub fn new(rpm: u32, tpm: u32) -> Self {
        let now = Instant::now();
        RateLimiter {
            state: Mutex::new(Pacing {
                requests: Bucket::per_minute(rpm, now),
                tokens: Bucket::per_minute(tpm, now),
                paused_until: None,
            }),
        }
    }

    /// Wait until a request of `tokens` (estimated) may be sent.
    pub async fn acquire(&self, tokens: u64) {
        self.wait_out_pause().await;
        tokio::time::sleep(self.reserve(tokens, Instant::now())).await;
        // A 429 may have paused the run while this request waited for its slot.
        self.wait_out_pause().await;
    }

    /// Book a request of `tokens` at `now` and return how long it must wait: the schedule,
    /// computed without sleeping (so tests check it without a clock).
    fn reserve(&self, tokens: u64, now: Instant) -> Duration {
        let mut state = self.lock();
        let requests = state.requests.as_mut().map_or(Duration::ZERO, |b| b.reserve(1.0, now));
        let tokens = state.tokens.as_mut().map_or(Duration::ZERO, |b| b.reserve(tokens as f64, now));
        requests.max(tokens)
    }

    /// The end of the run-wide pause, if it is later than `now`.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.lock().paused_until.filter(|&until| until > now)
    }

    async fn wait_out_pause(&self) {
        while let Some(until) = self.paused_until(Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacing> {
        // Nothing under this lock can panic, so it is never poisoned.
        self.state.lock().expect("pacing lock poisoned")
    }

    /// The server said "too fast": nobody sends before `until`.
    pub fn pause_until(&self, until: Instant) {
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    /// The waits of successive reservations at the given offsets (ms) from the limiter's start.
    fn schedule(limiter: &RateLimiter, start: Instant, reservations: &[(u64, u64)]) -> Vec<f64> {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        reservations
            .iter()
            .map(|&(at, tokens)| ms(limiter.reserve(tokens, start + Duration::from_millis(at))))
            .collect()
    }

    #[test]
    fn requests_per_minute_allow_a_burst_then_space_requests() {
        let limiter = RateLimiter::new(6000, 0); // 100 per second, burst of 100
        let start = Instant::now();
        let waits = schedule(&limiter, start, &[(0, 10); 120]);
        assert!(waits[..100].iter().all(|&w| w == 0.0), "the burst goes at once: {waits:?}");
        let expected: Vec<f64> = (1..=20).map(|i| f64::from(i) * 10.0).collect();
        assert_eq!(waits[100..], expected, "then one every 10 ms");
        // 200 ms later the debt is paid: the next request waits one interval again.
        assert_eq!(schedule(&limiter, start, &[(200, 10), (1200, 10)]), [10.0, 0.0]);
    }

    #[test]
    fn tokens_per_minute_limit_large_requests() {
        let limiter = RateLimiter::new(0, 60_000); // 1000 tokens/s, burst of 1000
        let waits = schedule(&limiter, Instant::now(), &[(0, 1000), (0, 300), (100, 300)]);
        assert_eq!(waits, [0.0, 300.0, 500.0]);
    }

    #[tokio::test]
    async fn a_pause_holds_everyone_until_it_ends() {
        let limiter = RateLimiter::new(0, 0);
        let now = Instant::now();
        assert_eq!(limiter.paused_until(now), None);
        limiter.pause_until(now + Duration::from_secs(2));
        limiter.pause_until(now + Duration::from_secs(1));
        assert_eq!(limiter.paused_until(now), Some(now + Duration::from_secs(2)), "a shorter pause does not cut it");
        assert_eq!(limiter.paused_until(now + Duration::from_secs(2)), None, "over at its end");
        limiter.pause_until(Instant::now() + Duration::from_secs(3600));
        assert!(limiter.acquire(1).now_or_never().is_none(), "an unlimited limiter still waits out a pause");
    }

    #[tokio::test]
    async fn the_gate_shrinks_on_overload_and_grows_back() {
        let gate = Gate::new(3);
        let held = gate.acquire().await;
        gate.overloaded(held.epoch);
        gate.overloaded(held.epoch);
        assert_eq!(gate.limit(), 1, "halved once (3 -> 1) for requests sent before the cut");
        gate.overloaded(gate.epoch.load(Ordering::Acquire));
        assert_eq!(gate.limit(), 1, "never below one");
        // A free slot is taken at the first poll, so "not ready at once" means blocked.
        let blocked = |gate: &Gate| gate.acquire().now_or_never().is_none();
        assert!(blocked(&gate), "the one slot is held");
        drop(held);
        let one = gate.acquire().await;
        assert!(blocked(&gate), "limit is one");
        drop(one);
        for _ in 0..GROW_AFTER * 3 {
            gate.succeeded();
        }
        assert_eq!(gate.limit(), 3);
        let _all = (gate.acquire().await, gate.acquire().await, gate.acquire().await);
        assert!(blocked(&gate), "never above the configured maximum");
    }

    #[tokio::test]
    async fn sixteen_overloads_in_flight_halve_once() {
        let gate = Gate::new(16);
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(gate.acquire().await);
        }
        for permit in &held {
            gate.overloaded(permit.epoch);
        }
        assert_eq!(gate.limit(), 8);
        drop(held);
        let after = gate.acquire().await;
        gate.overloaded(after.epoch);
        assert_eq!(gate.limit(), 4, "a request sent after the cut that is refused cuts again");
        drop(after);
        let mut slots = Vec::new();
        for _ in 0..4 {
            slots.push(gate.acquire().await);
        }
        assert!(gate.acquire().now_or_never().is_none(), "4 slots, no more");
    }
}

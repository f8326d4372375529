//! Token buckets by key (a client address, a user): the one limiter behind the failed-
//! authentication limit and the per-user request budget. It only counts; what a refusal means
//! (and its HTTP answer) is the caller's business. A bucket costs one short lock of one shard.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards of the map: requests of different keys rarely wait on the same lock.
const SHARDS: usize = 32;
/// Buckets one shard holds before full (idle) ones are dropped on the spot, so a flood of new
/// keys cannot grow the map without bound between sweeps.
const SHARD_CAP: usize = 4096;

/// A bucket's shape: it refills at `per_second` up to `burst` tokens.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `n` events per minute, all of which may come at once.
    pub fn per_minute(n: u32) -> Self {
        Self {
            per_second: f64::from(n) / 60.0,
            burst: f64::from(n),
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The rate it was last used with, so sweeps know when it is full again.
    rate: Rate,
}

impl Bucket {
    /// The bucket as of `now`, refilled since it was last touched.
    fn refilled(self, rate: Rate, now: Instant) -> Self {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second;
        Self {
            tokens: (self.tokens + gained).min(rate.burst),
            at: now,
            rate,
        }
    }

    /// How long until one token is there.
    fn wait(self, rate: Rate) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / rate.per_second).max(0.0))
    }

    fn full(self, now: Instant) -> bool {
        self.refilled(self.rate, now).tokens >= self.rate.burst
    }
}

/// Buckets by key; keys not seen (or full again) take no memory.
pub struct Buckets<K> {
    shards: Box<[Mutex<HashMap<K, Bucket>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq> Default for Buckets<K> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq> Buckets<K> {
    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, Bucket>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token from `key`'s bucket; when it has none, takes nothing and says how long
    /// until it has one.
    pub fn take(&self, key: K, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut shard = self.shard(&key);
        let fresh = Bucket {
            tokens: rate.burst,
            at: now,
            rate,
        };
        let bucket = shard.get(&key).map_or(fresh, |b| b.refilled(rate, now));
        if bucket.tokens < 1.0 {
            shard.insert(key, bucket);
            return Err(bucket.wait(rate));
        }
        if shard.len() >= SHARD_CAP && !shard.contains_key(&key) {
            shard.retain(|_, b| !b.full(now));
        }
        shard.insert(
            key,
            Bucket {
                tokens: bucket.tokens - 1.0,
                ..bucket
            },
        );
        Ok(())
    }

    /// Would [`Self::take`] succeed? Takes nothing.
    pub fn check(&self, key: &K, rate: Rate, now: Instant) -> Result<(), Duration> {
        match self.shard(key).get(key).map(|b| b.refilled(rate, now)) {
            Some(b) if b.tokens < 1.0 => Err(b.wait(rate)),
            _ => Ok(()),
        }
    }

    /// Drops the buckets that are full again (they hold nothing a fresh one would not).
    pub fn sweep(&self, now: Instant) {
        for shard in &*self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, b| !b.full(now));
        }
    }

    /// Buckets held (for tests and sweeps' effect).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whole seconds to wait, rounded up (for `Retry-After`), at least 1.
pub fn retry_after_s(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let b = Buckets::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.take("a", rate, t0), Ok(()));
        }
        let wait = b.take("a", rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_s(wait), 1);
        // Another key has its own bucket.
        assert_eq!(b.take("b", rate, t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take("a", rate, t1), Ok(()));
        assert!(b.take("a", rate, t1).is_err());
        // Refusals take nothing: the next token comes as promised.
        assert_eq!(b.check(&"a", rate, t1 + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn check_takes_nothing_and_sweep_drops_full_buckets() {
        let b = Buckets::default();
        let rate = Rate::per_minute(2);
        let t0 = Instant::now();
        assert_eq!(b.check(&1, rate, t0), Ok(()));
        assert!(b.is_empty(), "check must not create buckets");
        b.take(1, rate, t0).unwrap();
        b.take(1, rate, t0).unwrap();
        let wait = b.check(&1, rate, t0).unwrap_err();
        assert_eq!(retry_after_s(wait), 30);
        b.take(2, rate, t0).unwrap();
        b.sweep(t0);
        assert_eq!(b.len(), 2, "partly empty buckets stay");
        b.sweep(t0 + Duration::from_secs(60));
        assert!(b.is_empty(), "refilled buckets go");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_s(Duration::from_secs(3)), 3);
    }
}

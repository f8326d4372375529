//! A keyed single-flight: one value per key (a user's room, a user's server instance, a
//! kernel), started at most once at a time while later callers for that key wait for it, in
//! turn. It owns only the table and the per-key locks; what a value is, when it is still good
//! and how it stops are the caller's, passed in as closures.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::OwnedMutexGuard;

/// One key's place: the async lock is held for a whole start (and a whole stop), so callers
/// for the key queue behind it (tokio's lock is fair: in the order they came).
type Slot<V> = Arc<tokio::sync::Mutex<Option<V>>>;

/// Values by key, each started once however many callers ask at the same time.
pub struct Flights<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key`. Under the key's lock: the current value if `reuse` keeps it (it
    /// may mark the value used, which a culler then sees), else what `start` makes, given the
    /// value it replaces. A failed start stores nothing (the next caller starts again), and
    /// so does a start whose future is dropped; the key is free again either way.
    pub async fn get_or_start<E, Fut>(
        &self,
        key: K,
        reuse: impl FnOnce(&V) -> bool,
        start: impl FnOnce(Option<V>) -> Fut,
    ) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        let mut held = self.lock(key).await;
        if let Some(current) = held.value()
            && reuse(current)
        {
            return Ok(current.clone());
        }
        let fresh = start(held.take()).await?;
        held.put(fresh.clone());
        Ok(fresh)
    }

    /// The value for `key` if there is one and nobody is starting or stopping it right now.
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // try_lock under the table's lock: no clone of the slot, so none outlives the look.
        let slots = self.table();
        slots.get(key)?.try_lock().ok()?.clone()
    }

    /// Every value nobody is starting or stopping right now.
    pub fn values(&self) -> Vec<V> {
        self.table()
            .values()
            .filter_map(|slot| slot.try_lock().ok()?.clone())
            .collect()
    }

    /// Stops the value for `key`, if any, under its lock (so no new start overlaps the stop),
    /// and forgets the key. Waits for a start in progress. Returns whether there was a value.
    pub async fn remove<Q, Fut>(&self, key: &Q, stop: impl FnOnce(V) -> Fut) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        Fut: Future<Output = ()>,
    {
        let Some((key, slot)) = self
            .table()
            .get_key_value(key)
            .map(|(k, s)| (k.clone(), s.clone()))
        else {
            return false;
        };
        let mut held = Held::lock(self, key, slot).await;
        match held.take() {
            Some(value) => {
                stop(value).await;
                true
            }
            None => false,
        }
    }

    /// Stops, one key at a time and under its lock, each value `pick` chooses. Keys busy
    /// starting or stopping are skipped: they are in use, not idle. Returns how many stopped.
    pub async fn cull<Fut>(
        &self,
        mut pick: impl FnMut(&K, &V) -> bool,
        mut stop: impl FnMut(V) -> Fut,
    ) -> usize
    where
        Fut: Future<Output = ()>,
    {
        let mut stopped = 0;
        for (key, slot) in self.slots() {
            let Ok(guard) = slot.clone().try_lock_owned() else {
                continue;
            };
            let mut held = Held::new(self, key, slot, guard);
            if held.value().is_some_and(|v| pick(&held.key, v))
                && let Some(value) = held.take()
            {
                stop(value).await;
                stopped += 1;
            }
        }
        stopped
    }

    /// Takes every value out (waiting for starts in progress) and forgets the keys; the
    /// caller stops them, at once if it likes.
    pub async fn take_all(&self) -> Vec<V> {
        let mut taken = Vec::new();
        for (key, slot) in self.slots() {
            taken.extend(Held::lock(self, key, slot).await.take());
        }
        taken
    }

    async fn lock(&self, key: K) -> Held<'_, K, V> {
        let slot = self.table().entry(key.clone()).or_default().clone();
        Held::lock(self, key, slot).await
    }

    fn slots(&self) -> Vec<(K, Slot<V>)> {
        self.table()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One key's slot, locked; an empty slot nobody else waits for is forgotten when released,
/// so keys that come and go (kernel ids) do not pile up.
struct Held<'a, K: Eq + Hash, V> {
    flights: &'a Flights<K, V>,
    key: K,
    slot: Slot<V>,
    guard: Option<OwnedMutexGuard<Option<V>>>,
}

impl<'a, K: Eq + Hash, V> Held<'a, K, V> {
    fn new(
        flights: &'a Flights<K, V>,
        key: K,
        slot: Slot<V>,
        guard: OwnedMutexGuard<Option<V>>,
    ) -> Self {
        Self {
            flights,
            key,
            slot,
            guard: Some(guard),
        }
    }

    async fn lock(flights: &'a Flights<K, V>, key: K, slot: Slot<V>) -> Self {
        let guard = slot.clone().lock_owned().await;
        Self::new(flights, key, slot, guard)
    }

    fn value(&self) -> Option<&V> {
        self.guard.as_ref()?.as_ref()
    }

    fn take(&mut self) -> Option<V> {
        self.guard.as_mut()?.take()
    }

    fn put(&mut self, value: V) {
        if let Some(guard) = self.guard.as_mut() {
            **guard = Some(value);
        }
    }
}

impl<K: Eq + Hash, V> Drop for Held<'_, K, V> {
    fn drop(&mut self) {
        let empty = self.guard.as_ref().is_none_or(|g| g.is_none());
        // Unlock first: the guard holds a count of the slot too.
        self.guard = None;
        if !empty {
            return;
        }
        let mut slots = self
            .flights
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones of a slot are made only under this lock, so the count cannot grow meanwhile:
        // the table's and ours mean nobody waits to start a value here.
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot) && Arc::strong_count(s) == 2)
        {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn slot_count<K, V>(f: &Flights<K, V>) -> usize {
        f.slots.lock().unwrap().len()
    }

    #[tokio::test]
    async fn concurrent_callers_start_once_and_share_the_value() {
        let flights = Arc::new(Flights::<&str, usize>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let callers = (0..8).map(|_| {
            let (flights, starts) = (flights.clone(), starts.clone());
            tokio::spawn(async move {
                flights
                    .get_or_start(
                        "k",
                        |_| true,
                        |_| async {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(starts.fetch_add(1, Ordering::SeqCst) + 100)
                        },
                    )
                    .await
            })
        });
        for caller in futures_join(callers).await {
            assert_eq!(caller, Ok(100));
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(flights.peek(&"k"), Some(100));
        assert_eq!(flights.values(), vec![100]);
    }

    async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_failed_start_is_not_kept_and_the_next_caller_starts_again() {
        let flights = Flights::<u8, u8>::new();
        let first = flights.get_or_start(1, |_| true, |_| async { Err("no") });
        assert_eq!(first.await, Err("no"));
        assert_eq!(flights.peek(&1), None);
        assert_eq!(slot_count(&flights), 0, "an empty key is forgotten");
        let second = flights.get_or_start(1, |_| true, |_| async { Ok::<_, &str>(7) });
        assert_eq!(second.await, Ok(7));
        let third = flights.get_or_start(1, |_| true, |_| async { Ok::<_, &str>(8) });
        assert_eq!(third.await, Ok(7), "a kept value is not started again");
    }

    #[tokio::test]
    async fn a_value_not_reused_is_handed_to_its_replacement() {
        let flights = Flights::<u8, u8>::new();
        let _ = flights
            .get_or_start(1, |_| true, |_| async { Ok::<_, ()>(1) })
            .await;
        let replaced = flights
            .get_or_start(
                1,
                |v| *v != 1,
                |old| async move { Ok::<_, ()>(old.unwrap_or(0) + 10) },
            )
            .await;
        assert_eq!(replaced, Ok(11));
        assert_eq!(flights.peek(&1), Some(11));
    }

    /// A task starting `key` (replacing its value, if any) with `value`, once the returned
    /// sender fires or is dropped; returns when the start is under way.
    async fn start_held(
        flights: &Arc<Flights<u8, u8>>,
        key: u8,
        value: u8,
    ) -> (
        tokio::task::JoinHandle<Result<u8, ()>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
        let f = flights.clone();
        let task = tokio::spawn(async move {
            let start = |_| async move {
                let _ = started_tx.send(());
                let _ = release.await;
                Ok(value)
            };
            f.get_or_start(key, |_| false, start).await
        });
        started.await.unwrap();
        (task, release_tx)
    }

    #[tokio::test]
    async fn a_dropped_starter_does_not_leave_the_key_stuck() {
        let flights = Arc::new(Flights::<u8, u8>::new());
        let (stuck, _never) = start_held(&flights, 1, 1).await;
        // A second caller queues behind the start in progress.
        let f = flights.clone();
        let waiter = tokio::spawn(async move {
            f.get_or_start(1, |_| true, |_| async { Ok::<_, ()>(2) })
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(flights.peek(&1), None, "a key being started is not shown");
        stuck.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter must not hang")
            .unwrap();
        assert_eq!(got, Ok(2));
        // And with nobody waiting, a dropped start leaves no key behind.
        let never = flights.get_or_start(3, |_| true, |_| std::future::pending::<Result<u8, ()>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), never)
                .await
                .is_err()
        );
        assert_eq!(slot_count(&flights), 1);
    }

    #[tokio::test]
    async fn remove_stops_the_value_under_its_lock_and_forgets_the_key() {
        let flights = Arc::new(Flights::<u8, u8>::new());
        let _ = flights
            .get_or_start(1, |_| true, |_| async { Ok::<_, ()>(5) })
            .await;
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let (s, f) = (stopped.clone(), flights.clone());
        let removed = flights
            .remove(&1, |v| async move {
                // A caller arriving during the stop waits for it, then starts afresh.
                let late = tokio::spawn(async move {
                    f.get_or_start(
                        1,
                        |_| true,
                        |old| async move { Ok::<_, ()>(old.unwrap_or(9)) },
                    )
                    .await
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!late.is_finished());
                s.lock().unwrap().push((v, late));
            })
            .await;
        assert!(removed);
        let (value, late) = stopped.lock().unwrap().pop().unwrap();
        assert_eq!(value, 5);
        assert_eq!(
            late.await.unwrap(),
            Ok(9),
            "the removed value is not handed on"
        );
        assert!(flights.remove(&1, |_| async {}).await);
        assert_eq!(flights.peek(&1), None);
        assert_eq!(slot_count(&flights), 0);
        assert!(!flights.remove(&1, |_| async {}).await);
    }

    #[tokio::test]
    async fn cull_stops_what_it_picks_and_skips_keys_in_use() {
        let flights = Arc::new(Flights::<u8, u8>::new());
        for k in [1, 2, 3] {
            let _ = flights
                .get_or_start(k, |_| true, move |_| async move { Ok::<_, ()>(k) })
                .await;
        }
        // Key 3 is busy being replaced while the cull runs.
        let (busy, release_tx) = start_held(&flights, 3, 30).await;
        let mut stopped = Vec::new();
        let n = flights
            .cull(
                |_, v| *v != 2,
                |v| {
                    stopped.push(v);
                    async {}
                },
            )
            .await;
        assert_eq!((n, stopped), (1, vec![1]));
        let _ = release_tx.send(());
        assert_eq!(busy.await.unwrap(), Ok(30));
        let mut left = flights.values();
        left.sort();
        assert_eq!(left, vec![2, 30]);
        let mut all = flights.take_all().await;
        all.sort();
        assert_eq!(all, vec![2, 30]);
        assert_eq!(slot_count(&flights), 0);
    }
}

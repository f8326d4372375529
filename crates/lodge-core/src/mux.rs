//! Requests waiting for their answers on one connection, by id: an id and a waiter for each
//! request, the answer delivered by id, everyone failed at once when the connection closes,
//! and a request forgotten (and its cancellation sent) when its waiter is dropped unanswered.
//! It owns no I/O: what an answer is, and how a cancellation is said, are the caller's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// The requests in flight on one connection. `T` is an answer; `X` is what travels with a
/// waiting request (where its progress goes), looked up by id while it waits.
pub struct Pending<T, X> {
    state: Mutex<State<T, X>>,
    /// Tells the other end a request will no longer be waited for.
    on_cancel: Box<dyn Fn(u64) + Send + Sync>,
}

struct State<T, X> {
    next_id: u64,
    closed: bool,
    waiting: HashMap<u64, Entry<T, X>>,
}

struct Entry<T, X> {
    reply: oneshot::Sender<T>,
    extra: X,
}

impl<T, X> Pending<T, X> {
    /// No request yet; ids start at 1. `on_cancel(id)` runs when a waiter is dropped before
    /// its answer arrived.
    pub fn new(on_cancel: impl Fn(u64) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next_id: 1,
                closed: false,
                waiting: HashMap::new(),
            }),
            on_cancel: Box::new(on_cancel),
        })
    }

    /// A new request with `extra` beside it: its id, and the waiter for its answer. `None`
    /// once the connection was closed (nothing would ever answer).
    pub fn register(self: &Arc<Self>, extra: X) -> Option<Waiter<T, X>> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut state = self.state();
            if state.closed {
                return None;
            }
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.insert(id, Entry { reply, extra });
            id
        };
        Some(Waiter {
            pending: self.clone(),
            id,
            answer,
            done: None,
        })
    }

    /// Delivers the answer to request `id`; false when nobody waits for it (it was never
    /// sent, or was cancelled meanwhile).
    pub fn complete(&self, id: u64, answer: T) -> bool {
        let waiting = self.state().waiting.remove(&id);
        match waiting {
            Some(entry) => {
                let _ = entry.reply.send(answer);
                true
            }
            None => false,
        }
    }

    /// Fails every waiting request with `answer()`; later requests are refused.
    pub fn close(&self, answer: impl Fn() -> T) {
        let waiting: Vec<Entry<T, X>> = {
            let mut state = self.state();
            state.closed = true;
            state.waiting.drain().map(|(_, e)| e).collect()
        };
        for entry in waiting {
            let _ = entry.reply.send(answer());
        }
    }

    /// `f` of what travels with request `id`, if it still waits.
    pub fn with<R>(&self, id: u64, f: impl FnOnce(&X) -> R) -> Option<R> {
        self.state().waiting.get(&id).map(|e| f(&e.extra))
    }

    /// `f` of what travels with each waiting request.
    pub fn each(&self, mut f: impl FnMut(&X)) {
        for entry in self.state().waiting.values() {
            f(&entry.extra);
        }
    }

    /// `f` of the newest waiting request for which it gives something.
    pub fn newest<R>(&self, mut f: impl FnMut(&X) -> Option<R>) -> Option<R> {
        let state = self.state();
        let mut ids: Vec<u64> = state.waiting.keys().copied().collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .find_map(|id| state.waiting.get(&id).and_then(|e| f(&e.extra)))
    }

    pub fn contains(&self, id: u64) -> bool {
        self.state().waiting.contains_key(&id)
    }

    /// Requests sent and not yet answered.
    pub fn len(&self) -> usize {
        self.state().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn state(&self) -> MutexGuard<'_, State<T, X>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request's claim on its answer. Dropping it before the answer arrived forgets the
/// request and cancels it at the other end.
pub struct Waiter<T, X> {
    pending: Arc<Pending<T, X>>,
    id: u64,
    answer: oneshot::Receiver<T>,
    /// The answer once received (the receiver must not be polled again after that).
    done: Option<T>,
}

impl<T: Clone, X> Waiter<T, X> {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The answer; cancel-safe (may be polled in `select!` repeatedly), and repeatable once it
    /// arrived. `None` only if the request was dropped from the table without an answer.
    pub async fn answer(&mut self) -> Option<T> {
        if let Some(done) = &self.done {
            return Some(done.clone());
        }
        let answer = (&mut self.answer).await.ok()?;
        self.done = Some(answer.clone());
        Some(answer)
    }

    pub fn is_answered(&self) -> bool {
        self.done.is_some()
    }
}

impl<T, X> Drop for Waiter<T, X> {
    fn drop(&mut self) {
        if self.done.is_some() {
            return;
        }
        let removed = self.pending.state().waiting.remove(&self.id);
        if removed.is_some() {
            (self.pending.on_cancel)(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Pending<Result<u32, String>, &'static str>;

    /// A table whose cancellations are recorded.
    fn recorder() -> (Arc<Table>, Arc<Mutex<Vec<u64>>>) {
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let c = cancelled.clone();
        (
            Pending::new(move |id| c.lock().unwrap().push(id)),
            cancelled,
        )
    }

    #[test]
    fn newest_skips_what_the_filter_refuses() {
        let (pending, _) = recorder();
        let a = pending.register("a").unwrap();
        let b = pending.register("").unwrap();
        let pick = |x: &&'static str| (!x.is_empty()).then_some(*x);
        assert_eq!(pending.newest(pick), Some("a"), "b is newer but refused");
        let c = pending.register("c").unwrap();
        assert_eq!(pending.newest(pick), Some("c"));
        drop((a, b, c));
        assert_eq!(pending.newest(pick), None);
    }

    #[tokio::test]
    async fn answers_reach_their_waiters_by_id() {
        let (pending, cancelled) = recorder();
        let mut a = pending.register("a").unwrap();
        let mut b = pending.register("b").unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(pending.len(), 2);
        assert_eq!(pending.with(b.id(), |x| *x), Some("b"));
        assert!(pending.complete(b.id(), Ok(2)));
        assert!(pending.complete(a.id(), Err("no".into())));
        assert!(!pending.complete(a.id(), Ok(9)), "answered once");
        assert_eq!(a.answer().await, Some(Err("no".into())));
        assert_eq!(b.answer().await, Some(Ok(2)));
        assert_eq!(b.answer().await, Some(Ok(2)), "repeatable");
        assert!(pending.is_empty());
        drop((a, b));
        assert!(
            cancelled.lock().unwrap().is_empty(),
            "answered requests are not cancelled"
        );
    }

    #[tokio::test]
    async fn a_dropped_waiter_is_forgotten_and_cancelled() {
        let (pending, cancelled) = recorder();
        let a = pending.register("a").unwrap();
        let id = a.id();
        let mut seen = Vec::new();
        pending.each(|x| seen.push(*x));
        assert_eq!(seen, vec!["a"]);
        drop(a);
        assert_eq!(*cancelled.lock().unwrap(), vec![id]);
        assert!(!pending.contains(id));
        assert!(!pending.complete(id, Ok(1)), "a late answer finds nobody");
    }

    #[tokio::test]
    async fn close_fails_everyone_and_refuses_new_requests() {
        let (pending, cancelled) = recorder();
        let mut a = pending.register("a").unwrap();
        let mut b = pending.register("b").unwrap();
        let waiting = tokio::spawn(async move { a.answer().await });
        tokio::task::yield_now().await;
        pending.close(|| Err("closed".into()));
        assert_eq!(waiting.await.unwrap(), Some(Err("closed".into())));
        assert_eq!(b.answer().await, Some(Err("closed".into())));
        assert!(pending.register("c").is_none());
        assert!(pending.is_empty());
        drop(b);
        assert!(cancelled.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_given_up_in_select_can_be_polled_again() {
        let (pending, _) = recorder();
        let mut a = pending.register("a").unwrap();
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(5), a.answer()).await;
        assert!(timed_out.is_err());
        assert!(pending.complete(a.id(), Ok(3)));
        assert_eq!(a.answer().await, Some(Ok(3)));
        assert!(a.is_answered());
    }
}

//! How many instances may be alive at once in the process, and how they are
//! shared between components: fair shares of what is running, not a
//! reservation of what might run.
//!
//! The pool has room for `capacity` instances (busy or warm). While there is
//! room, any component takes what it needs (up to its own `max_in_flight`,
//! which dispatch enforces). When the pool is full, a component that needs
//! an instance first takes the room of another component's idle warm
//! instance; failing that it waits, and each instance that ends goes to the
//! waiting component that holds the fewest, so that a component keeping
//! many instances busy cannot keep a newcomer out for longer than one of its
//! handlers runs (at most the handler timeout). Idle components hold
//! nothing once their warm instances expire, so a thousand apps loaded cost
//! the pool nothing until their events come.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::oneshot;

/// Something that keeps idle instances, which the budget may ask to give
/// one up (when another component needs the room) or to drop expired ones.
pub(super) trait IdleInstances: Send + Sync {
    /// Gives up one idle instance, returning the room it held.
    fn evict_one(&self) -> Option<Slot>;
    /// Drops the idle instances whose idle timeout passed.
    fn expire(&self);
}

/// The pool's room, shared by every component of a host.
pub(super) struct Budget {
    capacity: usize,
    state: Mutex<State>,
    /// How many acquisitions wait; read without the lock on the hot path.
    waiting: AtomicUsize,
}

struct State {
    /// Instances alive (busy or idle).
    live: usize,
    /// Per component: what it holds, and its idle instances.
    holders: Vec<Option<Holder>>,
    /// Places in `holders` free for reuse.
    free: Vec<usize>,
    waiters: VecDeque<Waiter>,
}

struct Holder {
    live: usize,
    idle: Weak<dyn IdleInstances>,
}

struct Waiter {
    holder: usize,
    tx: oneshot::Sender<Slot>,
}

/// Room for one live instance, returned to the budget when dropped.
pub(super) struct Slot {
    budget: Option<Arc<Budget>>,
    holder: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.release(self.holder);
        }
    }
}

impl Budget {
    /// A budget of `capacity` live instances.
    pub fn new(capacity: usize) -> Arc<Budget> {
        Arc::new(Budget {
            capacity,
            state: Mutex::new(State {
                live: 0,
                holders: Vec::new(),
                free: Vec::new(),
                waiters: VecDeque::new(),
            }),
            waiting: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock can panic halfway through an update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a component; the number names it in [`Budget::acquire`].
    pub fn register(&self, idle: Weak<dyn IdleInstances>) -> usize {
        let mut state = self.lock();
        let holder = Some(Holder { live: 0, idle });
        match state.free.pop() {
            Some(i) => {
                state.holders[i] = holder;
                i
            }
            None => {
                state.holders.push(holder);
                state.holders.len() - 1
            }
        }
    }

    /// Forgets a component that holds nothing any more.
    pub fn unregister(&self, holder: usize) {
        let mut state = self.lock();
        if let Some(slot) = state.holders.get_mut(holder) {
            *slot = None;
            state.free.push(holder);
        }
    }

    /// Whether some component waits for room: an instance that becomes idle
    /// then gives its room up instead of staying warm.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Room for one more instance of `holder`: at once while the pool has
    /// room or another component has an idle instance to give up; else
    /// when an instance ends and `holder` is the neediest waiter.
    pub async fn acquire(self: &Arc<Self>, holder: usize) -> Slot {
        loop {
            let rx = {
                let mut state = self.lock();
                if state.live < self.capacity {
                    state.live += 1;
                    state.held(holder, 1);
                    return self.slot(holder);
                }
                // Announced before the idle lists are searched, so that an
                // instance going idle meanwhile sees it (see `settle`).
                self.waiting.fetch_add(1, Ordering::SeqCst);
                if let Some(mut slot) = state.evict_idle() {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    state.held(slot.holder, -1);
                    state.held(holder, 1);
                    slot.holder = holder;
                    return slot;
                }
                let (tx, rx) = oneshot::channel();
                state.waiters.push_back(Waiter { holder, tx });
                rx
            };
            // A cancelled wait drops the receiver; a slot sent to it by then
            // is dropped with it and so returned.
            if let Ok(slot) = rx.await {
                return slot;
            }
        }
    }

    /// After an instance went idle while somebody waits: hands the room of
    /// idle instances to waiters.
    pub fn settle(self: &Arc<Self>) {
        loop {
            let slot = {
                let mut state = self.lock();
                if state.waiters.is_empty() {
                    return;
                }
                match state.evict_idle() {
                    Some(slot) => slot,
                    None => return,
                }
            };
            // Dropped outside the lock: its release hands it to a waiter.
            drop(slot);
        }
    }

    /// Drops every component's expired idle instances.
    pub fn expire_idle(&self) {
        let holders: Vec<Arc<dyn IdleInstances>> = self
            .lock()
            .holders
            .iter()
            .flatten()
            .filter(|h| h.live > 0)
            .filter_map(|h| h.idle.upgrade())
            .collect();
        for idle in holders {
            idle.expire();
        }
    }

    /// Instances alive now, in the whole pool.
    pub fn live(&self) -> usize {
        self.lock().live
    }

    fn slot(self: &Arc<Self>, holder: usize) -> Slot {
        Slot {
            budget: Some(self.clone()),
            holder,
        }
    }

    fn release(self: &Arc<Self>, holder: usize) {
        let mut state = self.lock();
        state.held(holder, -1);
        // The room goes to the waiter whose component holds the fewest.
        while let Some(waiter) = state.neediest_waiter() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            state.held(waiter.holder, 1);
            match waiter.tx.send(self.slot(waiter.holder)) {
                Ok(()) => return,
                Err(mut unwanted) => {
                    // That wait was cancelled: not returned through `drop`,
                    // which would take the lock held here.
                    unwanted.budget = None;
                    state.held(waiter.holder, -1);
                }
            }
        }
        state.live -= 1;
    }
}

impl State {
    fn held(&mut self, holder: usize, change: isize) {
        if let Some(Some(h)) = self.holders.get_mut(holder) {
            h.live = h.live.saturating_add_signed(change);
        }
    }

    fn neediest_waiter(&mut self) -> Option<Waiter> {
        let held = |h: usize| match self.holders.get(h) {
            Some(Some(holder)) => holder.live,
            _ => 0,
        };
        let (i, _) = self
            .waiters
            .iter()
            .enumerate()
            .min_by_key(|(i, w)| (held(w.holder), *i))?;
        self.waiters.remove(i)
    }

    /// Takes the room of one idle instance, from the component with the
    /// most instances.
    fn evict_idle(&mut self) -> Option<Slot> {
        let mut candidates: Vec<(usize, Arc<dyn IdleInstances>)> = self
            .holders
            .iter()
            .flatten()
            .filter(|h| h.live > 0)
            .filter_map(|h| Some((h.live, h.idle.upgrade()?)))
            .collect();
        candidates.sort_by_key(|(live, _)| std::cmp::Reverse(*live));
        candidates.iter().find_map(|(_, idle)| idle.evict_one())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Idle instances as a list of slots.
    #[derive(Default)]
    struct Idle(StdMutex<Vec<Slot>>);

    impl IdleInstances for Idle {
        fn evict_one(&self) -> Option<Slot> {
            self.0.lock().unwrap().pop()
        }
        fn expire(&self) {
            self.0.lock().unwrap().clear();
        }
    }

    fn component(budget: &Arc<Budget>) -> (Arc<Idle>, usize) {
        let idle = Arc::new(Idle::default());
        let weak: Weak<dyn IdleInstances> = Arc::downgrade(&idle) as _;
        let holder = budget.register(weak);
        (idle, holder)
    }

    #[tokio::test]
    async fn room_is_taken_freely_until_the_pool_is_full() {
        let budget = Budget::new(3);
        let (_, a) = component(&budget);
        let slots: Vec<Slot> = futures::future::join_all((0..3).map(|_| budget.acquire(a))).await;
        assert_eq!(budget.live(), 3);
        drop(slots);
        assert_eq!(budget.live(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_gives_up_idle_instances_first() {
        let budget = Budget::new(2);
        let (idle_a, a) = component(&budget);
        let (_, b) = component(&budget);
        for _ in 0..2 {
            let slot = budget.acquire(a).await;
            idle_a.0.lock().unwrap().push(slot);
        }
        let _b = budget.acquire(b).await;
        assert_eq!(idle_a.0.lock().unwrap().len(), 1);
        assert_eq!(budget.live(), 2);
    }

    #[tokio::test]
    async fn freed_room_goes_to_the_component_holding_the_fewest() {
        let budget = Budget::new(4);
        let (_, hog) = component(&budget);
        let (_, small) = component(&budget);
        let mut hog_slots = Vec::new();
        for _ in 0..3 {
            hog_slots.push(budget.acquire(hog).await);
        }
        let small_slot = budget.acquire(small).await;
        // Both wait; the hog asked first, but holds more.
        let hog_wait = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(hog).await }
        });
        tokio::task::yield_now().await;
        let small_wait = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(small).await }
        });
        while budget.waiting.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        drop(hog_slots.pop());
        let second = small_wait.await.unwrap();
        assert_eq!(second.holder, small);
        assert!(!hog_wait.is_finished());
        drop(small_slot);
        assert_eq!(hog_wait.await.unwrap().holder, hog);
    }

    #[tokio::test]
    async fn a_cancelled_wait_returns_what_it_was_given() {
        let budget = Budget::new(1);
        let (_, a) = component(&budget);
        let first = budget.acquire(a).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(a).await }
        });
        while !budget.contended() {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        assert_eq!(budget.live(), 0);
        let _again = budget.acquire(a).await;
        assert_eq!(budget.live(), 1);
    }
}

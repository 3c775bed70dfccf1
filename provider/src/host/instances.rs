//! A component's instances: warm ones kept between events, so that an event
//! costs a call rather than an instantiation, as Spin 4 reuses instances of
//! its WASIp3 HTTP handlers.
//!
//! An instance handles events one after another, up to its reuse count
//! (`max_instance_reuse_count`), then is dropped; one left idle for the idle
//! timeout (`idle_instance_timeout`) is dropped too. One that trapped, ran
//! past the handler timeout or its memory limit is never used again, nor
//! (unless `reuse_instance_after_error`) one whose handler returned an
//! error. A component's instances serve only that component: a guest's
//! globals survive between the events of one instance, never across
//! components or apps. How many are alive at once follows the component's
//! concurrency bound, and the pool's room is shared through the [`Budget`].

use super::budget::{Budget, IdleInstances, Slot};
use super::{InstanceIdentity, PreparedComponent, State, lanes};
use crate::app::InstanceReuse;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::Func;

/// One component's instances.
pub struct Instances {
    pub(super) component: PreparedComponent,
    pub(super) identity: InstanceIdentity,
    pub(super) reuse: InstanceReuse,
    /// Whether its handlers have lately run long (see [`lanes`]).
    pub(super) history: Arc<lanes::History>,
    idle: Mutex<Vec<Warm>>,
    pub(super) budget: Arc<Budget>,
    pub(super) holder: usize,
    created: AtomicU64,
    reused: AtomicU64,
    /// Set when a reload replaced the component: no instance is kept.
    retired: AtomicBool,
}

/// An instance with its store, between two events or in the middle of one.
pub(super) struct Warm {
    pub store: Store<State>,
    /// Its `on-receive`, type-checked when it was created.
    pub on_receive: Func,
    /// Events it has taken.
    pub uses: u32,
    /// Events it may take.
    pub max_uses: u32,
    idle_timeout: Duration,
    idle_since: Instant,
    /// Its room in the pool; returned when it is dropped.
    slot: Slot,
}

/// What became of the instance after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Afterwards {
    /// It succeeded: kept if it may take more events.
    Succeeded,
    /// Its handler returned an error: kept only if the component says so.
    ReturnedError,
}

impl Instances {
    /// The instances of a component, registered with the pool's budget.
    pub(super) fn new(
        component: PreparedComponent,
        identity: InstanceIdentity,
        reuse: InstanceReuse,
        budget: &Arc<Budget>,
    ) -> Arc<Instances> {
        Arc::new_cyclic(|weak: &Weak<Instances>| {
            let idle: Weak<dyn IdleInstances> = weak.clone();
            Instances {
                component,
                identity,
                reuse,
                history: Arc::default(),
                idle: Mutex::default(),
                holder: budget.register(idle),
                budget: budget.clone(),
                created: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                retired: AtomicBool::new(false),
            }
        })
    }

    /// How many instances were created, and how many times an instance was
    /// taken again for another event.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.created.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
    }

    /// What its instances are made from.
    pub fn component(&self) -> &PreparedComponent {
        &self.component
    }

    /// A new version replaces the component: its warm instances are
    /// dropped now, and those under way when they finish.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let idle = std::mem::take(&mut *self.lock());
        drop(idle);
    }

    /// How many warm instances wait for events now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used warm instance, if one waits.
    pub(super) fn take(&self) -> Option<Warm> {
        let warm = self.lock().pop()?;
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(warm)
    }

    /// Wraps a newly created instance.
    pub(super) fn created(&self, store: Store<State>, on_receive: Func, slot: Slot) -> Warm {
        self.created.fetch_add(1, Ordering::Relaxed);
        Warm {
            store,
            on_receive,
            uses: 0,
            max_uses: self.reuse.max_uses.pick(),
            idle_timeout: self.reuse.idle_timeout.pick(),
            idle_since: Instant::now(),
            slot,
        }
    }

    /// Keeps an instance for the next event, or drops it, as the rules in
    /// the module docs say.
    pub(super) fn put_back(&self, mut warm: Warm, afterwards: Afterwards) {
        let keep = warm.uses < warm.max_uses
            && !warm.idle_timeout.is_zero()
            && !self.retired.load(Ordering::Relaxed)
            && (afterwards == Afterwards::Succeeded || self.reuse.after_error);
        if !keep {
            return;
        }
        warm.idle_since = Instant::now();
        self.lock().push(warm);
        // Another component waits for room: idle instances give theirs up.
        if self.budget.contended() {
            self.budget.settle();
        }
    }
}

impl IdleInstances for Instances {
    fn evict_one(&self) -> Option<Slot> {
        let mut idle = self.lock();
        if idle.is_empty() {
            return None;
        }
        // The least recently used goes.
        let Warm { slot, store, .. } = idle.remove(0);
        drop(idle);
        drop(store);
        Some(slot)
    }

    fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<Warm> = {
            let mut idle = self.lock();
            let (expired, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|w| now.duration_since(w.idle_since) >= w.idle_timeout);
            *idle = kept;
            expired
        };
        // Dropped outside the lock: each returns its room to the budget.
        drop(expired);
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        // Idle instances first, so that their room is returned to the
        // budget before the component is forgotten there.
        drop(std::mem::take(&mut *self.lock()));
        self.budget.unregister(self.holder);
    }
}

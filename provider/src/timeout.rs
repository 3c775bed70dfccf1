//! Timeouts for the per-event hot path, which almost never fire: a handler's
//! timeout, a publish's wait for its broker's confirmation.
//!
//! tokio's timers are exact, and pay for it on every event: each one is
//! entered into the runtime's timer wheel, and one due earlier than the
//! driver's next wake-up wakes the driver's thread to re-arm (measured on the
//! embedded relay: about a tenth of its CPU). These are coarse instead: a
//! timeout is a slot in one table that a thread of its own checks every
//! [`RESOLUTION`] while timeouts come and go, so starting and finishing one
//! costs a lock and a few atomics, and only one that fires wakes anything.
//! It fires up to [`RESOLUTION`] late; none here needs better. The thread
//! sleeps until the next timeout is set only after [`QUIET_BEFORE_SLEEP`]
//! with none pending: waking it each time the table went from empty to one
//! entry (about every other event at moderate rates, and a futex call each
//! time) made 84 % of the provider's futex calls on the NATS relay.

use futures::task::AtomicWaker;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How late a timeout may fire.
pub const RESOLUTION: Duration = Duration::from_millis(10);

/// How long the thread keeps checking with no timeout pending before it
/// sleeps until one is set.
const QUIET_BEFORE_SLEEP: Duration = Duration::from_secs(1);

/// The error of a future that did not finish in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// Runs `future` for at most `duration` (give or take [`RESOLUTION`]).
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    Timeout {
        future: future.into_future(),
        deadline: Instant::now().checked_add(duration),
        alarm: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        // `None`: too far off to ever fire.
        deadline: Option<Instant>,
        alarm: Option<Alarm>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        let alarm = this.alarm.get_or_insert_with(|| Alarm::set(deadline));
        alarm.shared.waker.register(cx.waker());
        if alarm.shared.rung.load(Ordering::Acquire) || Instant::now() >= deadline {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

/// A pending timeout's entry in the table; removed when dropped.
struct Alarm {
    shared: Arc<Shared>,
    slot: usize,
}

struct Shared {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Alarm {
    fn set(at: Instant) -> Alarm {
        let shared = Arc::new(Shared {
            rung: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let clock = clock();
        let mut table = clock.lock();
        let entry = Some((at, shared.clone()));
        let slot = match table.free.pop() {
            Some(slot) => {
                table.entries[slot] = entry;
                slot
            }
            None => {
                table.entries.push(entry);
                table.entries.len() - 1
            }
        };
        table.pending += 1;
        let asleep = std::mem::take(&mut table.asleep);
        drop(table);
        if asleep {
            clock.wake.notify_one();
        }
        Alarm { shared, slot }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let mut table = clock().lock();
        if let Some(entry) = table.entries.get_mut(self.slot)
            && entry.take().is_some()
        {
            table.pending -= 1;
            table.free.push(self.slot);
        }
    }
}

/// The table of pending timeouts, and the thread that rings them.
struct Clock {
    table: Mutex<Table>,
    /// Wakes the thread when the first timeout is set.
    wake: Condvar,
}

#[derive(Default)]
struct Table {
    entries: Vec<Option<(Instant, Arc<Shared>)>>,
    free: Vec<usize>,
    pending: usize,
    /// Whether the thread waits for a timeout to be set, and so must be
    /// woken for one.
    asleep: bool,
}

impl Clock {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing under the lock can panic halfway through an update.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rings the timeouts that are due, every [`RESOLUTION`]; sleeps once
    /// none has been pending for [`QUIET_BEFORE_SLEEP`].
    fn run(&self) {
        let mut due = Vec::new();
        let mut last_busy = Instant::now();
        loop {
            {
                let mut table = self.lock();
                if table.pending > 0 {
                    last_busy = Instant::now();
                } else if last_busy.elapsed() >= QUIET_BEFORE_SLEEP {
                    while table.pending == 0 {
                        table.asleep = true;
                        table = self.wake.wait(table).unwrap_or_else(|e| e.into_inner());
                    }
                    table.asleep = false;
                    last_busy = Instant::now();
                }
                let now = Instant::now();
                for (at, shared) in table.entries.iter().flatten() {
                    if *at <= now && !shared.rung.swap(true, Ordering::AcqRel) {
                        due.push(shared.clone());
                    }
                }
            }
            // Woken outside the lock: a woken task may finish, and drop its
            // entry, at once.
            for shared in due.drain(..) {
                shared.waker.wake();
            }
            std::thread::sleep(RESOLUTION);
        }
    }
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("timeouts".into())
            .spawn(|| clock().run());
        if let Err(e) = started {
            // Without the thread a timeout still fires, when its future is
            // next polled: a guest computing is stopped by its epoch
            // deadline regardless.
            tracing::error!("cannot start the timeout thread: {e}");
        }
        Clock {
            table: Mutex::default(),
            wake: Condvar::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_that_finishes_in_time_gives_its_output() {
        assert_eq!(timeout(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_millis(20));
        assert_eq!(timeout(Duration::from_secs(1), slow).await, Ok(()));
    }

    /// Times out a future that never finishes after `after`, checks that
    /// it was stopped within the resolution (with room for a loaded
    /// machine), and returns how long that took.
    async fn stopped_in_time(after: Duration) -> Duration {
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(timeout(after, never).await, Err(Elapsed));
        let took = start.elapsed();
        assert!(took < after + RESOLUTION * 20, "{took:?}");
        took
    }

    #[tokio::test]
    async fn a_future_that_waits_too_long_is_stopped_within_the_resolution() {
        let took = stopped_in_time(Duration::from_millis(50)).await;
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test]
    async fn finished_timeouts_leave_nothing_pending() {
        for _ in 0..100 {
            let _ = timeout(Duration::from_millis(1), std::future::pending::<()>()).await;
            let _ = timeout(Duration::from_secs(60), async {}).await;
        }
        let _ = timeout(Duration::from_secs(60), std::future::ready(())).await;
        // Every entry is pending or free for reuse (other tests' timeouts
        // may be pending meanwhile).
        let table = clock().lock();
        assert_eq!(table.free.len() + table.pending, table.entries.len());
    }

    #[tokio::test]
    async fn a_timeout_set_once_the_thread_sleeps_wakes_it() {
        // The thread sleeps after a quiet second; other tests' timeouts may
        // keep it awake, which this test then cannot wait out.
        let quiet = Instant::now();
        while !clock().lock().asleep && quiet.elapsed() < QUIET_BEFORE_SLEEP * 5 {
            tokio::time::sleep(RESOLUTION).await;
        }
        stopped_in_time(Duration::from_millis(20)).await;
        assert!(!clock().lock().asleep);
    }

    #[test]
    fn a_deadline_too_far_off_never_fires() {
        let far = timeout(Duration::MAX, std::future::pending::<()>());
        assert!(far.deadline.is_none());
    }
}

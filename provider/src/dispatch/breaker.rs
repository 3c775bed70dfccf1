//! A circuit breaker per component. After [`OPEN_AFTER`] events in a row
//! failed their first attempt (a link being down does not count), the
//! component takes new events one at a time, waiting [`PAUSE`] before each
//! (doubled per further failure, at most [`MAX_PAUSE`]), until a handler
//! succeeds; retries of events already taken go on to their end. A
//! component that keeps failing (a bug, a dependency that is down, a guest
//! that traps or runs out of memory) then costs its neighbours and its
//! broker next to nothing, and its events wait in the broker instead of
//! being burnt through their attempts into the dead-letter channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

/// Guest failures in a row that open the breaker.
pub const OPEN_AFTER: u32 = 5;
/// The wait between events once the breaker is open.
pub const PAUSE: Duration = Duration::from_secs(1);
/// The longest wait between events.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// One component's breaker.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: AtomicU32,
    /// Held for the run of the one event an open breaker lets through.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Breaker {
    /// While the breaker is open: the gate (one new event at a time; to be
    /// held while that event runs) and the pause to wait before running it.
    /// `None` while it is closed.
    pub async fn gate(&self) -> Option<(OwnedMutexGuard<()>, Duration)> {
        if !self.is_open() {
            return None;
        }
        let guard = self.gate.clone().lock_owned().await;
        let pause = if self.is_open() {
            self.pause()
        } else {
            Duration::ZERO
        };
        Some((guard, pause))
    }

    /// A handler succeeded; `true` when that closed the breaker.
    pub fn succeeded(&self) -> bool {
        self.failures.swap(0, Ordering::Relaxed) >= OPEN_AFTER
    }

    /// A handler failed (not for a link being down); `true` when that
    /// opened the breaker.
    pub fn failed(&self) -> bool {
        self.failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
            == OPEN_AFTER
    }

    /// The wait between events while open.
    pub fn pause(&self) -> Duration {
        let beyond = self
            .failures
            .load(Ordering::Relaxed)
            .saturating_sub(OPEN_AFTER);
        PAUSE.saturating_mul(1 << beyond.min(16)).min(MAX_PAUSE)
    }

    /// Whether it is open: new events one at a time.
    pub fn is_open(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= OPEN_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_closes_on_a_success() {
        let breaker = Breaker::default();
        for _ in 1..OPEN_AFTER {
            assert!(!breaker.failed());
        }
        assert!(breaker.gate().await.is_none(), "closed: no gate");
        assert!(breaker.failed(), "the fifth failure opens it");
        assert!(!breaker.failed());
        let (guard, pause) = breaker.gate().await.unwrap();
        assert_eq!(pause, PAUSE * 2);
        // One at a time: the next waits for the first to finish.
        assert!(
            tokio::time::timeout(PAUSE * 10, breaker.gate())
                .await
                .is_err()
        );
        drop(guard);
        assert!(breaker.gate().await.is_some());
        assert!(breaker.succeeded(), "a success closes it");
        assert!(breaker.gate().await.is_none());
        assert!(!breaker.succeeded());
        for _ in 0..100 {
            breaker.failed();
        }
        assert_eq!(breaker.pause(), MAX_PAUSE);
    }
}

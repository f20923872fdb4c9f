//! `StageWatch`: which stages of a run have died, shared by all its threads, so that a dead
//! stage never leaves a sender or waiter blocked and the run ends with its failures named.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Which stages of a run have died, shared by all its threads. A stage that dies can no longer
/// take from its queue, and the drop-oldest senders never see its queue disconnect (they hold a
/// receiver to drop from), so every sender and waiter asks this instead.
#[derive(Debug, Default)]
pub struct StageWatch {
    failed: AtomicBool,
    failures: Mutex<Vec<String>>,
}

impl StageWatch {
    pub fn any_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn fail(&self, reason: String) {
        tracing::error!("{reason}");
        if let Ok(mut f) = self.failures.lock() {
            f.push(reason);
        }
        self.failed.store(true, Ordering::Release);
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Runs a stage's body; a panic is recorded (with its message) instead of vanishing.
    pub(super) fn run_stage<T>(&self, stage: &str, body: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(v) => Some(v),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-text panic".into());
                self.fail(format!("the {stage} stage died: {message}"));
                None
            }
        }
    }
}

//! Runs third-party code that can panic on damaged input (dicom-rs's parser and codecs index into
//! file-controlled data) so that its panic becomes a value the caller turns into a clear refusal,
//! without Rust's panic message (and, with RUST_BACKTRACE set, a backtrace) on stderr before it.
//!
//! Owns the one wrapper around the process's panic hook: a panic anywhere else still reaches the
//! hook that was installed before (the default message, a test's own hook, a stage watch).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`contain`]: its panics are expected and reported as values.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

static WRAP_HOOK: Once = Once::new();

/// A panic caught by [`contain`], with the panic's own message for the debug log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainedPanic {
    pub message: String,
}

/// Runs `f`; a panic inside it comes back as `Err` without being printed. The message is logged
/// at debug level, so it is still there for whoever looks for it.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, ContainedPanic> {
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    // Nested calls keep the outer state.
    let outer = CONTAINING.with(|c| c.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    outcome.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::debug!(%message, "contained a panic in third-party code");
        ContainedPanic { message }
    })
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_comes_back_as_a_value_with_its_message() {
        assert_eq!(contain(|| 7), Ok(7));
        let caught = contain(|| -> u8 { panic!("segment {} decoded short", 3) });
        assert_eq!(
            caught.map_err(|p| p.message),
            Err("segment 3 decoded short".into())
        );
        let nested = contain(|| contain(|| panic!("inner")).is_err());
        assert_eq!(nested, Ok(true));
    }

    #[test]
    fn panics_outside_still_reach_the_hook_and_unwind() {
        let _ = contain(|| ());
        // Outside `contain`, a panic still unwinds as usual (the wrapped hook runs; its output
        // is the test harness's captured stderr).
        assert!(catch_unwind(|| panic!("outside")).is_err());
        assert!(!CONTAINING.with(Cell::get));
    }
}

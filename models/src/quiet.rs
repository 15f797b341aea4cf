//! `catch_quietly`: burn reports some conditions only by panicking (a record that does not fit
//! the module, a CUDA device that cannot start), and its callers turn them into clear errors.

use std::any::Any;
use std::cell::Cell;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};

/// Runs `f`, turning a panic into `Err(message)` without printing it.
///
/// While any call runs, every panic is kept from the process's panic hook. A panic on the
/// calling thread is the call's `Err`; one on another thread is kept aside, and a call that
/// fails takes the first kept since it began into its message: burn's CUDA backend panics on a
/// thread of its own, which the caller sees as a bare `RecvError`. Those no failing call took
/// are printed when the last call ends, so no panic goes unreported.
///
/// The hook is wrapped once, at the first call, never swapped per call: swapping raced when
/// threads called this at once, as the GPU tests do, and printed quiet panics or left the silent
/// hook in place, every later panic unreported. A hook set after the first call replaces the
/// wrapper, and calls then print their panics: set hooks before.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let window = Window::open();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let own = message(&*e);
        match window.take_elsewhere() {
            // A panic on a thread of `f`'s own (rayon's) comes back as the caller's.
            Some(other) if other != own => format!("{own}; on another thread: {other}"),
            _ => own,
        }
    })
}

/// A panic's message: its payload where that is text (`panic!`'s always is).
fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// What the calls running share: how many there are, and the panics of other threads since the
/// first of them began.
struct Calls {
    open: usize,
    kept: Vec<Kept>,
}

/// Another thread's panic: its message, as the hook would print it, and whether a call took it.
struct Kept {
    message: String,
    printed: String,
    taken: bool,
}

static CALLS: Mutex<Calls> = Mutex::new(Calls {
    open: 0,
    kept: Vec::new(),
});
thread_local! {
    /// Calls running on this thread.
    static INSIDE: Cell<usize> = const { Cell::new(0) };
}

/// The shared state (no code panics while holding it; a poisoned lock is taken as it is).
fn calls() -> MutexGuard<'static, Calls> {
    CALLS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wraps the process's panic hook: quiet while any call runs, else the hook it found.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let mut calls = calls();
            if calls.open == 0 {
                drop(calls);
                return report(info);
            }
            if INSIDE.get() == 0 {
                calls.kept.push(Kept {
                    message: message(info.payload()),
                    printed: info.to_string(),
                    taken: false,
                });
            }
        }));
    });
}

/// One call's time, open while it lives: from `first`, the panics kept are of its time.
struct Window {
    first: usize,
}

impl Window {
    fn open() -> Window {
        INSIDE.set(INSIDE.get() + 1);
        let mut calls = calls();
        calls.open += 1;
        Window {
            first: calls.kept.len(),
        }
    }

    /// The first panic of another thread in this call's time that no call has taken.
    fn take_elsewhere(&self) -> Option<String> {
        let mut calls = calls();
        let kept = calls.kept[self.first..].iter_mut().find(|k| !k.taken)?;
        kept.taken = true;
        Some(kept.message.clone())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        INSIDE.set(INSIDE.get() - 1);
        let mut calls = calls();
        calls.open -= 1;
        if calls.open > 0 {
            return;
        }
        let kept = std::mem::take(&mut calls.kept);
        drop(calls);
        // Written, not eprintln!'d: a closed stderr must not make this a panic of its own.
        let mut err = std::io::stderr().lock();
        for k in kept.iter().filter(|k| !k.taken) {
            let _ = writeln!(err, "a thread {} (while a panic was caught)", k.printed);
        }
    }
}

//! `catch_quietly`: burn reports some conditions only by panicking (a record that does not fit
//! the module, a CUDA device that cannot start), and its callers turn them into clear errors.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Runs `f`, turning a panic into `Err(message)` without printing it.
///
/// A panic on any thread while a call runs is kept quiet, and the first one on another thread is
/// added to the message: burn's CUDA backend panics on a thread of its own, which the caller sees
/// as a bare `RecvError`. (So another thread's panic that has nothing to do with `f` goes
/// unprinted while a call runs.) The process's panic hook is wrapped once, at the first call (a
/// hook set later replaces the wrapper), never swapped per call: swapping raced when threads
/// called this at once, as tests do, and could report a quiet panic or leave the silent hook in
/// place, every later panic unreported.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let _window = Window::open();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let own = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        match elsewhere() {
            Some(other) => format!("{own}; on another thread: {other}"),
            None => own,
        }
    })
}

/// Calls running, over all threads.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// The first panic message of a thread outside the calls while any ran.
static ELSEWHERE: Mutex<Option<String>> = Mutex::new(None);
thread_local! {
    /// Calls running on this thread.
    static INSIDE: Cell<usize> = const { Cell::new(0) };
}

/// Wraps the process's panic hook: quiet while any call runs, else the hook it found.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if OPEN.load(Ordering::SeqCst) == 0 {
                return report(info);
            }
            if INSIDE.get() == 0 {
                let mut slot = ELSEWHERE.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| info.payload_as_str().unwrap_or("").to_string());
            }
        }));
    });
}

/// One call's time: open while it lives, on its thread and for the process.
struct Window;

impl Window {
    fn open() -> Window {
        INSIDE.set(INSIDE.get() + 1);
        if OPEN.fetch_add(1, Ordering::SeqCst) == 0 {
            // A message from an earlier call's time is not this one's.
            ELSEWHERE.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        Window
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        INSIDE.set(INSIDE.get() - 1);
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes the message of the panic another thread had while a call ran, if any.
fn elsewhere() -> Option<String> {
    ELSEWHERE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|m| !m.is_empty())
}

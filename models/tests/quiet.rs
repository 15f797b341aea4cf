//! `models::catch_quietly` against the process's panic hook (a binary of its own: the hook is
//! process-wide): quiet while it runs, from many threads at once, and the hook set before it
//! still reports every other panic after.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Panics the hook set by the test reported.
static REPORTED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn catch_quietly_keeps_quiet_and_leaves_the_hook_reporting() {
    std::panic::set_hook(Box::new(|_| {
        REPORTED.fetch_add(1, SeqCst);
    }));
    // Many calls at once. Swapping the hook per call, as catch_quietly did, raced here: a quiet
    // panic reported, or the silent hook left in place.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..500 {
                    let e = models::catch_quietly(|| -> u8 { panic!("quiet {t} {i}") });
                    assert_eq!(e, Err(format!("quiet {t} {i}")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread of calls");
    }
    assert_eq!(
        REPORTED.load(SeqCst),
        0,
        "a panic inside catch_quietly was reported"
    );

    // A panic on a thread the call waits on (burn's CUDA backend's, seen as a bare RecvError)
    // is quiet too, and its message joins the call's.
    let e = models::catch_quietly(|| {
        let worker = std::thread::spawn(|| panic!("the device failed to start"));
        worker.join().map_err(|_| "RecvError").unwrap()
    });
    assert_eq!(
        e,
        Err(
            "called `Result::unwrap()` on an `Err` value: \"RecvError\"; on another thread: \
             the device failed to start"
                .into()
        )
    );
    assert_eq!(REPORTED.load(SeqCst), 0);
    assert_eq!(models::catch_quietly(|| 7), Ok(7));

    // After the calls, panics are the hook's again.
    std::thread::spawn(|| panic!("loud")).join().unwrap_err();
    assert_eq!(
        REPORTED.load(SeqCst),
        1,
        "the hook set before no longer reports panics"
    );
}

//! `models::catch_quietly` against the process's panic hook (a binary of its own: the hook is
//! process-wide): quiet while it runs, from many threads at once, and the hook set before it
//! still reports every other panic after.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Panics the hook set by the test reported.
static REPORTED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn catch_quietly_keeps_quiet_and_leaves_the_hook_reporting() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
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

/// Another thread's panic while a call runs, taken by no failing call, is printed when the call
/// ends, and is not a later call's: run in a process of its own (this binary again,
/// `QUIET_CHILD` set), its stderr read.
#[test]
fn a_panic_no_call_takes_is_printed_when_the_calls_end() {
    if std::env::var_os("QUIET_CHILD").is_some() {
        let ok = models::catch_quietly(|| std::thread::spawn(|| panic!("unrelated")).join());
        assert!(matches!(ok, Ok(Err(_))));
        eprintln!("after the call");
        let e = models::catch_quietly(|| -> u8 { panic!("mine") });
        assert_eq!(e, Err("mine".into()));
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_no_call_takes_is_printed_when_the_calls_end",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QUIET_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{err}");
    let printed = err.find("unrelated (while a panic was caught)");
    let after = err.find("after the call");
    assert!(
        printed.is_some() && printed < after,
        "not printed when the call ended: {err}"
    );
}

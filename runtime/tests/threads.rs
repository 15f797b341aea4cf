//! `--threads N` reaches ONNX Runtime: a session with N intra-op threads starts N - 1 workers
//! (the calling thread is the N-th) and stops them when dropped. Alone in its test binary, so
//! that no other test's threads come and go while it counts this process's threads.

mod common;

use std::time::{Duration, Instant};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Waits (up to 5 s) for this process to be back to `n` threads.
fn back_to(n: usize) -> usize {
    let start = Instant::now();
    while threads() != n && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    threads()
}

#[test]
fn a_session_runs_on_the_intra_op_threads_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = common::model(tmp.path());
    let open = |threads| common::cpu_model(&onnx, threads);
    // ONNX Runtime and its environment are loaded once, with the first session.
    drop(open(1));
    let idle = threads();
    for n in [1, 3, 4] {
        let model = open(n);
        assert_eq!(threads(), idle + n - 1, "a session of {n} intra-op threads");
        drop(model);
        assert_eq!(
            back_to(idle),
            idle,
            "after dropping a session of {n} threads"
        );
    }
}

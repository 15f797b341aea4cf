//! Allocator setting for training on the CPU.

/// A training step allocates and frees dozens of activation-sized buffers (a few MB each). glibc
/// serves blocks above its mmap threshold with fresh mappings and returns freed heap tops to the
/// kernel, so each step page-faults (and zero-fills) its activations anew: ~500k faults in 40
/// steps, 1.4x the step time (`cargo bench -p trainer --bench step`). Raising both thresholds
/// keeps freed buffers in the heap for the next step.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

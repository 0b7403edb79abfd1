//! The heap given back to the system after large commands. glibc keeps freed memory in its
//! arenas: after a `/synceip` of 100,000 EIPs (a parsed body, a model and a netlink batch of
//! hundreds of thousands of elements, all freed at the end) the agent stayed at ~370 MiB
//! resident while holding ~40 MiB. Measured with the settings below: ~60 MiB.
//!
//! The only unsafe code of the crate: two glibc calls without caller-side invariants.
#![allow(unsafe_code)]

/// Commands that took at least this long are followed by a trim (a trim walks the arenas:
/// not worth it after a small command).
pub const TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// ...and by another once the writer has been idle this long (the request's body and the
/// HTTP side's buffers are freed after the reply).
pub const TRIM_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Sets the allocator up for a long-lived agent that sometimes handles very large commands:
/// at most two arenas (the runtime's worker threads would each get one), and freed blocks
/// of 64 KiB or more go back to the system at once (large blocks get their own mapping,
/// and the top of the heap is released from 64 KiB on). Call before the runtime starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt};
        for (param, value) in [
            (M_ARENA_MAX, 2),
            (M_TRIM_THRESHOLD, 64 << 10),
            (M_MMAP_THRESHOLD, 64 << 10),
        ] {
            // SAFETY: mallopt takes plain integers and has no caller-side invariants.
            if unsafe { mallopt(param, value) } != 1 {
                tracing::debug!(param, value, "mallopt refused a setting");
            }
        }
    }
}

/// Gives the freed memory inside the heap back to the system (call at a quiet point: the
/// writer between commands).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no caller-side invariants.
        let released = unsafe { nix::libc::malloc_trim(0) } != 0;
        tracing::debug!(released, "heap trimmed");
    }
}

//! Heap settings for training loops.
//!
//! A candle training step allocates and frees many tensor buffers of a few hundred
//! KiB to a few MiB each, every step. glibc's malloc serves those above its dynamic
//! mmap threshold (128 KiB at start) with fresh `mmap`s and gives freed heap tops
//! back to the kernel (trim threshold 128 KiB), so every step pays page faults and
//! the kernel's zeroing of the same pages again: in a `perf` profile of the
//! Transformer classifier step, page faults and `clear_page` were about 7% of the
//! time and the step made 680 k page faults for 22 updates. [`tune`] keeps freed
//! buffers in the heap instead, which cut that to 88 k faults and the CPU time by
//! about 20%, with the same peak RSS (see `docs/performance.md`, "The heap").
//!
//! It only changes where freed memory waits for reuse; no result changes.

/// Buffers up to this size come from the heap rather than their own `mmap`
/// (glibc's maximum for `M_MMAP_THRESHOLD` on 64-bit targets is 32 MiB).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of the heap is returned to the kernel only beyond this.
pub const TRIM_THRESHOLD: usize = 256 << 20;
/// Extra memory requested from the kernel each time the heap grows.
pub const TOP_PAD: usize = 64 << 20;

/// Environment variables with which the user sets glibc's malloc themselves; when
/// one is set, [`tune`] leaves malloc alone.
pub const USER_SETTINGS: [&str; 4] = [
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
];

/// Sets glibc malloc's mmap threshold, trim threshold and top pad for a training
/// process (the `cotext` binary calls it first thing). Returns whether the
/// settings were applied: `false` on other platforms and allocators, and when the
/// user has set malloc's parameters through the environment ([`USER_SETTINGS`]).
/// Call it before the first large allocation; it is process-wide.
pub fn tune() -> bool {
    if USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some()) {
        return false;
    }
    imp::tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::{MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD};

    pub fn tune() -> bool {
        let set = |param: libc::c_int, value: usize| {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only reads its two integer arguments.
            unsafe { libc::mallopt(param, value) == 1 }
        };
        // Setting any of these also turns off glibc's dynamic threshold, which
        // would otherwise move the mmap threshold back and forth.
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            & set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            & set(libc::M_TOP_PAD, TOP_PAD)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn tune() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        if super::USER_SETTINGS
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert!(super::tune());
            // Allocations of every size still work afterwards.
            for n in [1usize, 4 << 10, 1 << 20, 40 << 20] {
                let v = vec![7u8; n];
                assert_eq!(v[n - 1], 7);
            }
        }
    }
}

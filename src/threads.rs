//! Where a command's work runs: inside the rayon pool, not beside it.
//!
//! candle's CPU kernels, `gemm` and cotext's own kernels split their work with
//! rayon. Called from a thread outside the pool (a program's main thread), each
//! parallel call hands all of its work to the pool and sleeps until a worker has
//! woken up, taken it and finished; with two threads that is three threads taking
//! turns on two cores, thousands of times per training step. Run from inside the
//! pool, the calling thread does its own share and wakes only the others: on the
//! Intel Xeon of `docs/performance.md` ("Seventh round"), a `[64 × 256] · [256 ×
//! 1024]` product at 2 threads went from 159–188 to 131–137 µs, and training updates
//! (`benches/train_step.rs`, 2 threads) 4–29% faster with the same losses to the
//! last bit.
//!
//! [`install`] is what the `cotext` binary and the benchmarks do first thing; a
//! program that reuses cotext's models or losses in its own training loop gains the
//! same by running that loop inside it. candle 0.11's `Device::with_context` is the
//! same idea with candle's own pool (measured level with this one); cotext builds
//! its own so that the work keeps a main thread's 8 MiB stack
//! ([`STACK_BYTES`]) rather than a spawned thread's 2 MiB.

/// The spin limit cotext gives candle's elementwise worker threads
/// (`CANDLE_BARRIER_POOL_SPIN_LIMIT`) unless the environment sets one: 1,000 turns
/// instead of candle 0.11's 25,000.
///
/// Between two elementwise ops candle's worker spins, on a core the rayon pool also
/// needs, before it parks: 13–18% of the samples of an LSTM translator's update
/// (docs/performance.md, "What remains"). `train_step` with 1,000, same Intel Xeon,
/// 2 threads, three rounds against the default: transformer-sst5 and minilm-sst2
/// 6% faster, the others within their noise, none slower beyond it; the same bits.
pub const CANDLE_SPIN_LIMIT: u32 = 1_000;

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`CANDLE_SPIN_LIMIT`] when it is unset.
/// candle reads it once, when its first elementwise op starts its workers, so call
/// this first thing in `main`, before any thread starts (it changes the process
/// environment); the `cotext` binary and the benchmarks do.
pub fn spin_less() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, CANDLE_SPIN_LIMIT.to_string());
    }
}

/// Stack of the pool's threads: the 8 MiB of a Linux main thread, which is where
/// the work ran before (a spawned thread's default is 2 MiB).
pub const STACK_BYTES: usize = 8 << 20;

/// Runs `work` on a thread of a new rayon pool and returns its result, so that every
/// rayon call `work` makes (candle's kernels, `gemm`, cotext's kernels) runs in that
/// pool with the calling thread taking part.
///
/// The pool has rayon's default size (`RAYON_NUM_THREADS`, or one thread per
/// logical CPU), as the global pool would. Results do not depend on it: cotext's
/// reductions combine their parts in a fixed order. If the pool cannot be built
/// (the system refuses threads), `work` runs on the calling thread instead.
pub fn install<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cotext-{i}"))
        .stack_size(STACK_BYTES)
        .build()
    {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_runs_on_a_pool_thread_and_returns_its_value() {
        let (inside, name, threads) = super::install(|| {
            (
                rayon::current_thread_index().is_some(),
                std::thread::current().name().map(str::to_owned),
                rayon::current_num_threads(),
            )
        });
        assert!(inside, "not on a pool thread");
        assert!(name.is_some_and(|n| n.starts_with("cotext-")));
        let global = rayon::ThreadPoolBuilder::new().build().unwrap();
        assert_eq!(threads, global.current_num_threads());
    }

    /// A layer norm and a linear layer, forward and backward, with parallel
    /// reductions over rows (the weight and bias gradients): the same bits
    /// computed from inside the pool and from outside it.
    #[test]
    fn kernels_give_the_same_bits_inside_the_pool_and_outside() {
        use candle_core::{DType, Device, Tensor, Var};
        // Fixed values, irregular enough that rounding depends on the order of sums.
        let fill = |dims: &[usize], seed: f32| -> candle_core::Result<Var> {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin()).collect();
            Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu)?)
        };
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let x = fill(&[48, 37, 96], 0.37)?;
            let lw = fill(&[96], 1.3)?;
            let lb = fill(&[96], 0.7)?;
            let w = fill(&[130, 96], 0.11)?;
            let b = fill(&[130], 0.5)?;
            let h = crate::models::fused::layer_norm(&x, &lw, &lb, 1e-5)?;
            let y = crate::models::fused::linear(&h, &w, &b)?;
            let grads = y.sqr()?.sum_all()?.backward()?;
            let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in [&x, &lw, &lb, &w, &b] {
                let g = grads.get(v).expect("a gradient");
                out.push(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(out)
        };
        let outside = run().unwrap();
        let inside = super::install(run).unwrap();
        for (a, b) in outside.iter().zip(&inside) {
            assert_eq!(a.len(), b.len());
            assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

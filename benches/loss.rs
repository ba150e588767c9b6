//! Loss forward + backward at N = 4096 rows, V = 32000: plain vs chunked vs the
//! projection-fused path. Time with criterion; peak heap memory with a counting
//! allocator, printed before the timings (the logits tensor is 500 MiB).
//!
//! Run: `cargo bench --bench loss` (add `-- --quick` for a short run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use cotext::loss::{self, ComplementOptions, ProjectedLoss};
use criterion::{criterion_group, criterion_main, Criterion};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 4096;
const V: usize = 32000;
const H: usize = 512;

fn inputs(n: usize) -> (Tensor, Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let hidden = Tensor::randn(0f32, 1.0, (n, H), &dev).unwrap();
    let weight = (Tensor::randn(0f32, 1.0, (V, H), &dev).unwrap() / (H as f64).sqrt()).unwrap();
    let logits = hidden.matmul(&weight.t().unwrap()).unwrap();
    let targets = Tensor::from_vec(
        (0..n as u32)
            .map(|i| (i * 7919) % V as u32)
            .collect::<Vec<_>>(),
        n,
        &dev,
    )
    .unwrap();
    (hidden, weight, logits, targets)
}

/// One forward + backward of `path`; returns the gradient store so it is kept alive
/// as a training step would keep it until the optimizer runs.
fn step(
    path: &str,
    hidden: &Var,
    weight: &Var,
    logits: &Var,
    targets: &Tensor,
) -> candle_core::backprop::GradStore {
    let opts = ComplementOptions::default();
    let value = match path {
        "plain" => loss::complement_entropy(logits, targets, &opts).unwrap(),
        "chunked" => loss::chunked_complement_entropy(logits, targets, &opts).unwrap(),
        "projected" => loss::projected_token_loss(
            hidden,
            weight,
            None,
            targets,
            &ProjectedLoss::Complement(opts),
            0,
        )
        .unwrap()
        .mean()
        .unwrap(),
        "plain-ce" => loss::cross_entropy(logits, targets, &Default::default()).unwrap(),
        "chunked-ce" => loss::chunked_cross_entropy(logits, targets, &Default::default()).unwrap(),
        _ => unreachable!(),
    };
    value.backward().unwrap()
}

/// Peak extra heap bytes of one step, in units of the logits tensor's size.
pub fn peak_memory(n: usize) {
    let (h, w, z, t) = inputs(n);
    let (h, w, z) = (
        Var::from_tensor(&h).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&z).unwrap(),
    );
    let logits_bytes = n * V * DType::F32.size_in_bytes();
    println!("peak extra heap of complement-entropy forward+backward, N = {n}, V = {V} (logits {:.0} MiB):", logits_bytes as f64 / (1 << 20) as f64);
    for path in ["plain", "chunked", "projected", "plain-ce", "chunked-ce"] {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let grads = step(path, &h, &w, &z, &t);
        let peak = PEAK.load(Ordering::Relaxed) - base;
        drop(grads);
        println!(
            "  {path:<11} {:>8.0} MiB  = {:.2} × logits",
            peak as f64 / (1 << 20) as f64,
            peak as f64 / logits_bytes as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    peak_memory(N);
    if std::env::var_os("COTEXT_BENCH_8192").is_some() {
        peak_memory(8192);
    }
    let (h, w, z, t) = inputs(N);
    let (h, w, z) = (
        Var::from_tensor(&h).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&z).unwrap(),
    );
    let mut group = c.benchmark_group("complement_fwd_bwd_4096x32000");
    group.sample_size(10);
    for path in ["plain", "chunked", "projected", "plain-ce", "chunked-ce"] {
        group.bench_function(path, |b| b.iter(|| step(path, &h, &w, &z, &t)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The fused token-level loss on CUDA: cross-entropy or complement entropy per row of
//! `[n, V]` logits in one pass over the vocabulary (an online max/sum with rescaling,
//! f32 accumulation, bf16/f16/f32 logits read in place), and its backward as one
//! elementwise kernel. Same formulas and ignore-index handling as the host row
//! kernels in `chunked.rs`; the kernels are compiled at run time with NVRTC.
//!
//! Only built with the `cuda` feature; every other backend (CPU, Metal) uses the
//! host kernels or the plain path.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};

use super::chunked::Kind;

/// The CUDA C source. No headers: bf16 and f16 are read and written through their
/// bit patterns (a `#include <cuda_bf16.h>` would need the toolkit's headers on
/// the machine that runs NVRTC).
const SOURCE: &str = r#"
struct bf16_t { unsigned short x; };
struct f16_t { unsigned short x; };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16_t v) { return __uint_as_float(((unsigned int)v.x) << 16); }
__device__ __forceinline__ float to_f(f16_t v) {
    float f; asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(v.x)); return f;
}
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(bf16_t* p, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p->x = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even (as half::bf16)
    p->x = (unsigned short)(u >> 16);
}
__device__ __forceinline__ void put(f16_t* p, float v) {
    unsigned short h; asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(v)); p->x = h;
}

// Running statistics over part of a row: m = max, s = sum exp(x - m),
// w = sum exp(x - m) (x - m), t = sum x (every column, for label smoothing).
// s == 0 means empty.
struct Acc { float m, s, w, t; };

__device__ __forceinline__ void add(Acc& a, float x) {
    if (a.s == 0.0f) { a.m = x; a.s = 1.0f; a.w = 0.0f; return; }
    if (x > a.m) {
        float d = a.m - x, r = expf(d);
        a.w = r * (a.w + d * a.s);
        a.s = a.s * r + 1.0f;
        a.m = x;
    } else {
        float d = x - a.m, e = expf(d);
        a.s += e;
        // x = -inf adds nothing (not 0 * -inf); a NaN propagates, as on the host.
        if (e > 0.0f || d != d) a.w += e * d;
    }
}

__device__ __forceinline__ Acc merge(Acc a, Acc b) {
    Acc o;
    o.t = a.t + b.t;
    if (b.s == 0.0f) { o.m = a.m; o.s = a.s; o.w = a.w; return o; }
    if (a.s == 0.0f) { o.m = b.m; o.s = b.s; o.w = b.w; return o; }
    float m = fmaxf(a.m, b.m);
    float da = a.m - m, db = b.m - m;
    float ra = expf(da), rb = expf(db);
    o.m = m;
    o.s = a.s * ra + b.s * rb;
    o.w = ra * (a.w + da * a.s) + rb * (b.w + db * b.s);
    return o;
}

__device__ Acc block_reduce(Acc a) {
    __shared__ Acc warp[32];
    for (int off = 16; off > 0; off >>= 1) {
        Acc b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, off);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, off);
        b.w = __shfl_xor_sync(0xffffffffu, a.w, off);
        b.t = __shfl_xor_sync(0xffffffffu, a.t, off);
        a = merge(a, b);
    }
    int lane = threadIdx.x & 31, id = threadIdx.x >> 5;
    if (lane == 0) warp[id] = a;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    if (id == 0) {
        Acc empty; empty.m = 0.0f; empty.s = 0.0f; empty.w = 0.0f; empty.t = 0.0f;
        a = lane < warps ? warp[lane] : empty;
        for (int off = 16; off > 0; off >>= 1) {
            Acc b;
            b.m = __shfl_xor_sync(0xffffffffu, a.m, off);
            b.s = __shfl_xor_sync(0xffffffffu, a.s, off);
            b.w = __shfl_xor_sync(0xffffffffu, a.w, off);
            b.t = __shfl_xor_sync(0xffffffffu, a.t, off);
            a = merge(a, b);
        }
    }
    return a;
}

// One block per row. out[row] = (value, max, log_sum, entropy); zeros for an
// ignored row. kind 0: cross-entropy (1 - eps)(lse - z_g) + eps (lse - mean z);
// kind 1: complement, value = -H_c over the columns j != g.
template <typename T>
__device__ void row_loss(const T* z, const unsigned int* targets, float* out, int v,
                         int kind, float smoothing, int has_ignore, unsigned int ignore) {
    long row = blockIdx.x;
    unsigned int g = targets[row];
    float* o = out + 4 * row;
    if (has_ignore && g == ignore) {
        if (threadIdx.x == 0) { o[0] = 0.0f; o[1] = 0.0f; o[2] = 0.0f; o[3] = 0.0f; }
        return;
    }
    const T* zr = z + row * (long)v;
    Acc a; a.m = 0.0f; a.s = 0.0f; a.w = 0.0f; a.t = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float x = to_f(zr[j]);
        a.t += x;
        if (kind == 1 && j == (int)g) continue;
        add(a, x);
    }
    a = block_reduce(a);
    if (threadIdx.x == 0) {
        float log_sum = logf(a.s);
        if (kind == 0) {
            float lse = a.m + log_sum;
            float nll = lse - to_f(zr[g]);
            float smooth = lse - a.t / (float)v;
            o[0] = (1.0f - smoothing) * nll + smoothing * smooth;
            o[1] = a.m; o[2] = log_sum; o[3] = 0.0f;
        } else {
            float h = log_sum - a.w / a.s;
            o[0] = -h; o[1] = a.m; o[2] = log_sum; o[3] = h;
        }
    }
}

// grid (n, column blocks): out = upstream * d value / d z, from the forward's
// statistics st[row] = (max, log_sum, entropy, upstream).
template <typename T>
__device__ void row_grad(const T* z, const unsigned int* targets, const float* st, T* out,
                         int v, int kind, float smoothing, int has_ignore, unsigned int ignore) {
    long row = blockIdx.x;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= v) return;
    long at = row * (long)v + j;
    unsigned int g = targets[row];
    if (has_ignore && g == ignore) { put(out + at, 0.0f); return; }
    const float* s = st + 4 * row;
    float log_q = to_f(z[at]) - s[0] - s[1];
    float d;
    if (kind == 0) {
        d = expf(log_q) - smoothing / (float)v;
        if (j == (int)g) d -= 1.0f - smoothing;
    } else {
        d = j == (int)g ? 0.0f : expf(log_q) * (log_q + s[2]);
    }
    put(out + at, s[3] * d);
}

#define COTEXT_LOSS(T, NAME) \
extern "C" __global__ void cotext_row_loss_##NAME(const T* z, const unsigned int* t, float* out, \
    int v, int kind, float smoothing, int has_ignore, unsigned int ignore) { \
    row_loss<T>(z, t, out, v, kind, smoothing, has_ignore, ignore); } \
extern "C" __global__ void cotext_row_grad_##NAME(const T* z, const unsigned int* t, \
    const float* st, T* out, int v, int kind, float smoothing, int has_ignore, unsigned int ignore) { \
    row_grad<T>(z, t, st, out, v, kind, smoothing, has_ignore, ignore); }

COTEXT_LOSS(float, f32)
COTEXT_LOSS(bf16_t, bf16)
COTEXT_LOSS(f16_t, f16)
"#;

const MODULE: &str = "cotext_token_loss";
const THREADS: u32 = 256;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    match PTX.get_or_init(|| {
        nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    }) {
        Ok(ptx) => Ok(ptx.as_str()),
        Err(e) => bail!("cotext: NVRTC could not compile the loss kernels: {e}"),
    }
}

/// The kernel's scalar arguments.
#[derive(Debug, Clone, Copy)]
struct Params {
    kind: i32,
    smoothing: f32,
    has_ignore: i32,
    ignore: u32,
}

impl Params {
    fn new(kind: Kind, ignore_index: Option<u32>) -> Self {
        let (kind, smoothing) = match kind {
            Kind::CrossEntropy { smoothing } => (0, smoothing as f32),
            Kind::Complement => (1, 0.0),
        };
        Self {
            kind,
            smoothing,
            has_ignore: i32::from(ignore_index.is_some()),
            ignore: ignore_index.unwrap_or(0),
        }
    }
}

fn offset(l: &Layout, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

fn targets_of<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>> {
    match &s.slice {
        CudaStorageSlice::U32(t) => Ok(t.slice(offset(l, what)?..)),
        _ => bail!("{what}: targets must be u32"),
    }
}

/// Forward op: `(logits [n, V] f32/bf16/f16, targets [n] u32) → [n, 4] f32`, each row
/// `(value, max, log_sum, entropy)`, zeros for ignored rows. Only column 0 is the
/// loss; the others are the statistics the backward pass reuses (they reach `bwd`
/// as the op's result, so nothing is cached in the op).
pub(super) struct RowLossCuda {
    kind: Kind,
    ignore_index: Option<u32>,
}

impl RowLossCuda {
    pub(super) fn new(kind: Kind, ignore_index: Option<u32>) -> Self {
        Self { kind, ignore_index }
    }
}

fn launch_loss<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    z: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    t: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
    n: usize,
    v: usize,
    p: Params,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
    let out = dev.alloc_zeros::<f32>(n * 4)?;
    if n == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let v = v as i32;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = func.builder();
    b.arg(z);
    b.arg(t);
    b.arg(&out);
    b.arg(&v);
    b.arg(&p.kind);
    b.arg(&p.smoothing);
    b.arg(&p.has_ignore);
    b.arg(&p.ignore);
    // SAFETY: the argument list matches the kernel's signature; `z` holds n·V
    // values, `t` n targets below V (checked on the host) or the ignore index, and
    // `out` 4n floats.
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}

impl CustomOp2 for RowLossCuda {
    fn name(&self) -> &'static str {
        "cotext-row-loss-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!(
            "{}: CUDA only (the host uses the row kernels of chunked.rs)",
            self.name()
        )
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let dev = &s1.device;
        let t = targets_of(s2, l2, self.name())?;
        let o = offset(l1, self.name())?;
        let p = Params::new(self.kind, self.ignore_index);
        let out = match &s1.slice {
            CudaStorageSlice::F32(z) => {
                launch_loss(dev, "cotext_row_loss_f32", &z.slice(o..), &t, n, v, p)?
            }
            CudaStorageSlice::BF16(z) => {
                launch_loss(dev, "cotext_row_loss_bf16", &z.slice(o..), &t, n, v, p)?
            }
            CudaStorageSlice::F16(z) => {
                launch_loss(dev, "cotext_row_loss_f16", &z.slice(o..), &t, n, v, p)?
            }
            _ => bail!("{}: logits must be f32, bf16 or f16", self.name()),
        };
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(out),
                device: dev.clone(),
            },
            Shape::from((n, 4)),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Only the value column carries a gradient; pack it after the statistics.
        let packed = Tensor::cat(
            &[
                res.narrow(1, 1, 3)?,
                grad_res.narrow(1, 0, 1)?.to_dtype(res.dtype())?,
            ],
            1,
        )?
        .contiguous()?;
        let grad = logits.apply_op3_no_bwd(
            targets,
            &packed,
            &RowGradCuda {
                kind: self.kind,
                ignore_index: self.ignore_index,
            },
        )?;
        Ok((Some(grad), None))
    }
}

/// Backward op: `(logits [n, V], targets [n], [n, 4] f32 (max, log_sum, entropy,
/// upstream)) → ∂/∂logits [n, V]` in the logits' dtype.
struct RowGradCuda {
    kind: Kind,
    ignore_index: Option<u32>,
}

#[allow(clippy::too_many_arguments)]
fn launch_grad<T: DeviceRepr + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits>(
    dev: &CudaDevice,
    name: &str,
    z: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    t: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
    st: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    n: usize,
    v: usize,
    p: Params,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
    if n == 0 || v == 0 {
        return dev.alloc_zeros::<T>(n * v);
    }
    let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(n * v)? };
    let cols = v.div_ceil(THREADS as usize) as u32;
    let v = v as i32;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, cols, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = func.builder();
    b.arg(z);
    b.arg(t);
    b.arg(st);
    b.arg(&out);
    b.arg(&v);
    b.arg(&p.kind);
    b.arg(&p.smoothing);
    b.arg(&p.has_ignore);
    b.arg(&p.ignore);
    // SAFETY: as in `launch_loss`; `st` holds 4n floats and `out` n·V values.
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}

impl CustomOp3 for RowGradCuda {
    fn name(&self) -> &'static str {
        "cotext-row-loss-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        if n > 0 && v.div_ceil(THREADS as usize) > 65535 {
            bail!(
                "{}: a vocabulary of {v} is too wide for one grid",
                self.name()
            );
        }
        let dev = &s1.device;
        let t = targets_of(s2, l2, self.name())?;
        let st = match &s3.slice {
            CudaStorageSlice::F32(s) => s.slice(offset(l3, self.name())?..),
            _ => bail!("{}: statistics must be f32", self.name()),
        };
        let o = offset(l1, self.name())?;
        let p = Params::new(self.kind, self.ignore_index);
        let slice = match &s1.slice {
            CudaStorageSlice::F32(z) => CudaStorageSlice::F32(launch_grad(
                dev,
                "cotext_row_grad_f32",
                &z.slice(o..),
                &t,
                &st,
                n,
                v,
                p,
            )?),
            CudaStorageSlice::BF16(z) => CudaStorageSlice::BF16(launch_grad(
                dev,
                "cotext_row_grad_bf16",
                &z.slice(o..),
                &t,
                &st,
                n,
                v,
                p,
            )?),
            CudaStorageSlice::F16(z) => CudaStorageSlice::F16(launch_grad(
                dev,
                "cotext_row_grad_f16",
                &z.slice(o..),
                &t,
                &st,
                n,
                v,
                p,
            )?),
            _ => bail!("{}: logits must be f32, bf16 or f16", self.name()),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }
}

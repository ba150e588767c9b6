//! The one place that calls `gemm` (the crate candle's CPU matmul runs on): strided
//! views, a destination handle that threads can share, and the products of
//! candle's matmul cut by thread. The fused model kernels (`models/fused.rs`) and
//! the projected token loss (`loss/projected.rs`) run their products here.

use candle_core::WithDType;
use rayon::prelude::*;

/// `dst [m, n] = lhs · rhs` (row-major `dst`; `lhs` `m × k` and `rhs` `k × n` with
/// the given (column, row) strides): the products of candle's CPU matmul, with
/// the same operands and strides.
///
/// With more than one thread (candle's thread rule, `RAYON_NUM_THREADS`), `dst` is
/// cut into one block of rows (or of columns, when it is wider than tall) per
/// thread, and each block is one single-threaded `gemm` call. Each element is still
/// the same dot product, accumulated in the same order over `k`, so the values are
/// the bits of one multi-threaded `gemm` call (tested against candle's matmul), but
/// on the small shapes of these models it runs faster: `gemm`'s own threading gains
/// little below a few hundred rows (docs/performance.md, "Seventh round").
#[allow(clippy::too_many_arguments)]
pub(crate) fn candle_gemm<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: &[T],
    (lcs, lrs): (usize, usize),
    rhs: &[T],
    (rcs, rrs): (usize, usize),
    accumulate: bool,
) {
    let threads = candle_core::utils::get_num_threads();
    let view = |off: usize, rs: usize, cs: usize| View { off, rs, cs };
    let one = T::from_f64(1.0);
    // Blocks of at least 16 rows or columns: the width of an AVX-512 register.
    let parts = threads.min(m.max(n) / 16).max(1);
    if parts == 1 {
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        gemm_with(
            (m, n, k),
            Dst::new(dst),
            view(0, n, 1),
            lhs,
            view(0, lrs, lcs),
            rhs,
            view(0, rrs, rcs),
            one,
            accumulate,
            parallelism,
        );
        return;
    }
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let chunk = len.div_ceil(parts).div_ceil(16) * 16;
    let dst = Dst::new(dst);
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|i| {
        let (at, size) = (i * chunk, chunk.min(len - i * chunk));
        // Disjoint blocks of `dst`: rows `at..at + size`, or those columns.
        let (dims, dv, lv, rv) = if by_rows {
            (
                (size, n, k),
                view(at * n, n, 1),
                view(at * lrs, lrs, lcs),
                view(0, rrs, rcs),
            )
        } else {
            (
                (m, size, k),
                view(at, n, 1),
                view(0, lrs, lcs),
                view(at * rcs, rrs, rcs),
            )
        };
        gemm_with(
            dims,
            dst,
            dv,
            lhs,
            lv,
            rhs,
            rv,
            one,
            accumulate,
            gemm::Parallelism::None,
        );
    });
}

/// `y = x · Wᵀ` `[M, out]` for a row-major `x [M, in]` and weight `W [out, in]`,
/// written into `y`: the forward product of the fused linear layers and of the
/// projected token loss.
pub(crate) fn times_wt_into<T: WithDType>(
    x: &[T],
    w: &[T],
    (rows, out, din): (usize, usize, usize),
    y: &mut [T],
) {
    // x [M, in] (column stride 1, row stride in) times Wᵀ (1, in).
    candle_gemm((rows, out, din), y, x, (1, din), w, (din, 1), false);
}

/// The input and weight gradients of `y = x · Wᵀ` for the upstream gradient `dy
/// [M, out]`: `dx = dy · W` `[M, in]` and `dW = dyᵀ · x` `[out, in]`, each written
/// in its own layout (each element of `dW` the sum candle's `xᵀ · dy` forms for
/// `dWᵀ`, so the same bits); with `add_dw`, `dW` is added into `dw` instead.
pub(crate) fn times_wt_grads<T: WithDType>(
    x: &[T],
    w: &[T],
    dy: &[T],
    (rows, out, din): (usize, usize, usize),
    dx: &mut [T],
    dw: &mut [T],
    add_dw: bool,
) {
    // dx [M, in] = dy [M, out] · W [out, in].
    candle_gemm((rows, din, out), dx, dy, (1, out), w, (1, din), false);
    // dW [out, in] = dyᵀ (column stride out, row stride 1) · x [M, in].
    candle_gemm((out, din, rows), dw, dy, (out, 1), x, (1, din), add_dw);
}

/// A strided `rows × cols` matrix inside a buffer: element `(i, j)` at
/// `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) off: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl View {
    pub(crate) fn check(&self, len: usize, rows: usize, cols: usize) {
        let last = self.off + (rows.max(1) - 1) * self.rs + (cols.max(1) - 1) * self.cs;
        assert!(
            rows == 0 || cols == 0 || last < len,
            "gemm view out of bounds"
        );
    }

    /// A row-major `[rows, n]` block.
    pub(crate) fn dense(n: usize) -> Self {
        Self {
            off: 0,
            rs: n,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[rows, n]` block.
    pub(crate) fn dense_t(n: usize) -> Self {
        Self {
            off: 0,
            rs: 1,
            cs: n,
        }
    }
}

/// A destination buffer for [`gemm_into`]: the backward of self-attention writes
/// the gradients of q, k and v into disjoint columns of one buffer, so it is held
/// as a pointer rather than as three overlapping `&mut` slices.
#[derive(Clone, Copy)]
pub(crate) struct Dst<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: a `Dst` is a pointer into one live `&mut` buffer (see `Dst::new`); the one
// caller that shares it between threads (`candle_gemm`) has each thread write a
// disjoint block of elements, and returns only after every thread is done.
unsafe impl<T: Send> Send for Dst<T> {}
unsafe impl<T: Send> Sync for Dst<T> {}

impl<T> Dst<T> {
    pub(crate) fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }
}

/// `dst = beta · lhs · rhs` (`m × k` times `k × n`) on strided views, on this
/// thread (the callers parallelize over batch rows); see [`gemm_with`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: WithDType>(
    dims: (usize, usize, usize),
    dst: Dst<T>,
    dv: View,
    lhs: &[T],
    lv: View,
    rhs: &[T],
    rv: View,
    beta: T,
) {
    gemm_with(
        dims,
        dst,
        dv,
        lhs,
        lv,
        rhs,
        rv,
        beta,
        false,
        gemm::Parallelism::None,
    )
}

/// `dst = beta · lhs · rhs` (`m × k` times `k × n`) on strided views, or with
/// `accumulate` `dst += beta · lhs · rhs`: the one place that calls `gemm`.
///
/// Accumulating, `gemm` adds its finished sum into `dst` with one rounding
/// (`fma(beta, Σ, dst)`), the addition autograd would make, as long as `k` fits in
/// one of `gemm`'s depth blocks (a few hundred; the callers' `k` is a batch of rows
/// or one query).
///
/// `dst` must come from a live `&mut` buffer (through [`Dst::new`]) that no other
/// reference reads or writes while this runs, and it must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_with<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: Dst<T>,
    dv: View,
    lhs: &[T],
    lv: View,
    rhs: &[T],
    rv: View,
    beta: T,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    dv.check(dst.len, m, n);
    lv.check(lhs.len(), m, k);
    rv.check(rhs.len(), k, n);
    // SAFETY: every view was checked to lie inside its buffer; `dst` is exclusively
    // ours for the call (above) and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr.add(dv.off),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            lhs.as_ptr().add(lv.off),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr().add(rv.off),
            rv.cs as isize,
            rv.rs as isize,
            T::from_f64(if accumulate { 1.0 } else { 0.0 }),
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

//! The CPU loops under biodistill's fused ops (`src/model/fused.rs`, `src/train/adamw.rs`):
//! plain functions over f32 slices, no tensors, no allocation per call beyond a row's scratch.
//!
//! Why a crate of their own: biodistill's own code builds at `opt-level = 1` in the dev
//! profile (every `make` target uses it; fast rebuilds), where these loops neither inline
//! nor vectorize, and a fused loop at `opt-level = 1` was slower than the dozen vectorized
//! candle passes it replaced. Cargo.toml builds this crate at `opt-level = 3` in every profile.
//!
//! Reductions keep eight partial sums so they vectorize; results are deterministic (fixed
//! order), but differ from a left-to-right sum in the last bits.

/// Σ x.
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ a·b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ x², in f64 across chunks (gradient norms over millions of elements).
pub fn sum_squares(x: &[f32]) -> f64 {
    x.chunks(4096).map(|c| f64::from(dot(c, c))).sum()
}

/// A linear layer over rows: `y = x · wᵀ + b`, `x` of rows of `w.len() / b.len()` inputs, `w`
/// of `b.len()` rows (PyTorch's and candle's `(out, in)` layout), `y` of rows of `b.len()`.
/// The bias is written first and the product accumulated onto it by gemm: one pass over `y`
/// fewer than a product followed by a broadcast addition. `threads` > 1 splits the product.
pub fn linear(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], threads: usize) {
    let (n_out, n_in) = (b.len(), w.len() / b.len().max(1));
    assert!(w.len() == n_out * n_in && n_in > 0 && x.len() % n_in == 0);
    let rows = x.len() / n_in;
    assert_eq!(y.len(), rows * n_out);
    for row in y.chunks_exact_mut(n_out) {
        row.copy_from_slice(b);
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above bound every index gemm derives from these sizes and strides:
    // y is rows × n_out (row-major), x rows × n_in, and wᵀ reads w's rows as columns.
    unsafe {
        gemm::gemm(
            rows,
            n_out,
            n_in,
            y.as_mut_ptr(),
            1,
            n_out as isize,
            true,
            x.as_ptr(),
            1,
            n_in as isize,
            w.as_ptr(),
            n_in as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// LayerNorm over rows of `w.len()` elements: `y = (x − mean) / √(var + eps) · w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let h = w.len();
    assert!(b.len() == h && x.len() == y.len() && x.len() % h == 0);
    for (x, y) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let mean = sum(x) / h as f32;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x - mean;
        }
        let rstd = 1.0 / (dot(y, y) / h as f32 + eps).sqrt();
        for ((y, &w), &b) in y.iter_mut().zip(w).zip(b) {
            *y = *y * rstd * w + b;
        }
    }
}

/// Gradients of [`layer_norm`] given `g = ∂L/∂y`: `dx` per element, `dw` and `db` summed over
/// rows (overwritten). Mean and variance are recomputed from `x` (cheaper than storing them).
pub fn layer_norm_backward(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
    let h = w.len();
    assert!(x.len() == g.len() && x.len() == dx.len() && x.len() % h == 0 && dw.len() == h && db.len() == h);
    dw.fill(0.0);
    db.fill(0.0);
    let (mut xhat, mut dxhat) = (vec![0f32; h], vec![0f32; h]);
    for ((x, g), dx) in x.chunks_exact(h).zip(g.chunks_exact(h)).zip(dx.chunks_exact_mut(h)) {
        let mean = sum(x) / h as f32;
        for (c, &x) in xhat.iter_mut().zip(x) {
            *c = x - mean;
        }
        let rstd = 1.0 / (dot(&xhat, &xhat) / h as f32 + eps).sqrt();
        for c in xhat.iter_mut() {
            *c *= rstd;
        }
        for (((d, &g), &w), db) in dxhat.iter_mut().zip(g).zip(w).zip(db.iter_mut()) {
            *d = g * w;
            *db += g;
        }
        for ((dw, &g), &c) in dw.iter_mut().zip(g).zip(&xhat) {
            *dw += g * c;
        }
        let mean_d = sum(&dxhat) / h as f32;
        let mean_dc = dot(&dxhat, &xhat) / h as f32;
        for ((dx, &d), &c) in dx.iter_mut().zip(&dxhat).zip(&xhat) {
            *dx = rstd * (d - mean_d - c * mean_dc);
        }
    }
}

/// Softmax over rows of `cols` elements.
pub fn softmax(x: &[f32], cols: usize, y: &mut [f32]) {
    assert!(x.len() == y.len() && x.len() % cols == 0);
    for (x, y) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - max).exp();
        }
        let inv = 1.0 / sum(y);
        for y in y.iter_mut() {
            *y *= inv;
        }
    }
}

/// Gradient of [`softmax`] from its output `y` and `g = ∂L/∂y`: `dx = y · (g − Σ g·y)` per row.
pub fn softmax_backward(y: &[f32], g: &[f32], cols: usize, dx: &mut [f32]) {
    assert!(y.len() == g.len() && y.len() == dx.len() && y.len() % cols == 0);
    for ((y, g), dx) in y.chunks_exact(cols).zip(g.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        let s = dot(y, g);
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
            *dx = y * (g - s);
        }
    }
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// erf(x) as `x · P(x²) / Q(x²)`, |error| < 4e-7 in f32 over the whole line (checked against
/// `src/model/fused.rs`'s tests). Coefficients fitted by least squares to erf on [0, 4]; past ±4 erf is
/// ±1 in f32, so the input is clamped there. No branch and no call, so loops over it
/// vectorize, where libm's `erff` runs one element at a time (5% of a training step).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 6] = [1.128_377, 0.220_200_45, 0.056_754_414, 0.005_098_892_4, 3.246_461e-4, 1.925_802e-6];
    const Q: [f32; 6] = [1.0, 0.528_462, 0.126_505_21, 0.017_577_27, 0.001_507_268_3, 3.893_564_6e-5];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let horner = |c: &[f32; 6]| c.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    x * horner(&P) / horner(&Q)
}

/// GELU, erf form: `y = x · Φ(x)`, Φ the standard normal CDF (as candle's `gelu_erf`).
pub fn gelu_erf(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Gradient of [`gelu_erf`] from its input `x`, its output `y` and `g = ∂L/∂y`:
/// `dx = g · (Φ(x) + x·φ(x))`, with Φ(x) = y / x read back from the output (no second erf;
/// near 0, where that division loses precision, Φ(x) ≈ ½ + x·φ(0)).
pub fn gelu_erf_backward(x: &[f32], y: &[f32], g: &[f32], dx: &mut [f32]) {
    assert!(x.len() == y.len() && x.len() == g.len() && x.len() == dx.len());
    for (((dx, &x), &y), &g) in dx.iter_mut().zip(x).zip(y).zip(g) {
        let pdf = FRAC_1_SQRT_2PI * (-0.5 * x * x).exp();
        let cdf = if x.abs() > 1e-3 { y / x } else { 0.5 + x * FRAC_1_SQRT_2PI };
        *dx = g * (cdf + x * pdf);
    }
}

/// AdamW's constants for one step (decoupled weight decay, bias-corrected moments).
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub lr: f32,
    /// `1 − lr × weight_decay`.
    pub decay: f32,
    pub eps: f32,
    /// Bias corrections `1 / (1 − βᵗ)`.
    pub scale_first: f32,
    pub scale_second: f32,
    /// Multiplies every gradient first (clipping).
    pub grad_scale: f32,
}

/// One AdamW update of weights `w` and moments `m`, `v` from gradient `g`, in place.
pub fn adamw(k: &AdamW, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    assert!(w.len() == g.len() && w.len() == m.len() && w.len() == v.len());
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.grad_scale;
        *m = k.beta1 * *m + (1.0 - k.beta1) * g;
        *v = k.beta2 * *v + (1.0 - k.beta2) * (g * g);
        let step = (*m * k.scale_first) / ((*v * k.scale_second).sqrt() + k.eps);
        *w = *w * k.decay - k.lr * step;
    }
}


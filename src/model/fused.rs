//! LayerNorm, softmax and GELU for training: one pass forward and one pass backward each; and
//! linear layers as one node, for training and inference.
//!
//! candle differentiates these as compositions of element-wise tensor ops (its fused CPU
//! kernels have no backward, see [`super::encoder`]): LayerNorm's gradient alone is about a
//! dozen passes, each allocating a buffer the size of the activations. Here each is a custom
//! op whose backward is one more custom op; the loops are in `biodistill-kernels` (built at
//! `opt-level = 3`). Same values and gradients as the compositions within float rounding
//! (tested below).
//!
//! A linear layer in candle is five autograd nodes (flatten, transpose, product, bias
//! broadcast, unflatten), and candle's backward accumulates every node's gradient into a fresh
//! zero tensor: four activation-sized copies per layer besides the products. [`linear`] is one
//! node whose backward is the two products and a column sum.

use biodistill_kernels as kernels;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::error::Result;

/// LayerNorm over the last dimension (`w` and `b` of its size), differentiable.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(w, b, LayerNorm { eps })?)
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

/// GELU (erf form, as candle's `gelu_erf`), differentiable.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Gelu)?)
}

/// `x · wᵀ + b` over the last dimension of `x` (`w` is `(out, in)`, `b` is `(out)`),
/// differentiable; any leading dimensions.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(w, b, Linear)?)
}

/// The contiguous f32 elements of an op's input.
fn f32s<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: input is not contiguous"),
        _ => candle_core::bail!("{op}: f32 tensors only"),
    }
}

fn last_dim(layout: &Layout, op: &str) -> candle_core::Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("{op}: needs a non-empty last dimension"),
    }
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, b) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        if w.len() != last_dim(l1, name)? || b.len() != w.len() {
            candle_core::bail!("{name}: weight {} and bias {} for rows of {}", w.len(), b.len(), last_dim(l1, name)?)
        }
        let mut y = vec![0f32; x.len()];
        kernels::layer_norm(x, w, b, self.eps, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op computes all three: rows of dx, then dw, then db.
        let rows = x.elem_count() / w.elem_count();
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(dx), Some(packed.get(rows)?), Some(packed.get(rows + 1)?)))
    }
}

/// `(x, w, ∂L/∂y)` -> `(rows + 2, hidden)`: dx, then dw, then db.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, g) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, rest) = out.split_at_mut(rows * h);
        let (dw, db) = rest.split_at_mut(h);
        kernels::layer_norm_backward(x, w, g, self.eps, dx, dw, db);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, b) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let n_in = last_dim(l1, name)?;
        if l2.dims() != [b.len(), n_in] || l3.dims().len() != 1 {
            candle_core::bail!("{name}: weight {:?} and bias {:?} for inputs of {n_in}", l2.dims(), l3.dims())
        }
        let mut y = vec![0f32; x.len() / n_in * b.len()];
        kernels::linear(x, w, b, &mut y, candle_core::utils::get_num_threads());
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("checked non-empty") = b.len();
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, n_in) = w.dims2()?;
        let g = grad.contiguous()?.reshape(((), out))?;
        let x2 = x.detach().reshape(((), n_in))?;
        let dx = g.matmul(&w.detach())?.reshape(x.shape())?;
        let dw = g.t()?.matmul(&x2)?;
        // Column sums as a product with a row of ones: gemm's speed, no strided reduction.
        let ones = Tensor::ones((1, g.dim(0)?), g.dtype(), g.device())?;
        let db = ones.matmul(&g)?.reshape(out)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        kernels::softmax(x, last_dim(layout, self.name())?, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `(y, ∂L/∂y)` -> `∂L/∂x` of a softmax.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let mut dx = vec![0f32; y.len()];
        kernels::softmax_backward(y, g, last_dim(l1, self.name())?, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        kernels::gelu_erf(x, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(res, &grad.contiguous()?, &GeluGrad)?))
    }
}

/// `(x, y, ∂L/∂y)` -> `∂L/∂x` of GELU.
struct GeluGrad;

impl CustomOp3 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, y, g) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let mut dx = vec![0f32; x.len()];
        kernels::gelu_erf_backward(x, y, g, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(shape: &[usize], scale: f32, rng: &mut StdRng) -> Var {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values and gradients of `ours` and `reference` at `inputs`, under a loss Σ y·r with a
    /// random r (so every output element's gradient differs).
    fn assert_same(inputs: &[Var], ours: impl Fn(&[Var]) -> Tensor, reference: impl Fn(&[Var]) -> Tensor, tol: f32) {
        let (a, b) = (ours(inputs), reference(inputs));
        assert_eq!(a.dims(), b.dims());
        assert!(max_diff(&a, &b) < tol, "values differ by {}", max_diff(&a, &b));
        let r = random(a.dims(), 1.0, &mut StdRng::seed_from_u64(9));
        let loss = |y: &Tensor| (y * r.as_tensor()).unwrap().sum_all().unwrap();
        let (ga, gb) = (loss(&a).backward().unwrap(), loss(&b).backward().unwrap());
        for (i, input) in inputs.iter().enumerate() {
            let (x, y) = (ga.get(input).unwrap(), gb.get(input).unwrap());
            assert!(max_diff(x, y) < tol, "gradient of input {i} differs by {}", max_diff(x, y));
        }
    }

    #[test]
    fn layer_norm_matches_candles_composition() {
        let mut rng = StdRng::seed_from_u64(1);
        // 13 wide: not a multiple of the kernels' 8 lanes.
        for h in [13, 32] {
            let inputs = [random(&[2, 3, h], 3.0, &mut rng), random(&[h], 1.0, &mut rng), random(&[h], 1.0, &mut rng)];
            assert_same(
                &inputs,
                |v| layer_norm(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), 1e-12).unwrap(),
                |v| {
                    candle_nn::ops::layer_norm_slow(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), 1e-12)
                        .unwrap()
                },
                1e-4,
            );
        }
    }

    #[test]
    fn softmax_matches_candles_composition_with_masked_keys() {
        let mut rng = StdRng::seed_from_u64(2);
        let scores = random(&[2, 2, 5, 11], 4.0, &mut rng);
        // Padding as the encoder masks it: a large negative bias on the last 3 keys of batch row 1.
        let bias: Vec<f32> = (0..2 * 11).map(|i| if i >= 11 + 8 { -1e9 } else { 0.0 }).collect();
        let bias = Tensor::from_vec(bias, (2, 1, 1, 11), &Device::Cpu).unwrap();
        assert_same(
            &[scores],
            |v| softmax_last_dim(&v[0].as_tensor().broadcast_add(&bias).unwrap()).unwrap(),
            |v| candle_nn::ops::softmax(&v[0].as_tensor().broadcast_add(&bias).unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn gelu_matches_candles_including_near_zero() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut data: Vec<f32> = (0..60).map(|_| rng.random_range(-5.0..5.0)).collect();
        data.extend([0.0, 1e-4, -1e-4, 2e-3, -2e-3, 1e-7]);
        let x = Var::from_tensor(&Tensor::from_vec(data, (6, 11), &Device::Cpu).unwrap()).unwrap();
        assert_same(&[x], |v| gelu_erf(v[0].as_tensor()).unwrap(), |v| v[0].as_tensor().gelu_erf().unwrap(), 1e-5);
    }

    #[test]
    fn linear_matches_candles_linear_with_leading_dimensions() {
        let mut rng = StdRng::seed_from_u64(5);
        // 13 inputs and 7 outputs: not multiples of gemm's register blocks.
        for (shape, out) in [(vec![2, 3, 13], 7), (vec![5, 32], 48)] {
            let n_in = *shape.last().unwrap();
            let inputs =
                [random(&shape, 2.0, &mut rng), random(&[out, n_in], 1.0, &mut rng), random(&[out], 1.0, &mut rng)];
            assert_same(
                &inputs,
                |v| linear(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor()).unwrap(),
                |v| {
                    let layer = candle_nn::Linear::new(v[1].as_tensor().clone(), Some(v[2].as_tensor().clone()));
                    candle_core::Module::forward(&layer, v[0].as_tensor()).unwrap()
                },
                1e-4,
            );
        }
    }

    #[test]
    fn linear_refuses_a_weight_of_the_wrong_shape() {
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = linear(&x, &w, &b).unwrap_err().to_string();
        assert!(err.contains("fused-linear") && err.contains("[3, 5]"), "{err}");
    }

    #[test]
    fn the_kernels_erf_is_within_4e_7_of_erf_everywhere() {
        let worst = (-60_000..=60_000)
            .map(|i| i as f32 * 1e-4)
            .chain([f32::MIN_POSITIVE, 1e-30, -1e-12, 10.0, -25.0, f32::MAX, f32::MIN])
            .map(|x| (kernels::erf(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs())
            .fold(0f64, f64::max);
        assert!(worst < 4e-7, "worst |erf - erf_f64| = {worst}");
        assert!(kernels::erf(f32::NAN).is_nan());
    }

    #[test]
    fn transposed_inputs_are_made_contiguous_first() {
        let mut rng = StdRng::seed_from_u64(4);
        let x = random(&[6, 4], 2.0, &mut rng);
        assert_same(
            &[x],
            |v| softmax_last_dim(&v[0].as_tensor().t().unwrap()).unwrap(),
            |v| candle_nn::ops::softmax(&v[0].as_tensor().t().unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
    }
}

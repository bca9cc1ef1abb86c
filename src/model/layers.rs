//! The layers the encoder and the student's heads share: linear layers, seeded dropout and
//! mean-pooling over an anchor's word pieces.
//!
//! A module of their own so that the heads ([`super::student`], [`super::pairwise`]) and the
//! encoder use them without importing each other.

use std::ops::Range;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand::Rng;
use rand::rngs::StdRng;

use super::fused;
use crate::error::{Error, Result};

/// A linear layer with a bias, applied over the last dimension as one autograd node
/// ([`fused::linear`]) with any leading dimensions. Variables `weight` `(out, in)` and `bias`,
/// initialised as candle's `linear` does.
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn load(input: usize, output: usize, vb: VarBuilder) -> Result<Self> {
        let layer = candle_nn::linear(input, output, vb)?;
        let bias = layer.bias().cloned().ok_or_else(|| Error::Internal("candle's linear has no bias".into()))?;
        Ok(Self::new(layer.weight().clone(), bias))
    }

    /// A layer of these weights (not variables: for weights derived from loaded ones).
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        fused::linear(xs, &self.weight, &self.bias)
    }
}

/// Inverted dropout with a seeded generator; identity when `rng` is `None` (evaluation).
pub fn dropout(xs: &Tensor, p: f64, rng: Option<&mut StdRng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(xs.clone()) };
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..xs.elem_count()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Ok((xs * Tensor::from_vec(mask, xs.dims(), xs.device())?)?)
}

/// Mean of each anchor's piece vectors. `hidden` is `(batch, tokens, hidden)`; anchor `a` lives
/// on row `rows[a]` over padded positions `pieces[a]`. Returns the anchors' rows of `hidden`
/// (`(anchors, tokens, hidden)`) and the pooled vectors (`(anchors, hidden)`).
pub fn mean_pool(hidden: &Tensor, rows: &[u32], pieces: &[Range<usize>]) -> Result<(Tensor, Tensor)> {
    let (_, tokens, _) = hidden.dims3()?;
    let device = hidden.device();
    let mut weights = vec![0f32; rows.len() * tokens];
    for (a, range) in pieces.iter().enumerate() {
        if range.is_empty() || range.end > tokens {
            return Err(Error::Internal(format!("anchor pieces {range:?} outside 0..{tokens}")));
        }
        weights[a * tokens + range.start..a * tokens + range.end].fill(1.0 / range.len() as f32);
    }
    let selected = hidden.index_select(&Tensor::from_slice(rows, rows.len(), device)?, 0)?;
    let weights = Tensor::from_vec(weights, (rows.len(), 1, tokens), device)?;
    let pooled = weights.matmul(&selected)?.squeeze(1)?;
    Ok((selected, pooled))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn mean_pooling_uses_exactly_the_anchor_pieces() {
        // hidden[b, t, :] = 100 b + t, so a mean over positions is easy to check by hand.
        let values: Vec<f32> = (0..2).flat_map(|b| (0..6).flat_map(move |t| [100. * b as f32 + t as f32; 3])).collect();
        let hidden = Tensor::from_vec(values, (2, 6, 3), &Device::Cpu).unwrap();
        let (selected, pooled) = mean_pool(&hidden, &[0, 1, 0], &[1..3, 2..3, 4..6]).unwrap();
        assert_eq!(selected.dims(), &[3, 6, 3]);
        let pooled: Vec<Vec<f32>> = pooled.to_vec2().unwrap();
        assert_eq!(pooled, vec![vec![1.5; 3], vec![102.0; 3], vec![4.5; 3]]);
        assert!(
            mean_pool(&hidden, &[0], std::slice::from_ref(&(5..7))).is_err(),
            "out-of-range pieces are a bug, not a panic"
        );
    }
}

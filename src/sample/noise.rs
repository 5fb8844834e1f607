//! Where samplers get their Gaussian noise: a seeded generator (portable across devices and
//! platforms, since it draws on the host) or noise recorded elsewhere, replayed for parity.

use std::collections::VecDeque;

use candle_core::{Device, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of unit-normal noise tensors.
pub trait NoiseSource {
    fn sample(&mut self, shape: &Shape, device: &Device) -> Result<Tensor>;
}

/// Unit-normal noise from a seeded ChaCha8 stream: the same seed gives the same noise on every
/// machine and device.
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn sample(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(v, shape, device)
    }
}

/// Replays given tensors in order (for example noise recorded by the Python reference).
pub struct RecordedNoise {
    queue: VecDeque<Tensor>,
}

impl RecordedNoise {
    pub fn new(tensors: impl IntoIterator<Item = Tensor>) -> Self {
        Self {
            queue: tensors.into_iter().collect(),
        }
    }
}

impl NoiseSource for RecordedNoise {
    fn sample(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| candle_core::Error::Msg("recorded noise exhausted".into()))?;
        if t.shape() != shape {
            candle_core::bail!(
                "recorded noise has shape {:?}, wanted {:?}",
                t.dims(),
                shape.dims()
            )
        }
        t.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_unit_variance() -> Result<()> {
        let shape = Shape::from((4, 64, 64));
        let a = SeededNoise::new(7).sample(&shape, &Device::Cpu)?;
        let b = SeededNoise::new(7).sample(&shape, &Device::Cpu)?;
        let c = SeededNoise::new(8).sample(&shape, &Device::Cpu)?;
        assert_eq!(a.to_vec3::<f32>()?, b.to_vec3::<f32>()?);
        assert_ne!(a.to_vec3::<f32>()?, c.to_vec3::<f32>()?);
        let var: f32 = a.sqr()?.mean_all()?.to_scalar()?;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        Ok(())
    }
}

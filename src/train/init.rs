//! Seeded parameter creation for the trainable network: a candle-nn `VarBuilder` backend that keeps
//! every parameter in a `VarMap` (where the optimiser trains it and `export` reads it back) and
//! draws the ones the map lacks from a seeded generator. candle's CPU device cannot be seeded, and
//! a training run must be reproducible from its seed.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};

/// A `VarMap` front that reuses the parameters already in the map (resuming, fine-tuning) and
/// creates the missing ones deterministically from the seed, in the order they are asked for.
pub struct SeededVarMap<'a> {
    map: &'a VarMap,
    state: Mutex<u64>,
}

impl<'a> SeededVarMap<'a> {
    pub fn new(map: &'a VarMap, seed: u64) -> Self {
        Self {
            map,
            // Mixed so that small seeds (0, 1, 2) still start far apart in the sequence.
            state: Mutex::new(seed ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    /// `count` uniform numbers in [0, 1) (splitmix64; 53 significant bits).
    fn uniform(&self, count: usize) -> candle_core::Result<Vec<f64>> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("seeded initialiser lock poisoned".into()))?;
        Ok((0..count)
            .map(|_| {
                *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect())
    }

    fn normal(&self, count: usize, mean: f64, stdev: f64) -> candle_core::Result<Vec<f64>> {
        // Box-Muller on pairs; 1 - u keeps the logarithm's argument in (0, 1].
        let u = self.uniform(2 * count)?;
        Ok(u.chunks_exact(2)
            .map(|p| {
                let r = (-2.0 * (1.0 - p[0]).ln()).sqrt();
                mean + stdev * r * (std::f64::consts::TAU * p[1]).cos()
            })
            .collect())
    }

    fn draw(&self, shape: &Shape, init: Init) -> candle_core::Result<Tensor> {
        let count = shape.elem_count();
        let data = match init {
            Init::Const(v) => vec![v; count],
            Init::Uniform { lo, up } => self
                .uniform(count)?
                .into_iter()
                .map(|u| lo + (up - lo) * u)
                .collect(),
            Init::Randn { mean, stdev } => self.normal(count, mean, stdev)?,
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let stdev = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => self.normal(count, 0.0, stdev)?,
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * stdev;
                        self.uniform(count)?
                            .into_iter()
                            .map(|u| bound * (2.0 * u - 1.0))
                            .collect()
                    }
                }
            }
        };
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

impl SimpleBackend for SeededVarMap<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "parameter `{name}` is {:?} in the variable map, the network needs {shape:?}",
                    var.shape()
                );
            }
            if var.dtype() != dtype {
                // Converting would cut the link between the map and the network's parameter.
                candle_core::bail!(
                    "parameter `{name}` is {:?} in the variable map, the network runs in {dtype:?}",
                    var.dtype()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let t = self
            .draw(&shape, init)?
            .to_dtype(dtype)?
            .to_device(device)?;
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let vars = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        match vars.get(name) {
            Some(var) => var.as_tensor().to_dtype(dtype)?.to_device(device),
            None => candle_core::bail!("parameter `{name}` is not in the variable map"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|vars| vars.contains_key(name))
            .unwrap_or(false)
    }
}

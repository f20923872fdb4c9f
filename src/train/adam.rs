//! Adam with decoupled weight decay (AdamW), written out so that its moments can be saved in a
//! checkpoint and a run resumed exactly (candle-nn's optimiser keeps them private).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamConfig {
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One trained variable and its first and second moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot>,
    /// Steps taken (for bias correction).
    step: u64,
}

impl Adam {
    /// `vars` by name; the moments start at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.as_tensor().zeros_like()?;
                let v = var.as_tensor().zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One update from the gradients of the loss; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let lr_corrected = c.lr * (1.0 - c.beta2.powi(t)).sqrt() / (1.0 - c.beta1.powi(t));
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            s.m = ((&s.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = (&s.m / (s.v.sqrt()? + c.eps)?)?;
            let decayed = (s.var.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
            s.var.set(&(decayed - (update * lr_corrected)?)?)?;
        }
        Ok(())
    }

    /// The moments by `adam_m/<name>` and `adam_v/<name>`, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            out.insert(format!("adam_m/{}", s.name), s.m.clone());
            out.insert(format!("adam_v/{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores moments saved by [`Adam::state`] and the step count; every slot must be present
    /// with its variable's shape.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>, step: u64) -> Result<(), String> {
        for s in &mut self.slots {
            for (key, slot) in [("adam_m", &mut s.m), ("adam_v", &mut s.v)] {
                let name = format!("{key}/{}", s.name);
                let t = state
                    .get(&name)
                    .ok_or_else(|| format!("checkpoint has no optimiser state {name}"))?;
                if t.dims() != slot.dims() {
                    return Err(format!(
                        "optimiser state {name} has shape {:?}, the network's is {:?}",
                        t.dims(),
                        slot.dims()
                    ));
                }
                *slot = t
                    .to_device(slot.device())
                    .and_then(|t| t.to_dtype(slot.dtype()))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One step on f(w) = sum(w^2) matches Adam's closed form: the first step moves each weight
    /// by lr * sign(grad) (bias-corrected m/sqrt(v) = g/|g|), plus decoupled decay.
    #[test]
    fn first_step_moves_by_lr_against_the_gradient() {
        let w = Var::from_vec(vec![1.0f32, -2.0, 0.5], 3, &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![("w".into(), w.clone())], AdamConfig::new(0.1, 0.01)).unwrap();
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (g, w0) in got.iter().zip([1.0f32, -2.0, 0.5]) {
            let expect = w0 * (1.0 - 0.1 * 0.01) - 0.1 * w0.signum();
            assert!((g - expect).abs() < 1e-5, "{g} vs {expect}");
        }
        let state = opt.state();
        let mut other =
            Adam::new(vec![("w".into(), w.clone())], AdamConfig::new(0.1, 0.01)).unwrap();
        other.restore(&state, 1).unwrap();
        assert_eq!(other.steps(), 1);
        assert!(other
            .restore(&BTreeMap::new(), 1)
            .unwrap_err()
            .contains("adam_m/w"));
    }
}

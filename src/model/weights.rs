//! A named set of f32 tensors on the CPU, read once from a bundle or a PyTorch state dict. The
//! network loader takes tensors out of it by name and shape; whatever it asks for that is absent
//! or mis-shaped, and whatever is left over afterwards, becomes an error naming the tensor.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

pub struct WeightStore {
    origin: PathBuf,
    tensors: RefCell<BTreeMap<String, Tensor>>,
    taken: RefCell<BTreeSet<String>>,
    /// When set, a tensor asked for but absent is made up (deterministic, He-style scale) instead
    /// of being an error: an untrained network of any architecture, for benchmarks, tests and
    /// training from scratch, without a second list of parameter names.
    synthetic: Option<RefCell<u64>>,
}

impl WeightStore {
    /// `origin` is the file the tensors came from, named in every error.
    pub fn new(origin: impl AsRef<Path>, tensors: BTreeMap<String, Tensor>) -> Result<Self> {
        let mut as_f32 = BTreeMap::new();
        for (name, t) in tensors {
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            as_f32.insert(name, t);
        }
        Ok(Self {
            origin: origin.as_ref().to_path_buf(),
            tensors: RefCell::new(as_f32),
            taken: RefCell::new(BTreeSet::new()),
            synthetic: None,
        })
    }

    /// An empty store that makes up every tensor the loader asks for, deterministically from `seed`.
    pub fn synthetic(seed: u64) -> Self {
        Self {
            origin: PathBuf::from(format!("<synthetic weights, seed {seed}>")),
            tensors: RefCell::new(BTreeMap::new()),
            taken: RefCell::new(BTreeSet::new()),
            synthetic: Some(RefCell::new(seed ^ 0x5DEE_CE66_D1CE_4E5B)),
        }
    }

    fn make_up(&self, state: &RefCell<u64>, name: &str, shape: &[usize]) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let constant = |v: f32| Tensor::full(v, shape, &Device::Cpu);
        let t = if name.ends_with("running_var") || name.ends_with("bn.weight") {
            constant(1.0)?
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            constant(0.0)?
        } else {
            // Weights: uniform with variance 2/fan_in (He), fan_in = all but the first dim.
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let bound = (6.0 / fan_in as f64).sqrt() as f32;
            let mut s = state.borrow_mut();
            let data: Vec<f32> = (0..count)
                .map(|_| {
                    *s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((*s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
                })
                .collect();
            Tensor::from_vec(data, shape, &Device::Cpu)?
        };
        Ok(t)
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.borrow().contains_key(name)
    }

    /// Shape of a tensor, if present, without taking it.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.borrow().get(name).map(|t| t.dims().to_vec())
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn take(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let existing = self.tensors.borrow().get(name).cloned();
        let t = match (existing, &self.synthetic) {
            (Some(t), _) => t,
            (None, Some(state)) => {
                let t = self.make_up(state, name, shape)?;
                self.tensors
                    .borrow_mut()
                    .insert(name.to_string(), t.clone());
                t
            }
            (None, None) => {
                return Err(ModelError::MissingTensor {
                    file: self.origin.clone(),
                    name: name.to_string(),
                    expected: shape.to_vec(),
                })
            }
        };
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.origin.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        self.taken.borrow_mut().insert(name.to_string());
        Ok(t.clone())
    }

    /// Fails naming every tensor the loader did not ask for.
    pub fn ensure_all_taken(&self) -> Result<()> {
        let taken = self.taken.borrow();
        let left: Vec<String> = self
            .tensors
            .borrow()
            .keys()
            .filter(|k| !taken.contains(*k))
            .cloned()
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnexpectedTensors {
                file: self.origin.clone(),
                names: left,
            })
        }
    }

    /// All tensors (for a synthetic store, those made so far), for writing a bundle.
    pub fn snapshot(&self) -> BTreeMap<String, Tensor> {
        self.tensors.borrow().clone()
    }
}

//! Task heads: one linear output per task on the head input (bottleneck or pooled features), and
//! what each output means: a regression in a unit with an affine output scaling, or a binary
//! logit reported as a probability. Heads are stored as `heads.<task>.weight` `[1, D]` and
//! `heads.<task>.bias` `[1]`.

use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::conv::FoldedLinear;
use super::error::{ModelError, Result};
use super::weights::WeightStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// `output = raw * scale + offset`, in `unit`.
    Regression,
    /// `output = sigmoid(raw)`: the probability of the positive class.
    Binary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Lower-case identifier: `ef`, `esv`, `edv`, `pacemaker`, ...
    pub name: String,
    pub kind: TaskKind,
    /// Unit of a regression output ("%", "mL", "years", "kg", "cm"); for a binary task, what the
    /// probability is of.
    pub unit: String,
    /// Regression output scaling; 1 for binary tasks.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// One line a clinician can read.
    pub description: String,
}

fn one() -> f64 {
    1.0
}

impl TaskSpec {
    /// EchoNet's tasks with their units, as named in the paper; `None` for other names.
    pub fn echonet_default(name: &str) -> Option<Self> {
        let (kind, unit, description) = match name {
            "ef" => (
                TaskKind::Regression,
                "%",
                "left-ventricular ejection fraction",
            ),
            "esv" => (
                TaskKind::Regression,
                "mL",
                "left-ventricular end-systolic volume",
            ),
            "edv" => (
                TaskKind::Regression,
                "mL",
                "left-ventricular end-diastolic volume",
            ),
            "pacemaker" => (
                TaskKind::Binary,
                "probability",
                "pacemaker or defibrillator lead present",
            ),
            "la_dilation" => (
                TaskKind::Binary,
                "probability",
                "severe left-atrial dilation",
            ),
            "lv_wall_normal" => (
                TaskKind::Binary,
                "probability",
                "normal left-ventricular wall thickness",
            ),
            "view_a4c" => (
                TaskKind::Binary,
                "probability",
                "the frame is an apical four-chamber view",
            ),
            "age" => (TaskKind::Regression, "years", "patient age"),
            "sex" => (TaskKind::Binary, "probability", "patient sex is male"),
            "weight" => (TaskKind::Regression, "kg", "patient weight"),
            "height" => (TaskKind::Regression, "cm", "patient height"),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            kind,
            unit: unit.to_string(),
            scale: 1.0,
            offset: 0.0,
            description: description.to_string(),
        })
    }

    /// Checks the fields a reader relies on; `Err` holds a sentence naming the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let valid_name = self
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(format!(
                "task name {:?} must be lower-case letters, digits and '_', starting with a letter",
                self.name
            ));
        }
        if !(self.scale.is_finite() && self.scale != 0.0 && self.offset.is_finite()) {
            return Err(format!(
                "task {}: scale must be finite and non-zero and offset finite (got {} and {})",
                self.name, self.scale, self.offset
            ));
        }
        if self.kind == TaskKind::Binary && (self.scale != 1.0 || self.offset != 0.0) {
            return Err(format!(
                "task {}: a binary task reports sigmoid(logit); scale/offset must be 1/0",
                self.name
            ));
        }
        Ok(())
    }

    /// The physiologically possible range of a reported value, where one is known (EchoNet's
    /// tasks and probabilities). A window mean outside it is never published as a number.
    pub fn plausible_range(&self) -> Option<(f64, f64)> {
        if self.kind == TaskKind::Binary {
            return Some((0.0, 1.0));
        }
        match self.name.as_str() {
            "ef" => Some((0.0, 100.0)),
            "esv" | "edv" => Some((0.0, 1000.0)),
            "age" => Some((0.0, 130.0)),
            "weight" => Some((0.0, 500.0)),
            "height" => Some((0.0, 260.0)),
            _ => None,
        }
    }

    pub fn weight_name(&self) -> String {
        format!("heads.{}.weight", self.name)
    }

    pub fn bias_name(&self) -> String {
        format!("heads.{}.bias", self.name)
    }

    /// The reported value for a raw head output.
    pub fn finish(&self, raw: f64) -> f64 {
        match self.kind {
            TaskKind::Regression => raw * self.scale + self.offset,
            TaskKind::Binary => 1.0 / (1.0 + (-raw).exp()),
        }
    }
}

/// All task heads stacked into one `[D, T]` matrix.
#[derive(Debug)]
pub struct Heads {
    tasks: Vec<TaskSpec>,
    linear: Option<FoldedLinear>,
}

impl Heads {
    pub fn load(
        tasks: &[TaskSpec],
        input_dim: usize,
        store: &WeightStore,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if tasks.is_empty() {
            return Ok(Self {
                tasks: Vec::new(),
                linear: None,
            });
        }
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for t in tasks {
            t.check().map_err(|reason| ModelError::Metadata {
                file: store.origin().to_path_buf(),
                field: format!("tasks.{}", t.name),
                reason,
            })?;
            ws.push(store.take(&t.weight_name(), &[1, input_dim])?);
            bs.push(store.take(&t.bias_name(), &[1])?);
        }
        let w = Tensor::cat(&ws, 0)?;
        let b = Tensor::cat(&bs, 0)?;
        Ok(Self {
            tasks: tasks.to_vec(),
            linear: Some(FoldedLinear::new(&w, &b, device, dtype)?),
        })
    }

    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    /// Raw head outputs `[N, T]` as f32 host values, one row per frame.
    pub fn raw(&self, head_input: &Tensor) -> Result<Vec<Vec<f32>>> {
        match &self.linear {
            None => Ok(vec![Vec::new(); head_input.dim(0)?]),
            Some(l) => Ok(l
                .forward(head_input)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?),
        }
    }
}

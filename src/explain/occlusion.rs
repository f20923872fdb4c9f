//! Occlusion sensitivity (Zeiler & Fergus 2014): a square patch of black (the normalised value of
//! a black pixel, what the sector mask puts outside the scan) slides over the prepared input, and
//! each pixel's value is the mean change of the task's raw output, with the patch minus without,
//! over the patch positions that cover it. Occluded copies run through the inference model in
//! batches.

use candle_core::{Device, Tensor};

use super::{black_values, task_index, ExplainError, Map2d, Result};
use crate::model::EchoNetModel;
use crate::preprocess::PreparedInput;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occlusion {
    /// Side of the square patch, prepared-input pixels.
    pub patch: usize,
    pub stride: usize,
    /// Occluded copies per forward pass.
    pub batch: usize,
}

impl Default for Occlusion {
    fn default() -> Self {
        Self {
            patch: 12,
            stride: 4,
            batch: 16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OcclusionResult {
    /// Per pixel, the mean change of the task's reported value (its unit: mL, %, or a
    /// probability for a binary head) over the patches covering the pixel.
    pub map: Map2d,
    /// The task's raw head output without any patch.
    pub base: f32,
    /// The task's reported value without any patch, in `unit`.
    pub value: f64,
    /// The task's unit ("probability" for a binary head).
    pub unit: String,
    pub positions: usize,
}

/// Raw outputs of `task` for a list of inputs of one shape, batched.
pub fn predict_raw(
    model: &EchoNetModel,
    inputs: &[Vec<f32>],
    shape: (usize, usize, usize),
    task: usize,
    batch: usize,
) -> Result<Vec<f32>> {
    let (c, h, w) = shape;
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(batch.max(1)) {
        let mut data = Vec::with_capacity(chunk.len() * c * h * w);
        for x in chunk {
            if x.len() != c * h * w {
                return Err(ExplainError::Invalid(format!(
                    "{} values for a {c}x{h}x{w} input",
                    x.len()
                )));
            }
            data.extend_from_slice(x);
        }
        let t = Tensor::from_vec(data, (chunk.len(), c, h, w), &Device::Cpu)?;
        let (_, raw) = model.forward(&t)?;
        for row in raw {
            out.push(
                row.get(task)
                    .copied()
                    .ok_or_else(|| ExplainError::Invalid(format!("no output column {task}")))?,
            );
        }
    }
    Ok(out)
}

/// The input with the pixels where `mask` is set turned black (every channel).
pub fn masked(input: &PreparedInput, mask: &[bool], black: &[f32]) -> PreparedInput {
    let plane = input.width * input.height;
    let mut out = input.clone();
    for (c, ch) in out.data.chunks_exact_mut(plane).enumerate() {
        let b = black.get(c).copied().unwrap_or(0.0);
        for (v, &m) in ch.iter_mut().zip(mask) {
            if m {
                *v = b;
            }
        }
    }
    out
}

/// Patch positions along one axis: every `stride`, and the last one flush with the edge.
fn starts(len: usize, patch: usize, stride: usize) -> Vec<usize> {
    if patch >= len {
        return vec![0];
    }
    let mut v: Vec<usize> = (0..=len - patch).step_by(stride.max(1)).collect();
    if v.last() != Some(&(len - patch)) {
        v.push(len - patch);
    }
    v
}

/// The occlusion map of the task named `task`.
pub fn occlusion_map(
    model: &EchoNetModel,
    input: &PreparedInput,
    task: &str,
    cfg: &Occlusion,
) -> Result<OcclusionResult> {
    let names: Vec<String> = model
        .manifest()
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let ti = task_index(&names, task)?;
    let spec = model.manifest().tasks[ti].clone();
    let (c, h, w) = (input.channels, input.height, input.width);
    if cfg.patch == 0 || cfg.stride == 0 {
        return Err(ExplainError::Invalid(
            "occlusion patch and stride must be at least 1 pixel".into(),
        ));
    }
    let black = black_values(&model.manifest().input, c);
    let mut windows = Vec::new();
    for y in starts(h, cfg.patch, cfg.stride) {
        for x in starts(w, cfg.patch, cfg.stride) {
            windows.push((x, y));
        }
    }
    let mut inputs = vec![input.data.clone()];
    for &(x0, y0) in &windows {
        let mut mask = vec![false; w * h];
        for y in y0..(y0 + cfg.patch).min(h) {
            for x in x0..(x0 + cfg.patch).min(w) {
                mask[y * w + x] = true;
            }
        }
        inputs.push(masked(input, &mask, &black).data);
    }
    let preds = predict_raw(model, &inputs, (c, h, w), ti, cfg.batch)?;
    let base = preds.first().copied().unwrap_or(0.0);
    let value = spec.finish(base as f64);
    let mut sum = vec![0f64; w * h];
    let mut count = vec![0u32; w * h];
    for (&(x0, y0), p) in windows.iter().zip(preds.iter().skip(1)) {
        // In the task's unit, so the map reads as "hiding this changes EF by -3 %".
        let d = spec.finish(*p as f64) - value;
        for y in y0..(y0 + cfg.patch).min(h) {
            for x in x0..(x0 + cfg.patch).min(w) {
                sum[y * w + x] += d;
                count[y * w + x] += 1;
            }
        }
    }
    Ok(OcclusionResult {
        map: Map2d {
            width: w,
            height: h,
            data: sum
                .iter()
                .zip(&count)
                .map(|(s, &n)| if n > 0 { (s / n as f64) as f32 } else { 0.0 })
                .collect(),
        },
        base,
        value,
        unit: match spec.kind {
            crate::model::TaskKind::Binary => "probability".into(),
            crate::model::TaskKind::Regression => spec.unit.clone(),
        },
        positions: windows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_positions_cover_the_edge() {
        assert_eq!(starts(10, 4, 3), vec![0, 3, 6]);
        assert_eq!(starts(10, 4, 4), vec![0, 4, 6]);
        assert_eq!(starts(3, 4, 1), vec![0]);
    }
}

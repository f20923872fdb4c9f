//! Post-training int8 quantisation of the trunk: activation ranges from calibration frames (run
//! through the f32 plan, every convolution's input observed), weights per output channel, the
//! choice of which convolutions stay f32, and the bundle section that records all of it.
//!
//! Scheme: weights symmetric per output channel with 7 bits (-63..=63, see
//! [`crate::model::cpu_plan::qgemm`] for why 7), activations uint8 per tensor, affine (scale and
//! zero point; after a ReLU the zero point is 0). Each int8 convolution quantises its f32 input
//! on the fly and writes f32 (bias, residual and ReLU fused), so the residual stream and the
//! pooled features stay f32.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cpu_plan::qgemm::ActQuant;
use super::cpu_plan::{ConvQuant, CpuPlan, PlanConv};

/// What the bundle's `scheme` field says.
pub const SCHEME: &str =
    "int8: weights symmetric per output channel, 7-bit (-63..=63); activations uint8 per tensor, affine; int32 sums; f32 between layers";

/// Convolutions with fewer products per output than this (`cin x kh x kw`) stay f32: too little
/// work for int8 to pay, and one input channel's rounding is a large share of each output.
pub const MIN_INT8_K: usize = 32;

/// How far beyond the calibrated range an activation range reaches by default (`echonet
/// quantize --headroom`). Inputs unlike the calibration frames reach further (on standard-normal
/// input every int8 layer of a full-size network saw 1.2-2.8x the range phantom frames gave), and
/// clipping there costs far more than the coarser grid costs everywhere: features of that network
/// moved by 1.5e-1 relative L2 without headroom and 1.2e-2 with 2x, while on held-out phantom
/// frames 2x cost 1.39e-2 -> 1.40e-2 (4x: 1.45e-2). See README, "int8 bundles".
pub const DEFAULT_HEADROOM: f32 = 2.0;

/// Histogram bins per observed tensor (percentile and MSE range choice).
const BINS: usize = 2048;

/// How an activation range is chosen from the calibration statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// The 0.01% and 99.99% quantiles (outliers clipped).
    Percentile,
    /// The range, shrunk from min/max, that minimises the expected squared quantisation error
    /// over the observed histogram (clipping error against rounding error).
    Mse,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::Percentile => "percentile",
            Self::Mse => "mse",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(Self::MinMax),
            "percentile" => Ok(Self::Percentile),
            "mse" => Ok(Self::Mse),
            other => Err(format!(
                "method {other:?}: expected minmax, percentile or mse"
            )),
        }
    }
}

/// Statistics of one convolution's input over the calibration frames.
#[derive(Debug, Clone)]
pub struct ActStats {
    pub min: f32,
    pub max: f32,
    /// Counts over `[min(0, min), max(0, max)]` in [`BINS`] bins (second pass).
    hist: Vec<u64>,
    /// The range the histogram covers.
    range: (f32, f32),
}

impl ActStats {
    fn new() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: Vec::new(),
            range: (0.0, 0.0),
        }
    }

    fn observe_range(&mut self, v: &[f32]) {
        for &x in v {
            if x.is_finite() {
                self.min = self.min.min(x);
                self.max = self.max.max(x);
            }
        }
    }

    fn start_histogram(&mut self) {
        let lo = if self.min.is_finite() {
            self.min.min(0.0)
        } else {
            0.0
        };
        let hi = if self.max.is_finite() {
            self.max.max(0.0)
        } else {
            0.0
        };
        self.range = (lo, hi);
        self.hist = vec![0; BINS];
    }

    fn observe_histogram(&mut self, v: &[f32]) {
        let (lo, hi) = self.range;
        let span = hi - lo;
        if span <= 0.0 {
            return;
        }
        let k = BINS as f32 / span;
        for &x in v {
            if x.is_finite() {
                let b = ((x - lo) * k) as usize;
                self.hist[b.min(BINS - 1)] += 1;
            }
        }
    }

    /// The value below which `q` of the observed values lie (from the histogram).
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.hist.iter().sum();
        let (lo, hi) = self.range;
        if total == 0 {
            return lo;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return lo + (hi - lo) * (i + 1) as f32 / BINS as f32;
            }
        }
        hi
    }

    /// The activation quantisation `method` picks, its range widened `headroom` times (>= 1).
    pub fn choose_with_headroom(&self, method: Method, headroom: f32) -> ActQuant {
        let act = self.choose(method);
        if !(headroom.is_finite() && headroom > 1.0) {
            return act;
        }
        let lo = -(act.zero_point as f32) * act.scale;
        let hi = (255.0 - act.zero_point as f32) * act.scale;
        ActQuant::from_range(lo * headroom, hi * headroom)
    }

    /// The activation quantisation `method` picks.
    pub fn choose(&self, method: Method) -> ActQuant {
        let (lo, hi) = (self.min, self.max);
        if self.hist.is_empty() || method == Method::MinMax {
            return ActQuant::from_range(lo, hi);
        }
        match method {
            Method::MinMax => ActQuant::from_range(lo, hi),
            Method::Percentile => {
                let l = if lo < 0.0 { self.quantile(1e-4) } else { 0.0 };
                ActQuant::from_range(l, self.quantile(1.0 - 1e-4))
            }
            Method::Mse => {
                let (rlo, rhi) = self.range;
                let width = (rhi - rlo) / BINS as f32;
                let mut best = (f64::INFINITY, 1.0f32);
                // Shrink both ends by the same factor, 100% down to 20%.
                for step in 0..=80 {
                    let f = 1.0 - step as f32 / 100.0;
                    let (clo, chi) = (rlo * f, rhi * f);
                    let q = (chi - clo) as f64 / 255.0;
                    let round_err = q * q / 12.0;
                    let mut err = 0f64;
                    for (i, &c) in self.hist.iter().enumerate() {
                        if c == 0 {
                            continue;
                        }
                        let x = rlo + width * (i as f32 + 0.5);
                        let e = if x > chi {
                            ((x - chi) as f64).powi(2)
                        } else if x < clo {
                            ((clo - x) as f64).powi(2)
                        } else {
                            round_err
                        };
                        err += c as f64 * e;
                    }
                    if err < best.0 {
                        best = (err, f);
                    }
                }
                ActQuant::from_range(rlo * best.1, rhi * best.1)
            }
        }
    }
}

/// Why the plan could not calibrate.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("quantisation: {0}")]
    Model(#[from] candle_core::Error),
}

/// A normalised NCHW f32 batch and its shape `(n, c, h, w)`.
pub type Batch = (Vec<f32>, (usize, usize, usize, usize));

/// Runs `batches` (normalised NCHW f32, the model's input) through the f32 `plan` twice (range,
/// then histogram) and returns each convolution's input statistics, by plan index.
pub fn calibrate(plan: &CpuPlan, batches: &[Batch]) -> Result<Vec<ActStats>, QuantizeError> {
    if batches.is_empty() {
        return Err(QuantizeError::Calibration("no calibration frames".into()));
    }
    let mut stats: Vec<ActStats> = (0..plan.conv_count()).map(|_| ActStats::new()).collect();
    let mut out = Vec::new();
    for pass in 0..2 {
        if pass == 1 {
            stats.iter_mut().for_each(ActStats::start_histogram);
        }
        for (data, shape) in batches {
            out.resize(shape.0 * plan.feature_channels(), 0.0);
            let mut observe = |conv: usize, v: &[f32]| {
                if let Some(s) = stats.get_mut(conv) {
                    if pass == 0 {
                        s.observe_range(v);
                    } else {
                        s.observe_histogram(v);
                    }
                }
            };
            plan.features_observed(data, *shape, &mut out, Some(&mut observe))
                .map_err(|e| QuantizeError::Calibration(e.to_string()))?;
        }
    }
    Ok(stats)
}

/// Which convolutions go int8, and their tables: the stem (index 0, and the grey stem) and every
/// convolution with K below [`MIN_INT8_K`] stay f32 with the reason recorded.
/// Each int8 layer's range is `method`'s widened `headroom` times (see [`DEFAULT_HEADROOM`]).
pub fn plan_table(
    convs: &[PlanConv],
    stats: &[ActStats],
    method: Method,
    headroom: f32,
) -> Result<(Vec<Option<ConvQuant>>, Vec<QuantLayer>), QuantizeError> {
    let mut table = Vec::with_capacity(convs.len());
    let mut layers = Vec::with_capacity(convs.len());
    for (i, pc) in convs.iter().enumerate() {
        let (cout, cin, kh, kw) = pc.conv.weight.dims4()?;
        let reason = if pc.label.starts_with("conv2d_1a") {
            Some("stem: its input is the signed, normalised frame and every later layer inherits its error".to_string())
        } else if cin * kh * kw < MIN_INT8_K {
            Some(format!(
                "K = {cin}x{kh}x{kw} = {} products per output, below {MIN_INT8_K}",
                cin * kh * kw
            ))
        } else {
            None
        };
        let act = stats
            .get(i)
            .map(|s| s.choose_with_headroom(method, headroom));
        let quant = match (&reason, act) {
            (None, Some(act)) => Some(ConvQuant::from_folded(&pc.conv, act)?),
            _ => None,
        };
        layers.push(QuantLayer {
            index: i,
            label: pc.label.clone(),
            shape: [cout, cin, kh, kw],
            precision: if quant.is_some() { "int8" } else { "f32" }.into(),
            reason,
            act_scale: quant.as_ref().map(|q| q.act.scale),
            act_zero_point: quant.as_ref().map(|q| q.act.zero_point),
        });
        table.push(quant);
    }
    Ok((table, layers))
}

/// One convolution of the plan in the bundle's quantisation section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantLayer {
    /// Plan index (0 = the stem).
    pub index: usize,
    /// The plan's step label, checked against the network at load.
    pub label: String,
    /// `[cout, cin, kh, kw]`.
    pub shape: [usize; 4],
    /// `int8` or `f32`.
    pub precision: String,
    /// Why it stays f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_zero_point: Option<u8>,
}

/// Where the calibration frames came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The dataset folder, or `phantom:seed=S,clips=N,...`.
    pub source: String,
    /// Frames the scales were fitted on.
    pub frames: usize,
    /// Frames held out from fitting, on which `drift` was measured.
    pub held_out_frames: usize,
}

/// How far int8 moves one task's reported value from f32, over the held-out frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    pub mean_abs: f64,
    pub max_abs: f64,
}

/// The quantisation section of a bundle (safetensors metadata key [`QUANT_KEY`], covered by the
/// content hash); the int8 weights are tensors `int8.<index>.weight` (i8, OIHW, folded) and
/// `int8.<index>.scale` (f32, per output channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    pub scheme: String,
    /// `minmax`, `percentile` or `mse`.
    pub method: Method,
    /// How many times `method`'s range each activation range is (1 in bundles made before
    /// `--headroom` existed, which omit the field). Written only when it is not 1, so a bundle
    /// made before the field existed hashes as it did when it was written.
    #[serde(default = "no_headroom", skip_serializing_if = "is_no_headroom")]
    pub headroom: f32,
    pub calibration: Calibration,
    pub layers: Vec<QuantLayer>,
    /// Per task: int8 against f32 on the held-out frames.
    pub drift: BTreeMap<String, Drift>,
    /// Relative L2 of the pooled features, int8 against f32, on the held-out frames.
    pub features_rel_l2: f64,
}

fn no_headroom() -> f32 {
    1.0
}

fn is_no_headroom(headroom: &f32) -> bool {
    *headroom == 1.0
}

/// safetensors metadata key of the quantisation section.
pub const QUANT_KEY: &str = "echonet.quantization";

impl Quantization {
    /// Checks the fields a reader relies on; the error is `(field, reason)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.scheme != SCHEME {
            return Err((
                "scheme".into(),
                format!("is {:?}, this build runs {SCHEME:?}", self.scheme),
            ));
        }
        if !(self.headroom.is_finite() && self.headroom >= 1.0) {
            return Err((
                "headroom".into(),
                format!("is {}, expected a number >= 1", self.headroom),
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let field = format!("layers[{i}]");
            if l.index != i {
                return Err((field, format!("index is {}, expected {i}", l.index)));
            }
            match (l.precision.as_str(), l.act_scale, l.act_zero_point) {
                ("int8", Some(s), Some(_)) if s.is_finite() && s > 0.0 => {}
                ("int8", _, _) => {
                    return Err((
                        field,
                        "int8 layer without a positive act_scale and an act_zero_point".into(),
                    ))
                }
                ("f32", _, _) if l.reason.as_deref().is_some_and(|r| !r.trim().is_empty()) => {}
                ("f32", _, _) => return Err((field, "f32 layer without a reason".into())),
                (other, _, _) => {
                    return Err((field, format!("precision {other:?}: expected int8 or f32")))
                }
            }
        }
        Ok(())
    }

    /// The tensor names of layer `index`'s int8 weights and scales.
    pub fn tensor_names(index: usize) -> (String, String) {
        (
            format!("int8.{index}.weight"),
            format!("int8.{index}.scale"),
        )
    }
}

/// Relative L2 and per-task drift of `int8` outputs against `f32`, frame by frame.
pub fn drift(
    tasks: &[String],
    f32_features: &[f32],
    int8_features: &[f32],
    f32_outputs: &[Vec<f64>],
    int8_outputs: &[Vec<f64>],
) -> (BTreeMap<String, Drift>, f64) {
    let mut out = BTreeMap::new();
    for (t, name) in tasks.iter().enumerate() {
        let diffs: Vec<f64> = f32_outputs
            .iter()
            .zip(int8_outputs)
            .filter_map(|(a, b)| Some((a.get(t)? - b.get(t)?).abs()))
            .collect();
        if diffs.is_empty() {
            continue;
        }
        out.insert(
            name.clone(),
            Drift {
                mean_abs: diffs.iter().sum::<f64>() / diffs.len() as f64,
                max_abs: diffs.iter().fold(0f64, |m, &d| m.max(d)),
            },
        );
    }
    (out, super::import::relative_l2(int8_features, f32_features))
}

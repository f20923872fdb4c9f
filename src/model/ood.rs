//! The out-of-distribution statistics a bundle carries (issue #13 item 2): where the training
//! frames lie in the pooled-feature space the heads read, as a mean, the top principal
//! directions with their variances and one residual variance for the rest; the threshold set on
//! validation frames, for single frames and for a window's median; how it was fitted. The
//! per-frame distance is a Mahalanobis distance in
//! that low-rank form, so it costs `k x D` multiply-adds on features the inference step already
//! has (no second forward pass). This module owns the statistics, the fit and the distance; the
//! bundle stores them (`echonet.ood` metadata + `ood.*` f32 tensors) and the inference step
//! gates on them.

use serde::{Deserialize, Serialize};

/// safetensors metadata key of the section (JSON [`OodInfo`]).
pub const OOD_KEY: &str = "echonet.ood";
/// The section's tensors, always f32: mean `[D]`, directions `[k, D]`, variances `[k]`.
pub const TENSOR_MEAN: &str = "ood.mean";
pub const TENSOR_DIRECTIONS: &str = "ood.directions";
pub const TENSOR_VARIANCES: &str = "ood.variances";
/// The distance's name and version, written into the section.
pub const METHOD: &str = "pca-mahalanobis/1";

/// Principal directions kept by default (at most the feature width minus one): every direction
/// of the demo model's 224 features, whose full Mahalanobis distance separates a flipped fan
/// from the phantom better than 32 or 96 directions did (README, "Out-of-distribution gate");
/// 256 x 1792 multiply-adds per frame for a full-width network, still nothing beside the trunk.
pub const DEFAULT_COMPONENTS: usize = 256;
/// Validation percentile the threshold starts from.
pub const DEFAULT_PERCENTILE: f64 = 99.5;
/// The threshold is the percentile times this: a frame of the training domain must not be
/// refused for being one of the 0.5 % of validation frames beyond the percentile, nor for the
/// small feature drift of an int8 bundle (see README, "Out-of-distribution gate"). 1.25, not
/// more: on the demo model at 1.5 an outdoor-scene frame (2.72) and a flipped fan's window median
/// (2.33) passed, while unseen phantom frames reach at most 0.63x the 1.25 threshold.
pub const DEFAULT_MARGIN: f64 = 1.25;

/// What the section says about itself (the metadata JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodInfo {
    /// [`METHOD`].
    pub method: String,
    /// Width of the pooled features (`architecture.feature_channels()`).
    pub feature_dim: usize,
    /// Principal directions stored (`k`).
    pub components: usize,
    /// Variance per remaining dimension (mean of the eigenvalues not kept), floored.
    pub residual_variance: f64,
    /// Distances above this make a frame `out_of_distribution`.
    pub threshold: f64,
    /// `threshold = percentile_distance x margin`.
    pub percentile: f64,
    pub percentile_distance: f64,
    pub margin: f64,
    /// A window whose median distance is beyond this is withheld even when its frames pass one
    /// by one: a consistent shift (a flipped fan) is plain in 20 frames' median long before
    /// single frames cross `threshold`. The `percentile` of the validation clips' medians times
    /// `margin`.
    pub window_threshold: f64,
    pub window_percentile_distance: f64,
    pub fit: OodFit,
}

/// Where the statistics came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodFit {
    /// The frames' origin, e.g. `phantom:seed=1,clips=400,frames=20,fps=10`.
    pub source: String,
    /// Frames the mean and covariance were taken over (training patients).
    pub train_frames: usize,
    /// Frames the threshold was set on (validation patients), in this many clips.
    pub validation_frames: usize,
    pub validation_clips: usize,
    /// What wrote it (`echonet train`, `echonet ood-fit`) and on which precision's features.
    pub tool: String,
}

impl OodInfo {
    /// Checks what a reader relies on; `Err((field, reason))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        if self.method != METHOD {
            return bad(
                "method",
                format!("is {:?}, this build reads {METHOD:?}", self.method),
            );
        }
        if self.feature_dim == 0 || self.components == 0 || self.components > self.feature_dim {
            return bad(
                "components",
                format!(
                    "{} directions of {} features: expected 1..=feature_dim",
                    self.components, self.feature_dim
                ),
            );
        }
        for (f, v) in [
            ("residual_variance", self.residual_variance),
            ("threshold", self.threshold),
            ("percentile_distance", self.percentile_distance),
            ("margin", self.margin),
            ("window_threshold", self.window_threshold),
            (
                "window_percentile_distance",
                self.window_percentile_distance,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, format!("is {v}, expected a positive number"));
            }
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return bad(
                "percentile",
                format!("is {}, expected 0-100", self.percentile),
            );
        }
        Ok(())
    }
}

/// The statistics, ready to score frames.
#[derive(Debug, Clone, PartialEq)]
pub struct OodStats {
    pub info: OodInfo,
    /// `[D]`.
    pub mean: Vec<f32>,
    /// `[k, D]`, row-major, orthonormal rows.
    pub directions: Vec<f32>,
    /// `[k]`, descending, floored.
    pub variances: Vec<f32>,
}

/// Why statistics could not be fitted or read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OodError {
    #[error("{what}: {got} frames, at least {need} needed to fit the statistics")]
    TooFewFrames {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("frame {index} has {got} features, expected {expected}")]
    Width {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("frame {index} has a non-finite feature")]
    NonFinite { index: usize },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl OodStats {
    /// Assembles statistics read from a bundle, checking every length against the info.
    pub fn new(
        info: OodInfo,
        mean: Vec<f32>,
        directions: Vec<f32>,
        variances: Vec<f32>,
    ) -> Result<Self, OodError> {
        info.check()
            .map_err(|(field, reason)| OodError::Invalid { field, reason })?;
        let (d, k) = (info.feature_dim, info.components);
        for (name, len, want) in [
            (TENSOR_MEAN, mean.len(), d),
            (TENSOR_DIRECTIONS, directions.len(), k * d),
            (TENSOR_VARIANCES, variances.len(), k),
        ] {
            if len != want {
                return Err(OodError::Invalid {
                    field: name.into(),
                    reason: format!("{len} values, expected {want}"),
                });
            }
        }
        if mean.iter().chain(&directions).any(|v| !v.is_finite()) {
            return Err(OodError::Invalid {
                field: "ood tensors".into(),
                reason: "hold a non-finite value".into(),
            });
        }
        if variances.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(OodError::Invalid {
                field: TENSOR_VARIANCES.into(),
                reason: "every variance must be positive".into(),
            });
        }
        Ok(Self {
            info,
            mean,
            directions,
            variances,
        })
    }

    pub fn threshold(&self) -> f64 {
        self.info.threshold
    }

    /// Both thresholds, as the rolling window applies them.
    pub fn thresholds(&self) -> OodThresholds {
        OodThresholds {
            frame: self.info.threshold,
            window_median: self.info.window_threshold,
        }
    }

    /// The frame's distance from the training frames: `sqrt((sum_i p_i^2 / var_i + rest /
    /// residual_variance) / D)` with `p = directions (x - mean)` and `rest` the squared length of
    /// `x - mean` outside the kept directions. Dividing by `D` puts a typical training frame
    /// near 1 whatever the width. NaN when the features have the wrong width or are not finite.
    pub fn distance(&self, features: &[f32]) -> f64 {
        let d = self.info.feature_dim;
        if features.len() != d {
            return f64::NAN;
        }
        let centred: Vec<f64> = features
            .iter()
            .zip(&self.mean)
            .map(|(x, m)| f64::from(*x) - f64::from(*m))
            .collect();
        let total: f64 = centred.iter().map(|v| v * v).sum();
        let mut inside = 0.0;
        let mut projected = 0.0;
        for (row, var) in self.directions.chunks_exact(d).zip(&self.variances) {
            let p: f64 = row
                .iter()
                .zip(&centred)
                .map(|(a, b)| f64::from(*a) * b)
                .sum();
            projected += p * p;
            inside += p * p / f64::from(*var);
        }
        let rest = (total - projected).max(0.0);
        ((inside + rest / self.info.residual_variance) / d as f64).sqrt()
    }

    /// Fits the statistics on `train` (rows of `D` features) and sets the thresholds on
    /// `validation`, whose frames belong to the clips `validation_clip` names (one id per
    /// frame): the frame threshold is the `percentile` of their distances times `margin`, the
    /// window threshold the `percentile` of the clips' median distances times `margin`.
    /// `source` and `tool` go into the section as they are.
    pub fn fit(
        train: &[Vec<f32>],
        validation: &[Vec<f32>],
        validation_clip: &[usize],
        settings: &FitSettings,
        source: &str,
        tool: &str,
    ) -> Result<Self, OodError> {
        let d = train.first().map(Vec::len).unwrap_or(0);
        let k = settings.components.min(d.saturating_sub(1)).max(1);
        if train.len() < MIN_TRAIN_FRAMES.max(k + 1) {
            return Err(OodError::TooFewFrames {
                what: "training frames",
                got: train.len(),
                need: MIN_TRAIN_FRAMES.max(k + 1),
            });
        }
        if validation.len() < MIN_VALIDATION_FRAMES {
            return Err(OodError::TooFewFrames {
                what: "validation frames",
                got: validation.len(),
                need: MIN_VALIDATION_FRAMES,
            });
        }
        if validation_clip.len() != validation.len() {
            return Err(OodError::Invalid {
                field: "validation clips".into(),
                reason: format!(
                    "{} clip ids for {} frames",
                    validation_clip.len(),
                    validation.len()
                ),
            });
        }
        for (index, row) in train.iter().chain(validation).enumerate() {
            if row.len() != d {
                return Err(OodError::Width {
                    index,
                    got: row.len(),
                    expected: d,
                });
            }
            if row.iter().any(|v| !v.is_finite()) {
                return Err(OodError::NonFinite { index });
            }
        }
        let n = train.len() as f64;
        let mut mean = vec![0f64; d];
        for row in train {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let cov = covariance(train, &mean);
        let trace: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        let (values, vectors) = top_eigen(&cov, d, k);
        // Floors keep a dead feature (zero on every training frame) from making the distance
        // infinite; a frame that wakes it still lands far away, through the floor.
        let floor = (values.first().copied().unwrap_or(0.0) * 1e-6).max(1e-12);
        let kept: f64 = values.iter().sum();
        let residual_variance = if d > k {
            ((trace - kept) / (d - k) as f64).max(floor)
        } else {
            floor
        };
        let mut stats = Self {
            info: OodInfo {
                method: METHOD.into(),
                feature_dim: d,
                components: k,
                residual_variance,
                threshold: 1.0,
                percentile: settings.percentile,
                percentile_distance: 1.0,
                margin: settings.margin,
                window_threshold: 1.0,
                window_percentile_distance: 1.0,
                fit: OodFit {
                    source: source.into(),
                    train_frames: train.len(),
                    validation_frames: validation.len(),
                    validation_clips: 0,
                    tool: tool.into(),
                },
            },
            mean: mean.iter().map(|v| *v as f32).collect(),
            directions: vectors.iter().map(|v| *v as f32).collect(),
            variances: values.iter().map(|v| v.max(floor) as f32).collect(),
        };
        let distances: Vec<f64> = validation.iter().map(|r| stats.distance(r)).collect();
        let at = percentile(&distances, settings.percentile);
        if !(at.is_finite() && at > 0.0) {
            return Err(OodError::Invalid {
                field: "validation distances".into(),
                reason: format!("percentile {} is {at}", settings.percentile),
            });
        }
        stats.info.percentile_distance = at;
        stats.info.threshold = at * settings.margin;
        let mut clips: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
        for (c, d) in validation_clip.iter().zip(&distances) {
            clips.entry(*c).or_default().push(*d);
        }
        let medians: Vec<f64> = clips
            .values()
            .filter(|d| d.len() >= MIN_FRAMES_PER_CLIP)
            .map(|d| median(d))
            .collect();
        if medians.len() < MIN_VALIDATION_CLIPS {
            return Err(OodError::TooFewFrames {
                what: "validation clips with 5 or more frames",
                got: medians.len(),
                need: MIN_VALIDATION_CLIPS,
            });
        }
        let at = percentile(&medians, settings.percentile);
        stats.info.window_percentile_distance = at;
        stats.info.window_threshold = at * settings.margin;
        stats.info.fit.validation_clips = medians.len();
        stats
            .info
            .check()
            .map_err(|(field, reason)| OodError::Invalid { field, reason })?;
        Ok(stats)
    }
}

/// What the gate does for a bundle, in words: shown once at start, in doctor, and in every
/// record's `model.ood_gate`.
pub fn gate_description(stats: Option<&OodStats>) -> String {
    match stats {
        None => GATE_OFF.to_string(),
        Some(s) => format!(
            "on: threshold {:.3} per frame, {:.3} for a window's median (p{} of {} validation frames / {} clips x {}; {})",
            s.info.threshold,
            s.info.window_threshold,
            s.info.percentile,
            s.info.fit.validation_frames,
            s.info.fit.validation_clips,
            s.info.margin,
            s.info.fit.source
        ),
    }
}

/// The gate's state for a bundle without statistics (converted bundles).
pub const GATE_OFF: &str = "off: the bundle has no training statistics";

/// Pooled features of prepared frames (each `c x h x w` normalised floats, one shape for all)
/// through `model`, `batch` frames per forward pass: the features the inference step gates on.
pub fn features_of(
    model: &super::EchoNetModel,
    frames: &[&[f32]],
    (c, h, w): (usize, usize, usize),
    batch: usize,
) -> super::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(frames.len());
    for chunk in frames.chunks(batch.max(1)) {
        let mut data = Vec::with_capacity(chunk.len() * c * h * w);
        for f in chunk {
            if f.len() != c * h * w {
                return Err(super::ModelError::Input(format!(
                    "a frame of {} values in a batch of {c}x{h}x{w} frames",
                    f.len()
                )));
            }
            data.extend_from_slice(f);
        }
        let x =
            candle_core::Tensor::from_vec(data, (chunk.len(), c, h, w), &candle_core::Device::Cpu)?;
        let (features, _) = model.forward(&x)?;
        out.extend(features.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Fewest frames a fit accepts: below these the covariance and the percentile mean little.
pub const MIN_TRAIN_FRAMES: usize = 50;
pub const MIN_VALIDATION_FRAMES: usize = 20;
/// Fewest validation clips (of at least [`MIN_FRAMES_PER_CLIP`] frames) for the window threshold.
pub const MIN_VALIDATION_CLIPS: usize = 4;
pub const MIN_FRAMES_PER_CLIP: usize = 5;

/// The gate's two thresholds: a frame beyond `frame` is `out_of_distribution`; a window whose
/// median distance is beyond `window_median` is withheld as out of the training domain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OodThresholds {
    pub frame: f64,
    pub window_median: f64,
}

/// Median of finite values (mean of the middle two for an even count); NaN when none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// How a fit chooses its directions and threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSettings {
    pub components: usize,
    pub percentile: f64,
    pub margin: f64,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self {
            components: DEFAULT_COMPONENTS,
            percentile: DEFAULT_PERCENTILE,
            margin: DEFAULT_MARGIN,
        }
    }
}

impl FitSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.components == 0 {
            return Err("components must be at least 1".into());
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return Err(format!(
                "percentile {} must be in (0, 100]",
                self.percentile
            ));
        }
        if !(self.margin.is_finite() && self.margin >= 1.0) {
            return Err(format!("margin {} must be at least 1", self.margin));
        }
        Ok(())
    }
}

/// Nearest-rank percentile (`p` in 0-100) of finite values; NaN when there are none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Sample covariance `[D, D]` (row-major) of `rows` about `mean`, rows of the result in parallel.
fn covariance(rows: &[Vec<f32>], mean: &[f64]) -> Vec<f64> {
    use rayon::prelude::*;
    let d = mean.len();
    let centred: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().zip(mean).map(|(x, m)| f64::from(*x) - m).collect())
        .collect();
    let denom = (rows.len().max(2) - 1) as f64;
    let mut cov = vec![0f64; d * d];
    cov.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
        for r in &centred {
            let a = r[i];
            if a == 0.0 {
                continue;
            }
            for (o, b) in out.iter_mut().zip(r) {
                *o += a * b;
            }
        }
        out.iter_mut().for_each(|v| *v /= denom);
    });
    cov
}

/// The `k` largest eigenvalues (descending) and their unit eigenvectors (`[k, D]`, row-major) of
/// the symmetric `[D, D]` matrix `a`: Jacobi rotations on the whole matrix up to 512 features;
/// wider, subspace iteration on `k + 8` vectors and Jacobi on their Rayleigh quotient.
fn top_eigen(a: &[f64], d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let (values, vectors, m) = if d <= 512 {
        let (vals, vecs) = jacobi(a, d);
        (vals, vecs, d)
    } else {
        subspace(a, d, (k + 8).min(d))
    };
    // vectors: column j of an `[d, m]` matrix is the eigenvector of values[j].
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let mut out_vals = Vec::with_capacity(k);
    let mut out_vecs = Vec::with_capacity(k * d);
    for &j in order.iter().take(k) {
        out_vals.push(values[j].max(0.0));
        out_vecs.extend((0..d).map(|i| vectors[i * m + j]));
    }
    (out_vals, out_vecs)
}

/// Cyclic Jacobi eigen-decomposition of a symmetric `[n, n]` matrix: (eigenvalues, `[n, n]`
/// eigenvectors as columns).
fn jacobi(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-13 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    let arp = a[r * n + p];
                    let arq = a[r * n + q];
                    a[r * n + p] = c * arp - s * arq;
                    a[r * n + q] = s * arp + c * arq;
                }
                for r in 0..n {
                    let apr = a[p * n + r];
                    let aqr = a[q * n + r];
                    a[p * n + r] = c * apr - s * aqr;
                    a[q * n + r] = s * apr + c * aqr;
                }
                for r in 0..n {
                    let vrp = v[r * n + p];
                    let vrq = v[r * n + q];
                    v[r * n + p] = c * vrp - s * vrq;
                    v[r * n + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Subspace iteration for the `m` leading eigenpairs of a wide symmetric matrix: (values,
/// `[d, m]` vectors as columns, m).
fn subspace(a: &[f64], d: usize, m: usize) -> (Vec<f64>, Vec<f64>, usize) {
    // Deterministic start: a fixed pseudo-random basis (the result must not depend on the run).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut q: Vec<f64> = (0..d * m)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    orthonormalise(&mut q, d, m);
    let mut last = vec![0f64; m];
    for it in 0..300 {
        let mut z = matmul(a, &q, d, d, m);
        orthonormalise(&mut z, d, m);
        q = z;
        if it % 10 == 9 {
            let (vals, _) = ritz(a, &q, d, m);
            let mut sorted = vals.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let change = sorted
                .iter()
                .zip(&last)
                .map(|(x, y)| (x - y).abs() / x.abs().max(1e-30))
                .fold(0.0, f64::max);
            last = sorted;
            if change < 1e-9 {
                break;
            }
        }
    }
    let (vals, y) = ritz(a, &q, d, m);
    // Eigenvectors of A: Q y.
    let vecs = matmul(&q, &y, d, m, m);
    (vals, vecs, m)
}

/// Rayleigh-Ritz: eigenpairs of `Q^T A Q` (`[m, m]`).
fn ritz(a: &[f64], q: &[f64], d: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
    let aq = matmul(a, q, d, d, m);
    let mut h = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            h[i * m + j] = (0..d).map(|r| q[r * m + i] * aq[r * m + j]).sum();
        }
    }
    for i in 0..m {
        for j in i + 1..m {
            let s = 0.5 * (h[i * m + j] + h[j * m + i]);
            h[i * m + j] = s;
            h[j * m + i] = s;
        }
    }
    jacobi(&h, m)
}

/// `[r, n] x [n, c]`, row-major.
fn matmul(a: &[f64], b: &[f64], r: usize, n: usize, c: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let mut out = vec![0f64; r * c];
    out.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        for k in 0..n {
            let x = a[i * n + k];
            if x == 0.0 {
                continue;
            }
            for (o, y) in row.iter_mut().zip(&b[k * c..(k + 1) * c]) {
                *o += x * y;
            }
        }
    });
    out
}

/// Modified Gram-Schmidt on the `m` columns of a `[d, m]` matrix.
fn orthonormalise(q: &mut [f64], d: usize, m: usize) {
    for j in 0..m {
        for p in 0..j {
            let dot: f64 = (0..d).map(|r| q[r * m + j] * q[r * m + p]).sum();
            for r in 0..d {
                q[r * m + j] -= dot * q[r * m + p];
            }
        }
        let norm = (0..d).map(|r| q[r * m + j].powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for r in 0..d {
                q[r * m + j] /= norm;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Seeded Gaussian-ish rows with a known covariance: `n` frames of `d` features, variance
    /// `scales[i]^2` along axis i.
    fn rows(n: usize, scales: &[f64], seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut uniform = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                scales
                    .iter()
                    .map(|sc| {
                        let g = (-2.0 * uniform().ln()).sqrt()
                            * (2.0 * std::f64::consts::PI * uniform()).cos();
                        (3.0 + sc * g) as f32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn jacobi_and_subspace_find_the_known_spectrum() {
        // A = diag(5, 3, 1, 0.5) rotated: eigenvalues must come back in order.
        let d = 4;
        let diag = [5.0, 3.0, 1.0, 0.5];
        let c = (0.3f64).cos();
        let s = (0.3f64).sin();
        let r = [
            c, -s, 0.0, 0.0, s, c, 0.0, 0.0, 0.0, 0.0, c, s, 0.0, 0.0, -s, c,
        ];
        let mut a = vec![0.0; 16];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| r[i * d + k] * diag[k] * r[j * d + k]).sum();
            }
        }
        let (vals, vecs) = top_eigen(&a, d, 2);
        assert!(
            (vals[0] - 5.0).abs() < 1e-10 && (vals[1] - 3.0).abs() < 1e-10,
            "{vals:?}"
        );
        // The first eigenvector is the first column of r, up to sign.
        let dot: f64 = (0..d).map(|i| vecs[i] * r[i * d]).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-10);
        let (svals, _, _) = subspace(&a, d, 3);
        let mut sv = svals.clone();
        sv.sort_by(|x, y| y.total_cmp(x));
        assert!(
            (sv[0] - 5.0).abs() < 1e-8 && (sv[1] - 3.0).abs() < 1e-8,
            "{sv:?}"
        );
    }

    #[test]
    fn training_like_frames_are_near_one_and_shifted_frames_far() {
        let scales: Vec<f64> = (0..40).map(|i| 2.0 / (1.0 + i as f64)).collect();
        let train = rows(2000, &scales, 1);
        let val = rows(400, &scales, 2);
        let settings = FitSettings {
            components: 8,
            ..FitSettings::default()
        };
        let clips: Vec<usize> = (0..val.len()).map(|i| i / 20).collect();
        let stats = OodStats::fit(&train, &val, &clips, &settings, "test", "unit test").unwrap();
        assert_eq!(stats.info.fit.validation_clips, 20);
        assert!(
            stats.info.window_threshold < stats.info.threshold,
            "{:?}",
            stats.info
        );
        let unseen = rows(1000, &scales, 3);
        let d: Vec<f64> = unseen.iter().map(|r| stats.distance(r)).collect();
        let median = percentile(&d, 50.0);
        assert!(
            (median - 1.0).abs() < 0.15,
            "typical frame near 1: {median}"
        );
        let passed = d.iter().filter(|x| **x <= stats.threshold()).count();
        assert!(
            passed >= 990,
            "{passed} of 1000 unseen in-distribution frames pass"
        );
        // A frame moved along a low-variance axis by a few of the training spread is refused.
        let mut odd = unseen[0].clone();
        odd[39] += 3.0;
        assert!(
            stats.distance(&odd) > stats.threshold(),
            "{}",
            stats.distance(&odd)
        );
        assert!(
            stats.distance(&odd[..10]).is_nan(),
            "wrong width is not a distance"
        );
        assert_eq!(stats.info.fit.train_frames, 2000);
        assert!(
            (stats.info.threshold / stats.info.percentile_distance - DEFAULT_MARGIN).abs() < 1e-12
        );
    }

    #[test]
    fn fit_refuses_too_few_or_bad_frames() {
        let scales = [1.0; 8];
        let val = rows(40, &scales, 2);
        let clips: Vec<usize> = (0..40).map(|i| i / 5).collect();
        let s = FitSettings::default();
        assert!(matches!(
            OodStats::fit(&rows(10, &scales, 1), &val, &clips, &s, "", ""),
            Err(OodError::TooFewFrames { .. })
        ));
        let mut train = rows(100, &scales, 1);
        train[5][3] = f32::NAN;
        assert_eq!(
            OodStats::fit(&train, &val, &clips, &s, "", ""),
            Err(OodError::NonFinite { index: 5 })
        );
        train[5] = vec![0.0; 7];
        assert!(matches!(
            OodStats::fit(&train, &val, &clips, &s, "", ""),
            Err(OodError::Width { index: 5, .. })
        ));
        let good = rows(100, &scales, 1);
        assert!(matches!(
            OodStats::fit(&good, &val, &vec![0; 40], &s, "", ""),
            Err(OodError::TooFewFrames { what, .. }) if what.contains("clips")
        ));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.5), 199.0);
        assert_eq!(percentile(&v, 100.0), 200.0);
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert!(percentile(&[f64::NAN], 50.0).is_nan());
    }
}

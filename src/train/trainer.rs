//! `echonet train`: the EchoNet paper's recipe on the trainable InceptionResNet-v1. Adam with
//! decoupled weight decay, MSE for regression heads and cross-entropy for binary ones (each
//! loss over the frames that carry that label), batches of 24 frames drawn from 24 different
//! patients, random rotation and brightness (see `augment`), a patient-level validation split
//! for model selection, the best validation network written as a bundle, a checkpoint to resume
//! from, and an optional grid over learning rate and weight decay.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::adam::{Adam, AdamConfig};
use super::augment::{augment, AugmentConfig, TrainRng};
use super::data::{PatientSplit, TrainData};
use super::{TrainError, TrainableIrv1};
use crate::model::bundle::{BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION};
use crate::model::{
    write_bundle, Architecture, InputSpec, Manifest, Provenance, StorageDtype, TaskKind, TaskSpec,
};

/// One training run's settings. Every field has a default (see `Default`); a TOML file with
/// these keys can be given to `echonet train --config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Square input size, pixels (at least 75). Default 96.
    pub input_size: usize,
    /// Channel multiplier of InceptionResNet-v1 (1.0 = the paper's network). Default 0.25.
    pub width: f64,
    /// Optional bottleneck before the heads. Default none.
    pub embedding: Option<usize>,
    /// Heads to train. Clip labels (ef, esv, edv, binary tasks...) label every frame of the clip;
    /// `lv_volume` is the per-frame LV volume. Default ef, esv, edv, lv_volume.
    pub tasks: Vec<String>,
    /// `shared`: one backbone with every head; `per_task`: one network per task (the paper).
    pub heads: HeadLayout,
    /// Optimiser steps. Default 1500.
    pub steps: usize,
    /// Frames per batch, each from a different patient while there are enough. Default 24.
    pub batch_size: usize,
    /// Adam learning rate (peak; cosine-decayed to 5 % over the run). Default 1e-3.
    pub lr: f64,
    /// Decoupled weight decay. Default 1e-4.
    pub weight_decay: f64,
    /// Learning rates to try (grid); empty: just `lr`.
    pub lr_grid: Vec<f64>,
    /// Weight decays to try (grid); empty: just `weight_decay`.
    pub weight_decay_grid: Vec<f64>,
    /// Patients held out for model selection when the data declare no split. Default 0.1.
    pub val_fraction: f64,
    /// Steps between validations (and checkpoints). Default 100.
    pub eval_every: usize,
    /// Frames sampled at 10 fps from each clip. Default 20 (the paper's window).
    pub frames_per_clip: usize,
    pub augment: AugmentConfig,
    /// Seeds the initial weights, the split, the batches and the augmentation. Default 1.
    pub seed: u64,
    /// Shown with every number the model produces.
    pub intended_use: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadLayout {
    Shared,
    PerTask,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            input_size: 96,
            width: 0.25,
            embedding: None,
            tasks: ["ef", "esv", "edv", crate::dataset::LV_VOLUME]
                .map(String::from)
                .to_vec(),
            heads: HeadLayout::Shared,
            steps: 1500,
            batch_size: 24,
            lr: 1e-3,
            weight_decay: 1e-4,
            lr_grid: vec![],
            weight_decay_grid: vec![],
            val_fraction: 0.1,
            eval_every: 100,
            frames_per_clip: 20,
            augment: AugmentConfig::default(),
            seed: 1,
            intended_use: "research and demonstration only; not for clinical use".into(),
        }
    }
}

impl TrainConfig {
    /// Checks every field; the error names the field and what was expected.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Unsupported(m));
        if self.input_size < crate::model::arch::MIN_INPUT_SIZE {
            return bad(format!(
                "input_size {}: expected at least {}",
                self.input_size,
                crate::model::arch::MIN_INPUT_SIZE
            ));
        }
        Architecture::new(self.width, self.embedding)
            .check()
            .map_err(TrainError::Unsupported)?;
        if self.tasks.is_empty() {
            return bad("tasks is empty: name at least one head".into());
        }
        for t in &self.tasks {
            task_kind(t)?;
        }
        if self.steps == 0 || self.eval_every == 0 || self.frames_per_clip == 0 {
            return bad("steps, eval_every and frames_per_clip must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!(
                "batch_size {}: BatchNorm needs at least 2",
                self.batch_size
            ));
        }
        for (name, v) in [("lr", self.lr)]
            .into_iter()
            .chain(self.lr_grid.iter().map(|v| ("lr_grid", *v)))
        {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} {v}: expected a positive number"));
            }
        }
        for (name, v) in [("weight_decay", self.weight_decay)].into_iter().chain(
            self.weight_decay_grid
                .iter()
                .map(|v| ("weight_decay_grid", *v)),
        ) {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} {v}: expected a number >= 0"));
            }
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "val_fraction {}: expected [0, 1)",
                self.val_fraction
            ));
        }
        if !(0.0..=180.0).contains(&self.augment.rotation_deg)
            || !(0.0..=1.0).contains(&self.augment.brightness)
            || !(0.0..=1.0).contains(&self.augment.noise)
        {
            return bad(
                "augment.rotation_deg must be 0-180, augment.brightness and augment.noise 0-1"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn input_spec(&self) -> InputSpec {
        InputSpec::facenet(self.input_size, 1)
    }
}

/// The kind of a head this trainer knows how to label.
fn task_kind(name: &str) -> Result<TaskKind, TrainError> {
    if name == crate::dataset::LV_VOLUME {
        return Ok(TaskKind::Regression);
    }
    TaskSpec::echonet_default(name)
        .map(|t| t.kind)
        .ok_or_else(|| {
            TrainError::Unsupported(format!(
                "task {name:?}: expected one of ef, esv, edv, lv_volume, pacemaker, la_dilation, lv_wall_normal, view_a4c, age, sex, weight, height"
            ))
        })
}

/// Head specification with the regression output scaled to the training labels' mean and
/// spread, so every raw output starts near unit scale.
fn task_spec(name: &str, data: &TrainData, column: usize) -> Result<TaskSpec, TrainError> {
    let mut spec = match TaskSpec::echonet_default(name) {
        Some(t) => t,
        None => TaskSpec {
            name: name.to_string(),
            kind: TaskKind::Regression,
            unit: "mL".into(),
            scale: 1.0,
            offset: 0.0,
            description: "left-ventricular volume of the frame".into(),
        },
    };
    if spec.kind == TaskKind::Regression {
        let values: Vec<f64> = data
            .frames
            .iter()
            .filter_map(|f| f.labels[column])
            .collect();
        if values.is_empty() {
            return Err(TrainError::Unsupported(format!(
                "task {name}: no frame in the data carries this label"
            )));
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        spec.offset = round_sig(mean);
        spec.scale = round_sig(sd.max(1e-3));
    }
    Ok(spec)
}

/// Three significant figures: label statistics end up in the manifest, readable.
fn round_sig(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let p = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * p).round() / p
}

/// Validation results at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub step: usize,
    /// Mean over heads of each head's loss on the validation frames (MSE of the scaled output,
    /// or cross-entropy): the model-selection figure, lower is better.
    pub loss: f64,
    /// Per regression head: mean absolute error in the task's unit; per binary head: accuracy.
    pub per_task: BTreeMap<String, f64>,
    pub train_loss: f64,
}

/// How this invocation treats the run's saved state.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Continue from the work folder's checkpoint when there is one.
    pub resume: bool,
    /// Stop (with a checkpoint) once the run reaches this step, to be resumed later.
    pub pause_at: Option<usize>,
    /// Set (by Ctrl-C, say) to stop after the current step with a checkpoint, as `pause_at`
    /// does: an interrupted run can be resumed, even before its first validation.
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Start from these weights instead of a seeded initialisation (fine-tuning a trained
    /// bundle). A checkpoint being resumed takes precedence: it already holds the weights.
    pub init: Option<std::sync::Arc<InitWeights>>,
}

/// A trained bundle's weights to fine-tune from (`echonet train --init`): its tensors and its
/// heads' specs (their scale and offset are what the head weights were trained against, so they
/// are kept rather than re-estimated from the new data).
#[derive(Debug, Clone)]
pub struct InitWeights {
    pub path: PathBuf,
    pub architecture: Architecture,
    pub input: crate::model::InputSpec,
    pub tasks: Vec<TaskSpec>,
    pub tensors: BTreeMap<String, Tensor>,
}

impl InitWeights {
    /// The f32 tensors and specs of the bundle at `path` (an int8 bundle's f32 tensors serve as
    /// well: its int8 section is a derived copy).
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let bundle = crate::model::read_bundle(path)
            .map_err(|e| TrainError::Unsupported(format!("--init {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            architecture: bundle.manifest.architecture.clone(),
            input: bundle.manifest.input.clone(),
            tasks: bundle.manifest.tasks.clone(),
            tensors: bundle.store.snapshot(),
        })
    }

    /// Refuses a bundle whose network differs from the one `cfg` trains: another width or
    /// embedding, another input, or other heads (names and order), naming what differs.
    pub fn check(&self, cfg: &TrainConfig) -> Result<(), TrainError> {
        let file = self.path.display();
        let arch = Architecture::new(cfg.width, cfg.embedding);
        if self.architecture != arch {
            return Err(TrainError::Unsupported(format!(
                "--init {file}: its architecture is {:?}, the run trains {arch:?} (set --width to the bundle's)",
                self.architecture
            )));
        }
        let spec = cfg.input_spec();
        if self.input != spec {
            return Err(TrainError::Unsupported(format!(
                "--init {file}: its input is {}x{} ({:?}), the run trains {}x{} ({:?}) (set --input-size to the bundle's)",
                self.input.width, self.input.height, self.input, spec.width, spec.height, spec
            )));
        }
        let names: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        if names != cfg.tasks.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(TrainError::Unsupported(format!(
                "--init {file}: its heads are {}, the run trains {} (same heads, same order)",
                names.join(","),
                cfg.tasks.join(",")
            )));
        }
        Ok(())
    }
}

impl RunControl {
    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub best: Validation,
    /// False when the run paused before its last step.
    pub finished: bool,
    pub bundle: PathBuf,
    pub history: Vec<Validation>,
    pub seconds: f64,
    pub seconds_per_step: f64,
}

/// Saved every `eval_every` steps: everything needed to continue the run exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    lr: f64,
    weight_decay: f64,
    step: usize,
    rng: TrainRng,
    best: Option<Validation>,
    history: Vec<Validation>,
    tasks: Vec<TaskSpec>,
    seconds: f64,
}

const CHECKPOINT_KEY: &str = "echonet.checkpoint";

/// Where progress goes: a redrawn bar on a terminal, a log line per validation otherwise.
pub struct Progress {
    tty: bool,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            label: label.to_string(),
        }
    }

    fn step(
        &self,
        step: usize,
        total: usize,
        loss: f64,
        best: Option<&Validation>,
        s_per_step: f64,
    ) {
        if !self.tty {
            // A log line at the first step and every twentieth of the run, so a log file
            // shows progress long before the first validation.
            if step == 1 || step.is_multiple_of((total / 20).max(1)) {
                let eta = s_per_step * total.saturating_sub(step) as f64;
                tracing::info!(
                    run = %self.label,
                    step,
                    of = total,
                    loss = format!("{loss:.4}"),
                    s_per_step = format!("{s_per_step:.2}"),
                    eta = format!("{:.0}m{:02.0}s", (eta / 60.0).floor(), eta % 60.0),
                    "training"
                );
            }
            return;
        }
        let width = 30;
        let done = width * step / total.max(1);
        let bar: String = (0..width)
            .map(|i| {
                if i < done {
                    '='
                } else if i == done {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        let val = best
            .map(|b| format!("val {:.4} (best @{})", b.loss, b.step))
            .unwrap_or_else(|| "val -".into());
        let eta = s_per_step * (total - step) as f64;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{} [{bar}] {step}/{total} loss {loss:.4} {val} {s_per_step:.2} s/step ETA {:.0}m{:02.0}s ",
            self.label,
            (eta / 60.0).floor(),
            eta % 60.0
        );
        let _ = err.flush();
    }

    fn validated(&self, v: &Validation, total: usize) {
        if self.tty {
            eprintln!();
        }
        let per: Vec<String> = v
            .per_task
            .iter()
            .map(|(k, x)| format!("{k} {x:.2}"))
            .collect();
        tracing::info!(
            run = %self.label,
            step = v.step,
            of = total,
            train_loss = format!("{:.4}", v.train_loss),
            val_loss = format!("{:.4}", v.loss),
            val = per.join(", "),
            "validation"
        );
    }
}

/// Frames of the given patients, grouped by patient.
fn frames_by_patient(data: &TrainData, patients: &[String]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = patients
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut out = vec![Vec::new(); patients.len()];
    for (fi, f) in data.frames.iter().enumerate() {
        if let Some(&pi) = index.get(data.clips[f.clip].patient.as_str()) {
            out[pi].push(fi);
        }
    }
    out.retain(|v| !v.is_empty());
    out
}

/// Targets `[n, T]` (scaled like the raw outputs) and their mask (1 where labelled).
fn targets(
    data: &TrainData,
    frames: &[usize],
    tasks: &[TaskSpec],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let t = tasks.len();
    let mut y = Vec::with_capacity(frames.len() * t);
    let mut m = Vec::with_capacity(frames.len() * t);
    for &fi in frames {
        for (c, spec) in tasks.iter().enumerate() {
            match data.frames[fi].labels[c] {
                Some(v) => {
                    y.push(match spec.kind {
                        TaskKind::Regression => ((v - spec.offset) / spec.scale) as f32,
                        TaskKind::Binary => v as f32,
                    });
                    m.push(1f32);
                }
                None => {
                    y.push(0.0);
                    m.push(0.0);
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(y, (frames.len(), t), device)?,
        Tensor::from_vec(m, (frames.len(), t), device)?,
    ))
}

/// Per-head mean loss `[T]` over the labelled entries: squared error for regression heads,
/// binary cross-entropy from logits for binary ones.
fn per_task_loss(
    out: &Tensor,
    y: &Tensor,
    mask: &Tensor,
    binary: &Tensor,
) -> candle_core::Result<Tensor> {
    let sq = (out - y)?.sqr()?;
    // log(1 + e^x) - x y, written stably as max(x, 0) - x y + log(1 + e^-|x|).
    let bce = ((out.relu()? - (out * y)?)? + (out.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let per = (sq.broadcast_mul(&(1.0 - binary)?)? + bce.broadcast_mul(binary)?)?;
    let counts = mask.sum(0)?.clamp(1f32, f32::MAX)?;
    (per * mask)?.sum(0)? / counts
}

fn batch_tensor(
    pixels: Vec<f32>,
    n: usize,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(pixels, (n, 1, size, size), device)
}

/// Puts `tensors` (parameter name, value) into the variable map on `device`, replacing what the
/// seeded initialiser made: a checkpoint being resumed, or a bundle being fine-tuned.
fn set_parameters<'a>(
    varmap: &VarMap,
    tensors: impl Iterator<Item = (&'a str, &'a Tensor)>,
    device: &Device,
) -> Result<(), TrainError> {
    let mut vars = varmap.data().lock().map_err(|_| TrainError::Parameter {
        name: "<variable map>".into(),
        reason: "lock poisoned".into(),
    })?;
    for (name, t) in tensors {
        vars.insert(name.to_string(), Var::from_tensor(&t.to_device(device)?)?);
    }
    Ok(())
}

/// One training run (one learning rate and weight decay) writing into `work_dir`:
/// `checkpoint.safetensors` (resumable state) and `best.safetensors` (the best validation
/// network as a bundle).
#[allow(clippy::too_many_arguments)]
pub fn train_run(
    cfg: &TrainConfig,
    lr: f64,
    weight_decay: f64,
    data: &TrainData,
    split: &PatientSplit,
    provenance: &Provenance,
    work_dir: &Path,
    control: RunControl,
    device: &Device,
    progress: &Progress,
) -> Result<RunOutcome, TrainError> {
    let resume = control.resume;
    let io = |what: &str, e: std::io::Error| {
        TrainError::Unsupported(format!("{what} in {}: {e}", work_dir.display()))
    };
    std::fs::create_dir_all(work_dir).map_err(|e| io("creating the work folder", e))?;
    let checkpoint_path = work_dir.join("checkpoint.safetensors");
    let best_path = work_dir.join("best.safetensors");

    let train_groups = frames_by_patient(data, &split.train);
    let val_frames: Vec<usize> = frames_by_patient(data, &split.val).concat();
    if train_groups.is_empty() {
        return Err(TrainError::Unsupported(
            "no training frames: every patient is held out or has no usable frame".into(),
        ));
    }

    let varmap = VarMap::new();
    let mut state = CheckpointState {
        config: cfg.clone(),
        lr,
        weight_decay,
        step: 0,
        rng: TrainRng::new(cfg.seed.wrapping_add(0x0042_4154_4348)),
        best: None,
        history: vec![],
        tasks: cfg
            .tasks
            .iter()
            .enumerate()
            .map(|(c, name)| task_spec(name, data, c))
            .collect::<Result<_, _>>()?,
        seconds: 0.0,
    };
    let mut restored_optimiser = None;
    if resume && checkpoint_path.is_file() {
        let (saved, tensors) = read_checkpoint(&checkpoint_path)?;
        if saved.config != *cfg || saved.lr != lr || saved.weight_decay != weight_decay {
            return Err(TrainError::Unsupported(format!(
                "{}: the checkpoint was made with other settings (config, lr {} or weight decay {}); delete it or train with the same settings",
                checkpoint_path.display(),
                saved.lr,
                saved.weight_decay
            )));
        }
        set_parameters(
            &varmap,
            tensors
                .iter()
                .filter_map(|(name, t)| Some((name.strip_prefix("param/")?, t))),
            device,
        )?;
        restored_optimiser = Some((tensors, saved.step as u64));
        state = saved;
        tracing::info!(step = state.step, checkpoint = %checkpoint_path.display(), "resuming");
    }

    let initialised = match (&control.init, restored_optimiser.is_some()) {
        (Some(init), false) => {
            init.check(cfg)?;
            set_parameters(
                &varmap,
                init.tensors.iter().map(|(n, t)| (n.as_str(), t)),
                device,
            )?;
            // The heads' scale and offset the weights were trained against.
            state.tasks = init.tasks.clone();
            tracing::info!(init = %init.path.display(), "starting from the bundle's weights");
            Some(init)
        }
        _ => None,
    };

    let arch = Architecture::new(cfg.width, cfg.embedding);
    let net = TrainableIrv1::new(
        &arch,
        1,
        &state.tasks,
        &varmap,
        cfg.seed,
        device,
        DType::F32,
    )?;
    if let Some(init) = initialised {
        // Every parameter must come from the bundle (none made up by the seeded initialiser), and
        // the bundle must hold nothing the network does not use.
        let wanted: std::collections::BTreeSet<&String> = net.parameter_names().iter().collect();
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|n| !init.tensors.contains_key(n.as_str()))
            .map(|n| n.as_str())
            .collect();
        let extra: Vec<&str> = init
            .tensors
            .keys()
            .filter(|n| !wanted.contains(n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(TrainError::Unsupported(format!(
                "--init {}: its tensors do not match the network ({} missing, e.g. {:?}; {} unused, e.g. {:?})",
                init.path.display(),
                missing.len(),
                missing.first(),
                extra.len(),
                extra.first()
            )));
        }
    }
    let names: Vec<String> = net
        .parameter_names()
        .iter()
        .filter(|n| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
        .cloned()
        .collect();
    let vars = net.trainable_vars(&varmap)?;
    let mut opt = Adam::new(
        names.into_iter().zip(vars).collect(),
        AdamConfig::new(lr, weight_decay),
    )?;
    if let Some((tensors, step)) = &restored_optimiser {
        opt.restore(tensors, *step)
            .map_err(|e| TrainError::Unsupported(format!("{}: {e}", checkpoint_path.display())))?;
    }
    let binary = Tensor::from_vec(
        state
            .tasks
            .iter()
            .map(|t| f32::from(u8::from(t.kind == TaskKind::Binary)))
            .collect::<Vec<_>>(),
        state.tasks.len(),
        device,
    )?;

    let spec = cfg.input_spec();
    let black = -spec.mean[0] / spec.std[0];
    let size = cfg.input_size;
    let plane = size * size;
    let started = Instant::now();
    let seconds_before = state.seconds;
    let first_step = state.step;
    let mut recent_loss = Vec::new();
    let mut stop = control.pause_at.unwrap_or(cfg.steps).min(cfg.steps);
    while state.step < stop {
        // Cosine decay from lr to 5 % of it.
        let progress_frac = state.step as f64 / cfg.steps as f64;
        opt.set_lr(lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress_frac).cos())));
        let batch = draw_batch(&train_groups, cfg.batch_size, &mut state.rng);
        let mut pixels = Vec::with_capacity(batch.len() * plane);
        for &fi in &batch {
            pixels.extend(augment(
                &data.frames[fi].pixels,
                size,
                size,
                &cfg.augment,
                black,
                spec.std[0],
                &mut state.rng,
            ));
        }
        let x = batch_tensor(pixels, batch.len(), size, device)?;
        let (y, mask) = targets(data, &batch, &state.tasks, device)?;
        let (_, out) = net.forward_t(&x, true)?;
        let loss = per_task_loss(&out, &y, &mask, &binary)?.mean_all()?;
        let loss_value = f64::from(loss.to_scalar::<f32>()?);
        if !loss_value.is_finite() {
            return Err(TrainError::Unsupported(format!(
                "the training loss became {loss_value} at step {}: lower the learning rate (now {lr})",
                state.step
            )));
        }
        opt.step(&loss.backward()?)?;
        state.step += 1;
        if control.interrupted() && state.step < stop {
            tracing::warn!(
                step = state.step,
                "interrupted: writing a checkpoint at this step (continue with --resume)"
            );
            stop = state.step;
        }
        recent_loss.push(loss_value);
        let elapsed = started.elapsed().as_secs_f64();
        let s_per_step = elapsed / (state.step - first_step) as f64;
        progress.step(
            state.step,
            cfg.steps,
            loss_value,
            state.best.as_ref(),
            s_per_step,
        );

        if state.step.is_multiple_of(cfg.eval_every) || state.step == cfg.steps {
            let train_loss = recent_loss.iter().sum::<f64>() / recent_loss.len().max(1) as f64;
            recent_loss.clear();
            let v = validate(
                &net,
                data,
                &val_frames,
                &state.tasks,
                &binary,
                size,
                device,
                state.step,
                train_loss,
            )?;
            progress.validated(&v, cfg.steps);
            state.history.push(v.clone());
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            let improved = state.best.as_ref().is_none_or(|b| v.loss < b.loss);
            // One copy of the weights serves both the best bundle and the checkpoint.
            let weights = net.export(&varmap)?;
            if improved {
                state.best = Some(v.clone());
                let manifest = manifest_for(cfg, &state, provenance, &v);
                write_bundle(&best_path, &manifest, &weights).map_err(|e| {
                    TrainError::Unsupported(format!("writing {}: {e}", best_path.display()))
                })?;
            }
            write_checkpoint(&checkpoint_path, &state, &weights, &opt)?;
        } else if state.step == stop {
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            write_checkpoint(&checkpoint_path, &state, &net.export(&varmap)?, &opt)?;
        }
    }
    let seconds = seconds_before + started.elapsed().as_secs_f64();
    let finished = state.step >= cfg.steps;
    let best = match (state.best.clone(), finished) {
        (Some(b), _) => b,
        // Paused before the first validation: nothing to select yet.
        (None, false) => Validation {
            step: 0,
            loss: f64::INFINITY,
            per_task: BTreeMap::new(),
            train_loss: f64::NAN,
        },
        (None, true) => {
            return Err(TrainError::Unsupported(
                "the run ended without a validation".into(),
            ))
        }
    };
    Ok(RunOutcome {
        finished,
        best,
        bundle: best_path,
        history: state.history,
        seconds,
        seconds_per_step: seconds / cfg.steps as f64,
    })
}

/// `n` frames, one from each of `n` different patients while there are enough (then patients
/// repeat), a random frame of each.
fn draw_batch(groups: &[Vec<usize>], n: usize, rng: &mut TrainRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        rng.shuffle(&mut order);
        for &g in order.iter().take(n - out.len()) {
            let frames = &groups[g];
            out.push(frames[rng.below(frames.len())]);
        }
    }
    out
}

/// Loss and per-head errors on the validation frames, BatchNorm in inference mode.
#[allow(clippy::too_many_arguments)]
fn validate(
    net: &TrainableIrv1,
    data: &TrainData,
    frames: &[usize],
    tasks: &[TaskSpec],
    binary: &Tensor,
    size: usize,
    device: &Device,
    step: usize,
    train_loss: f64,
) -> Result<Validation, TrainError> {
    let t = tasks.len();
    let mut loss_sum = vec![0f64; t];
    let mut err_sum = vec![0f64; t];
    let mut count = vec![0usize; t];
    for chunk in frames.chunks(64) {
        let pixels: Vec<f32> = chunk
            .iter()
            .flat_map(|&fi| data.frames[fi].pixels.iter().copied())
            .collect();
        let x = batch_tensor(pixels, chunk.len(), size, device)?;
        let (_, out) = net.forward_t(&x, false)?;
        let (y, mask) = targets(data, chunk, tasks, device)?;
        let per = per_task_loss(&out, &y, &mask, binary)?.to_vec1::<f32>()?;
        let raw = out.to_vec2::<f32>()?;
        for c in 0..t {
            let n = chunk
                .iter()
                .filter(|&&fi| data.frames[fi].labels[c].is_some())
                .count();
            loss_sum[c] += f64::from(per[c]) * n as f64;
            count[c] += n;
            for (row, &fi) in raw.iter().zip(chunk) {
                if let Some(truth) = data.frames[fi].labels[c] {
                    let v = tasks[c].finish(f64::from(row[c]));
                    err_sum[c] += match tasks[c].kind {
                        TaskKind::Regression => (v - truth).abs(),
                        TaskKind::Binary => f64::from(u8::from((v >= 0.5) == (truth >= 0.5))),
                    };
                }
            }
        }
    }
    let mut per_task = BTreeMap::new();
    let mut losses = Vec::new();
    for (c, spec) in tasks.iter().enumerate() {
        if count[c] > 0 {
            losses.push(loss_sum[c] / count[c] as f64);
            let key = match spec.kind {
                TaskKind::Regression => format!("{}_mae", spec.name),
                TaskKind::Binary => format!("{}_accuracy", spec.name),
            };
            per_task.insert(key, err_sum[c] / count[c] as f64);
        }
    }
    let loss = if losses.is_empty() {
        // No validation frames: select on the training loss.
        train_loss
    } else {
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    Ok(Validation {
        step,
        loss,
        per_task,
        train_loss,
    })
}

fn manifest_for(
    cfg: &TrainConfig,
    state: &CheckpointState,
    provenance: &Provenance,
    v: &Validation,
) -> Manifest {
    let mut provenance = provenance.clone();
    for (k, x) in &v.per_task {
        provenance.metrics.insert(format!("val_{k}"), *x);
    }
    provenance.metrics.insert("val_loss".into(), v.loss);
    provenance.notes = format!(
        "{}step {} of {}, lr {}, weight decay {}, seed {}, batch {}, rotation ±{}°, brightness ±{}, {:.0} s of training",
        if provenance.notes.is_empty() { String::new() } else { format!("{}; ", provenance.notes) },
        v.step,
        cfg.steps,
        state.lr,
        state.weight_decay,
        cfg.seed,
        cfg.batch_size,
        cfg.augment.rotation_deg,
        cfg.augment.brightness,
        state.seconds
    );
    Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: Architecture::new(cfg.width, cfg.embedding),
        input: cfg.input_spec(),
        tasks: state.tasks.clone(),
        dtype: StorageDtype::F32,
        intended_use: cfg.intended_use.clone(),
        provenance,
        content_hash: String::new(),
    }
}

fn write_checkpoint(
    path: &Path,
    state: &CheckpointState,
    params: &BTreeMap<String, Tensor>,
    opt: &Adam,
) -> Result<(), TrainError> {
    let mut all: Vec<(String, Tensor)> = params
        .iter()
        .map(|(k, v)| (format!("param/{k}"), v.clone()))
        .collect();
    all.extend(opt.state());
    let mut encoded = Vec::with_capacity(all.len());
    for (name, t) in &all {
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let bytes: Vec<u8> = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        encoded.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let fail = |what: String| TrainError::Unsupported(format!("{}: {what}", path.display()));
    let mut views = Vec::with_capacity(encoded.len());
    for (name, shape, bytes) in &encoded {
        views.push((
            name.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| fail(format!("{name}: {e:?}")))?,
        ));
    }
    let json = serde_json::to_string(state).map_err(|e| fail(e.to_string()))?;
    let metadata = std::collections::HashMap::from([(CHECKPOINT_KEY.to_string(), json)]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| fail(format!("{e:?}")))?;
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| fail(e.to_string()))
}

fn read_checkpoint(path: &Path) -> Result<(CheckpointState, BTreeMap<String, Tensor>), TrainError> {
    let fail = |what: String| TrainError::Unsupported(format!("{}: {what}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| fail(format!("not a checkpoint ({e:?})")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CHECKPOINT_KEY))
        .ok_or_else(|| {
            fail(format!(
                "no {CHECKPOINT_KEY} metadata: not an echonet checkpoint"
            ))
        })?;
    let state: CheckpointState =
        serde_json::from_str(json).map_err(|e| fail(format!("{CHECKPOINT_KEY}: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("{e:?}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(format!(
                "tensor {name} is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::from_vec(values, view.shape(), &Device::Cpu)?);
    }
    Ok((state, tensors))
}

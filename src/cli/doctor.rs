//! `echonet doctor`: what this machine and installation can do — CPU cores, CUDA, the shipped
//! model catalog, any bundles named, and the configuration — each as a check that passes or
//! says what is wrong. Exit status 1 when any check fails.

use std::path::PathBuf;
use std::process::ExitCode;

use echonet_edge::config::Config;
use echonet_edge::model::catalog::Catalog;
use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};
use echonet_edge::runtime::{self, DeviceChoice};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bundle(s) to verify besides the shipped catalog.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Configuration to check (default: firmware-config/default.toml when present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

struct Report {
    checks: Vec<Value>,
    failed: bool,
}

impl Report {
    fn add(&mut self, name: &str, result: Result<Value, String>) {
        match result {
            Ok(detail) => self
                .checks
                .push(json!({"check": name, "ok": true, "detail": detail})),
            Err(e) => {
                self.failed = true;
                self.checks
                    .push(json!({"check": name, "ok": false, "error": e}));
            }
        }
    }
}

fn check_bundle(path: &PathBuf) -> Result<Value, String> {
    let bundle = read_bundle(path).map_err(|e| e.to_string())?;
    // Building the model proves every tensor is present, shaped right and used.
    let model =
        EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).map_err(|e| e.to_string())?;
    let m = &bundle.manifest;
    // An int8 bundle: its scheme, calibration and measured drift, and which layers stay f32.
    let int8 = bundle.quantization.as_ref().map(|q| {
        json!({
            "scheme": q.info.scheme,
            "method": q.info.method,
            "headroom": q.info.headroom,
            "calibration": q.info.calibration,
            "drift": q.info.drift,
            "features_rel_l2": q.info.features_rel_l2,
            "int8_layers": q.info.layers.iter().filter(|l| l.precision == "int8").count(),
            "f32_layers": q.info.layers.iter().filter(|l| l.precision == "f32")
                .map(|l| json!({"label": l.label, "reason": l.reason})).collect::<Vec<_>>(),
        })
    });
    Ok(json!({
        "file": path,
        "architecture": m.architecture,
        "input": m.input,
        "tasks": m.task_names(),
        "dtype": m.dtype.as_str(),
        "precision_on_cpu": model.precision(),
        "backend_on_cpu": model.backend_name(),
        "int8": int8,
        // `on: threshold ...` or `off: the bundle has no training statistics` (item 2 of #13).
        "ood_gate": model.ood_gate(),
        "ood": bundle.ood.as_ref().map(|o| &o.info),
        "intended_use": m.intended_use,
        "provenance": m.provenance,
        "content_hash": m.content_hash,
    }))
}

/// Every CUDA device the driver sees (name, compute capability, memory, driver) and whether
/// candle can open it. Not having CUDA is a fact about the machine, not a
/// failure of the installation, so this is never a failed check.
fn cuda_report() -> Value {
    if !cfg!(feature = "cuda") {
        return json!({
            "usable": false,
            "reason": "CPU binary: `make cuda` builds the CUDA one (this has no `--features cuda`)",
        });
    }
    let count = echonet_edge::gpu::device_count();
    if count == 0 {
        return json!({
            "usable": false,
            "reason": "no CUDA device: the NVIDIA driver (libcuda.so.1) sees none",
        });
    }
    let devices: Vec<Value> = (0..count)
        .map(|n| {
            let info = match echonet_edge::gpu::describe(n) {
                Ok(info) => serde_json::to_value(info).unwrap_or(Value::Null),
                Err(e) => json!({"ordinal": n, "error": e}),
            };
            let usable = match runtime::open_device(DeviceChoice::Cuda(n)) {
                Ok(_) => json!(true),
                Err(e) => json!(e.to_string()),
            };
            json!({"device": format!("cuda:{n}"), "info": info, "candle_opens_it": usable})
        })
        .collect();
    json!({
        "usable": true,
        "kernels_built_for": echonet_edge::gpu::kernels_built_for(),
        "devices": devices,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let threads = runtime::configure_cpu_threads(None);
    let mut r = Report {
        checks: Vec::new(),
        failed: false,
    };
    r.add(
        "build",
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "cuda_feature": cfg!(feature = "cuda"),
        })),
    );
    r.add(
        "cpu",
        Ok(json!({"available_cores": runtime::available_cores(), "threads": threads})),
    );
    r.add("cuda", Ok(cuda_report()));

    let dir = Catalog::default_dir();
    let manifest_path = dir.join("MANIFEST.toml");
    match Catalog::load(&manifest_path) {
        Err(e) => r.add("model catalog", Err(e.to_string())),
        Ok(catalog) => {
            r.add(
                "model catalog",
                Ok(json!({
                    "file": manifest_path,
                    "default": catalog.default,
                    "models": catalog.models.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                })),
            );
            for entry in &catalog.models {
                let path = Catalog::entry_path(&dir, entry);
                let result = check_bundle(&path).and_then(|detail| {
                    if detail["content_hash"] == json!(entry.content_hash) {
                        Ok(detail)
                    } else {
                        Err(format!(
                            "{}: content hash {} differs from MANIFEST.toml's {}",
                            path.display(),
                            detail["content_hash"],
                            entry.content_hash
                        ))
                    }
                });
                r.add(&format!("bundled model {}", entry.id), result);
            }
        }
    }
    for path in &args.models {
        r.add(&format!("bundle {}", path.display()), check_bundle(path));
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("firmware-config/default.toml")).filter(|p| p.exists()));
    if let Some(path) = config_path {
        let result = Config::load(&path)
            .map(|c| json!({"file": path, "model": c.model}))
            .map_err(|e| e.to_string());
        r.add("config", result);
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": !r.failed, "checks": r.checks}))?
        );
    } else {
        for c in &r.checks {
            let ok = c["ok"].as_bool().unwrap_or(false);
            println!(
                "[{}] {}",
                if ok { " ok " } else { "FAIL" },
                c["check"].as_str().unwrap_or("?")
            );
            let body = if ok { &c["detail"] } else { &c["error"] };
            for line in detail_lines(body) {
                println!("       {line}");
            }
        }
    }
    Ok(if r.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The longest line `doctor` prints in text mode (`--json` has everything in full).
const MAX_LINE: usize = 100;

/// A check's detail as short lines: an object one `key: value` line per field, anything else
/// one line; each cut at `MAX_LINE` characters with a pointer to `--json`.
fn detail_lines(v: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let lines: Vec<String> = match v {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}: {}", text(v)))
            .collect(),
        other => vec![text(other)],
    };
    lines.into_iter().map(|l| clip_line(&l)).collect()
}

fn clip_line(line: &str) -> String {
    const MORE: &str = " ... (--json for all)";
    if line.chars().count() <= MAX_LINE {
        return line.to_string();
    }
    let keep: String = line.chars().take(MAX_LINE - MORE.len()).collect();
    format!("{keep}{MORE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_lines_are_one_per_field_and_never_long() {
        let detail = json!({"file": "m.safetensors", "tasks": vec!["ef"; 400]});
        let lines = detail_lines(&detail);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "file: m.safetensors");
        assert!(lines[1].starts_with("tasks: [\"ef\""));
        assert!(lines.iter().all(|l| l.chars().count() <= MAX_LINE));
        assert!(lines[1].ends_with("(--json for all)"));
    }
}

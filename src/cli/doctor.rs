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
    EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).map_err(|e| e.to_string())?;
    let m = &bundle.manifest;
    Ok(json!({
        "file": path,
        "architecture": m.architecture,
        "input": m.input,
        "tasks": m.task_names(),
        "dtype": m.dtype.as_str(),
        "intended_use": m.intended_use,
        "provenance": m.provenance,
        "content_hash": m.content_hash,
    }))
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
    let cuda = match runtime::open_device(DeviceChoice::Cuda(0)) {
        Ok(_) => Ok(json!("cuda:0 usable")),
        // Not having CUDA is a fact about the machine, not a failure of the installation.
        Err(e) => Ok(json!(format!("not usable: {e}"))),
    };
    r.add("cuda", cuda);

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
            let body = if ok {
                c["detail"].to_string()
            } else {
                c["error"].to_string()
            };
            println!(
                "[{}] {}: {}",
                if ok { " ok " } else { "FAIL" },
                c["check"].as_str().unwrap_or("?"),
                body
            );
        }
    }
    Ok(if r.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

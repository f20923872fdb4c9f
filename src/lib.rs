//! echonet-edge: the EchoNet echocardiography model (InceptionResNet-v1, Ghorbani et al.) as a
//! bedside runtime. `model` holds the network, bundles and weight import; `runtime` the device and
//! thread set-up; `input` turns files into normalised batches; `capture` the frame sources;
//! `preprocess` finds the scanning sector, checks frame quality and prepares frames for the model;
//! `sampler`, `aggregate` and `pipeline` make the live 10 fps window and its estimates; `publish`
//! JSON Lines and the bedside display (HTTP server, live page, SSE); `explain` where the model
//! looks (SmoothGrad saliency, occlusion); `config` the deployment profiles.

// Nothing on the frame path may panic: bad input is an error value, handled once. The lints that
// enforce it (unwrap/expect/panic denied) are in Cargo.toml's `[lints]` table, for every target.

pub mod aggregate;
pub mod capture;
pub mod config;
pub mod contained_panic;
pub mod daemon;
pub mod dataset;
pub mod eval;
pub mod explain;
pub mod frame;
pub mod fuzzing;
pub mod gpu;
pub mod input;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod phantom;
pub mod pipeline;
pub mod preprocess;
pub mod publish;
pub mod runtime;
pub mod safe_file;
pub mod sampler;
pub mod sd_notify;
pub mod timefmt;
pub mod train;
pub mod volume_curve;

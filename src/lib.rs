//! echonet-edge: the EchoNet echocardiography model (InceptionResNet-v1, Ghorbani et al.) as a
//! bedside runtime. `model` holds the network, bundles and weight import; `runtime` the device and
//! thread set-up; `input` turns files into normalised batches; `config` the deployment profiles;
//! `publish` the bedside display (HTTP server, live page, SSE) fed by the publisher.

pub mod capture;
pub mod config;
pub mod frame;
pub mod input;
pub mod model;
pub mod publish;
pub mod runtime;

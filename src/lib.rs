//! echonet-edge: the EchoNet echocardiography model (InceptionResNet-v1, Ghorbani et al.) as a
//! bedside runtime. `model` holds the network, bundles and weight import; `runtime` the device and
//! thread set-up; `input` turns files into normalised batches; `preprocess` finds the scanning
//! sector, checks frame quality and prepares live frames for the model; `config` the deployment
//! profiles.

pub mod capture;
pub mod config;
pub mod frame;
pub mod input;
pub mod model;
pub mod preprocess;
pub mod runtime;

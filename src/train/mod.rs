//! The trainable form of the EchoNet network: InceptionResNet-v1 with live BatchNorm and candle's
//! differentiable convolutions, so it can be trained (`echonet train`) and differentiated with
//! respect to its input (SmoothGrad). Its parameters carry facenet-pytorch's names, and `export`
//! turns them into exactly the tensors a bundle holds, so a trained network loads unchanged into
//! the folded inference path of [`crate::model`].

pub mod adam;
pub mod augment;
pub mod data;
pub mod init;
pub mod net;
pub mod ood;
pub mod pool;
pub mod trainer;

pub use init::SeededVarMap;
pub use net::TrainableIrv1;
pub use pool::max_pool_3s2;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "parameter `{name}` is not in the variable map (was the network built from another map?)"
    )]
    MissingParameter { name: String },
    #[error("parameter `{name}`: {reason}")]
    Parameter { name: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

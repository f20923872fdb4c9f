//! Publishing estimates: the record schema (`record`), JSON Lines to stdout or a file (`jsonl`),
//! and the bedside display — a `DisplayHub` the publisher feeds (estimates, the live frame,
//! metrics) and an HTTP server that serves a live page, an SSE stream, the trend history,
//! Prometheus metrics and a health check from it (`hub`, `http`).

pub mod export;
pub mod frame_mask;
pub mod http;
pub mod http_wire;
pub mod hub;
pub mod journal;
pub mod jsonl;
pub mod record;

pub use http::{DisplayServer, ServerConfig, ServerError, DEFAULT_PORT};
pub use hub::{DisplayHub, FrameError, Health, HubConfig, HubEvent, Subscription, TrendPoint};
pub use record::{EstimateRecord, ModelInfo, SourceSummary, SCHEMA as ESTIMATE_SCHEMA};

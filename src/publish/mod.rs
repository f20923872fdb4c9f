//! Publishing estimates off the device. Today: the bedside display, a `DisplayHub` that the
//! publisher feeds (estimates, the live frame, metrics) and an HTTP server that serves a live page,
//! an SSE stream, the trend history, Prometheus metrics and a health check from it.

pub mod http;
pub mod hub;

pub use http::{DisplayServer, ServerConfig, ServerError, DEFAULT_PORT};
pub use hub::{
    DisplayHub, EstimateError, EstimateStatus, FrameError, Health, HubConfig, HubEvent,
    Subscription, TrendPoint, ESTIMATE_SCHEMA,
};

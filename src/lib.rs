//! loragate: a multi-tenant, OpenAI-compatible LLM inference gateway over
//! mistral.rs.
//!
//! - [`api`]: OpenAI routes, wire types, validation, SSE
//! - [`engine`]: the inference seam, admission control, the mistral.rs engine
//! - [`config`]: the TOML file and environment overrides
//! - [`metrics`]: Prometheus metrics
//! - [`fixture`]: deterministic tiny models for tests

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod metrics;
pub mod server;
pub mod telemetry;

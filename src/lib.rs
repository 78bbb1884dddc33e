//! loragate: a multi-tenant, OpenAI-compatible LLM inference gateway over
//! mistral.rs.
//!
//! - [`api`]: OpenAI routes, wire types, validation, SSE
//! - [`engine`]: the inference seam, admission control, the mistral.rs engine
//! - [`auth`]: API keys, JWTs, tenants
//! - [`ratelimit`], [`metering`]: per-tenant limits and usage (Redis or in-process)
//! - [`config`]: the TOML file and environment overrides
//! - [`metrics`]: Prometheus metrics
//! - [`clock`]: Unix seconds, the one conversion
//! - [`fixture`]: deterministic tiny models for tests

pub mod adapters;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod metering;
pub mod metrics;
pub mod prompt;
pub mod ratelimit;
pub mod server;
pub mod telemetry;

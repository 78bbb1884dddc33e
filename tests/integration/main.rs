//! Every HTTP and process-level integration test, as modules of one test
//! binary: one file per binary linked mistral.rs once per file, which made
//! the suite's build link seventeen times.

mod common;

mod adapter_merge;
mod adapters_api;
mod cancellation;
mod chat_api;
mod cli;
mod concurrent_load;
mod engine_restart;
mod errors;
mod fairness;
mod isolation;
mod metrics;
mod metrics_access;
mod open_mode;
mod openapi;
mod paged_kv;
mod ratelimit_redis;
mod shared_base;
mod tenancy;
mod tools_api;
mod upstream;

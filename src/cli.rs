//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loragate",
    version,
    about = "OpenAI-compatible multi-tenant LLM gateway over mistral.rs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API.
    Serve {
        /// Configuration file (TOML); `LORAGATE__SECTION__KEY` variables override it.
        #[arg(
            long,
            short,
            default_value = "config/default.toml",
            env = "LORAGATE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Write the deterministic tiny test model (random Llama weights).
    TinyModel {
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = crate::fixture::DEFAULT_SEED)]
        seed: u64,
    },
}

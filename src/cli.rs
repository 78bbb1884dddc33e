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
    /// Create an API key: prints the key once, and the hash to put in the config.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Mint a JWT (HS256, with the secret the config names) for local use.
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
    },
    /// Write the deterministic tiny test model (random Llama weights).
    TinyModel {
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = crate::fixture::DEFAULT_SEED)]
        seed: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a new key for a tenant (or `--admin`).
    Create {
        #[arg(long, required_unless_present = "admin")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        admin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    Mint {
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// Tenant the token acts for (omit with `--scope admin`).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_parser = ["tenant", "admin"], default_value = "tenant")]
        scope: String,
        #[arg(long, default_value = "local-user")]
        subject: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

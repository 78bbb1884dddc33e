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
    /// Write a seeded PEFT LoRA adapter (q_proj/v_proj, alpha = 2 x rank) for
    /// the tiny test model, or shaped for the model folder `--base`.
    TinyAdapter {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A model folder (config.json) to shape the adapter for.
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
        rank: u64,
    },
    /// Upload an adapter to a running gateway (admin key), with a progress bar.
    Upload(UploadArgs),
    /// Convert a Llama GGUF file into a safetensors model folder (f32), the
    /// form adapters can be applied to.
    ConvertGguf {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
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

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin API key (or token).
    #[arg(long, env = "LORAGATE_ADMIN_KEY")]
    pub key: Option<String>,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub name: String,
    /// Folder with adapter_config.json and adapter_model.safetensors.
    #[arg(long)]
    pub dir: PathBuf,
    /// The generation being replaced (required to replace an existing adapter).
    #[arg(long)]
    pub expected_generation: Option<u64>,
}

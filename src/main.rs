use std::process::ExitCode;

use clap::Parser;
use loragate::cli::{Cli, Command};
use loragate::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            loragate::telemetry::init(&config.logging);
            loragate::server::run(config).await
        }
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Openapi => {
            print!("{}", loragate::api::openapi::spec_json());
            Ok(())
        }
        Command::TinyModel { out, seed } => {
            loragate::fixture::write_tiny_llama(&out, seed)?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

//! The `loragate` binary: `serve`, key and JWT tools, model conversion and
//! the fixture writers (see `cli`).

mod convert;
mod upload;

use std::process::ExitCode;

use clap::Parser;
use loragate::cli::{Cli, Command, JwtCommand, KeysCommand};
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
        Command::Keys {
            command: KeysCommand::Create { tenant, admin },
        } => {
            let key = loragate::auth::keys::generate_key();
            let hash = loragate::config::KeyHash::of_key(&key).to_config_string();
            let owner = if admin {
                "admin".to_string()
            } else {
                format!("tenant {}", tenant.unwrap_or_default())
            };
            println!("API key for {owner} (shown once; store it now):\n  {key}");
            if admin {
                println!("Add to [auth] admin_api_keys:\n  \"{hash}\"");
            } else {
                println!("Add to the tenant's api_keys:\n  \"{hash}\"");
            }
            Ok(())
        }
        Command::Jwt {
            command:
                JwtCommand::Mint {
                    config,
                    tenant,
                    scope,
                    subject,
                    ttl_secs,
                },
        } => {
            let config = Config::load(&config)?;
            println!("{}", mint(&config, tenant, &scope, subject, ttl_secs)?);
            Ok(())
        }
        Command::TinyAdapter {
            out,
            seed,
            base,
            rank,
        } => {
            loragate::fixture::lora::write_seeded_adapter(
                &out,
                base.as_deref(),
                seed,
                rank as usize,
            )?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Upload(args) => {
            let record = upload::upload(args).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        Command::ConvertGguf { input, out } => {
            convert::convert_gguf(&input, &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::TinyModel { out, seed } => {
            loragate::fixture::write_tiny_llama(&out, seed)?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

fn mint(
    config: &Config,
    tenant: Option<String>,
    scope: &str,
    subject: String,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    use loragate::auth::jwt::{Claims, Scope, mint_hs256};
    let jwt = config
        .auth
        .jwt
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the config has no [auth.jwt] section"))?;
    let secret = jwt
        .hs256_secret
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("minting needs HS256 with auth.jwt.hs256_secret_env set"))?;
    let scope = if scope == "admin" {
        Scope::Admin
    } else {
        Scope::Tenant
    };
    if scope == Scope::Tenant {
        let id = tenant
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--tenant is required for tenant scope"))?;
        if !config.tenants.iter().any(|t| t.id == id) {
            anyhow::bail!("tenant `{id}` is not in the config");
        }
    }
    let now = loragate::clock::unix_now_secs();
    let claims = Claims {
        sub: subject,
        tenant,
        scope,
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
        exp: now + ttl_secs,
        nbf: Some(now),
        iat: now,
    };
    mint_hs256(secret, &claims)
}

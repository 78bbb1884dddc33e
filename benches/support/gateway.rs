//! The gateway as its own process for the HTTP benchmarks (fairness, noisy
//! neighbours): keys, a free port, a config written to a scratch folder,
//! start-up until `/ready`, and a kill when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

pub struct Gateway {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new API key and the `sha256:` line a config accepts it by.
pub fn key_pair() -> (String, String) {
    let key = loragate::auth::keys::generate_key();
    let hash = loragate::config::KeyHash::of_key(&key).to_config_string();
    (key, hash)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `binary serve` on the config `config(scratch folder)` listening on
/// `port`, and waits (up to two minutes) until it is ready.
pub async fn start(
    binary: &str,
    port: u16,
    config: impl FnOnce(&Path) -> String,
) -> Result<Gateway> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(dir.path()))?;
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the gateway")?;
    let gateway = Gateway {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(response) = client.get(format!("{}/ready", gateway.base)).send().await
            && response.status() == 200
        {
            return Ok(gateway);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the gateway did not become ready")
}

/// The nearest-rank percentile `p` (0 to 1) of sorted, non-empty values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

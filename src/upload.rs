//! `loragate upload`: sends an adapter to a gateway's admin API as
//! multipart form data, showing a progress bar while the weights go out.

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use loragate::cli::UploadArgs;

pub async fn upload(args: UploadArgs) -> anyhow::Result<serde_json::Value> {
    let config = std::fs::read(args.dir.join("adapter_config.json"))?;
    let weights_path = args.dir.join("adapter_model.safetensors");
    let size = std::fs::metadata(&weights_path)?.len();
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", args.name));
    let file = tokio::fs::File::open(&weights_path).await?;
    let progress = bar.clone();
    let chunks = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.inc(bytes.len() as u64);
        }
    });
    let weights =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), size)
            .file_name("adapter_model.safetensors");
    let mut form = reqwest::multipart::Form::new()
        .text("name", args.name.clone())
        .part(
            "adapter_config",
            reqwest::multipart::Part::bytes(config).file_name("adapter_config.json"),
        )
        .part("adapter_model", weights);
    if let Some(generation) = args.expected_generation {
        form = form.text("expected_generation", generation.to_string());
    }
    let url = format!(
        "{}/admin/v1/tenants/{}/adapters",
        args.url.trim_end_matches('/'),
        args.tenant
    );
    let mut request = reqwest::Client::new().post(url).multipart(form);
    if let Some(key) = &args.key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    bar.finish_and_clear();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no error message");
        anyhow::bail!("upload refused ({status}): {message}");
    }
    Ok(body)
}

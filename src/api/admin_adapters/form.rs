//! Reading an upload's multipart form. `adapter_model` (up to
//! `adapters.max_bytes`) is streamed into the upload's staging folder as it
//! arrives, hashed and size-capped on the way; the small fields are read
//! into memory with caps of their own.

use actix_multipart::Multipart;
use futures_util::TryStreamExt;

use crate::adapters::staging::Received;
use crate::adapters::{AdapterError, Staging};
use crate::error::ApiError;

/// Largest accepted `adapter_config.json`.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

pub(super) struct Upload {
    pub name: String,
    pub config: Vec<u8>,
    pub weights: Received,
    pub expected: Option<u64>,
    pub shared: bool,
}

fn form_error(error: actix_multipart::MultipartError) -> ApiError {
    ApiError::Upload(error.to_string())
}

async fn read_field(
    field: &mut actix_multipart::Field,
    limit: u64,
    too_large: impl Fn() -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.try_next().await.map_err(form_error)? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Streams one field into the staged weights file.
async fn stream_weights(
    field: &mut actix_multipart::Field,
    staging: &Staging,
    limit: u64,
) -> Result<Received, ApiError> {
    let mut writer = staging.weights_writer(limit).await?;
    while let Some(chunk) = field.try_next().await.map_err(form_error)? {
        writer.write(&chunk).await?;
    }
    Ok(writer.finish().await?)
}

fn text(bytes: &[u8], field: &str) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::Upload(format!("`{field}` must be UTF-8")))
}

/// Reads the form; the weights land in `staging`, which the caller discards
/// if this fails.
pub(super) async fn read_upload(
    mut form: Multipart,
    staging: &Staging,
    max_bytes: u64,
) -> Result<Upload, ApiError> {
    let (mut name, mut config, mut weights, mut expected) = (None, None, None, None);
    let mut shared = false;
    while let Some(mut field) = form.try_next().await.map_err(form_error)? {
        let field_name = field.name().unwrap_or_default().to_string();
        match field_name.as_str() {
            "name" => {
                let bytes = read_field(&mut field, 256, || {
                    ApiError::Upload("`name` is too long".into())
                })
                .await?;
                name = Some(text(&bytes, "name")?);
            }
            "expected_generation" => {
                let bytes = read_field(&mut field, 32, || {
                    ApiError::Upload("`expected_generation` is too long".into())
                })
                .await?;
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                expected = Some(text.parse::<u64>().map_err(|_| {
                    ApiError::Upload(format!(
                        "`expected_generation` must be a number, got `{text}`"
                    ))
                })?);
            }
            "shared" => {
                let bytes = read_field(&mut field, 8, || {
                    ApiError::Upload("`shared` must be true or false".into())
                })
                .await?;
                shared = match String::from_utf8_lossy(&bytes).trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::Upload(format!(
                            "`shared` must be true or false, got `{other}`"
                        )));
                    }
                };
            }
            "adapter_config" => {
                config = Some(
                    read_field(&mut field, MAX_CONFIG_BYTES, || {
                        AdapterError::TooLarge {
                            limit: MAX_CONFIG_BYTES,
                        }
                        .into()
                    })
                    .await?,
                );
            }
            "adapter_model" if weights.is_some() => {
                return Err(ApiError::Upload(
                    "the form field `adapter_model` appears twice".into(),
                ));
            }
            "adapter_model" => {
                weights = Some(stream_weights(&mut field, staging, max_bytes).await?);
            }
            other => {
                return Err(ApiError::Upload(format!(
                    "unexpected form field `{other}`; send name, adapter_config, adapter_model and optionally expected_generation and shared"
                )));
            }
        }
    }
    let missing = |field: &str| ApiError::Upload(format!("the form field `{field}` is missing"));
    Ok(Upload {
        name: name.ok_or_else(|| missing("name"))?,
        config: config.ok_or_else(|| missing("adapter_config"))?,
        weights: weights.ok_or_else(|| missing("adapter_model"))?,
        expected,
        shared,
    })
}

//! What protects a gateway that runs without authentication, where every
//! caller is an admin. Binding to loopback (checked at start-up) keeps other
//! machines out; these rules keep out the browser on this machine acting for
//! a foreign web page:
//! - `Host` must be a loopback name or address, which defeats DNS rebinding
//!   (a foreign name resolved to 127.0.0.1 still carries its own `Host`);
//! - `Origin`, when a browser sends one, must be loopback too, which defeats
//!   cross-site form posts and `fetch` calls that need no CORS preflight.
//!
//! `/health` and `/ready` stay open to any `Host`: they tell nothing, and
//! orchestrators probe them by address.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;

use crate::app::AppState;
use crate::error::ApiError;

/// Routes that answer whatever the `Host`.
const PROBES: &[&str] = &[crate::api::routes::HEALTH, crate::api::routes::READY];

/// Whether `authority` (`host[:port]`, as in `Host`) names this machine:
/// `localhost`, 127.0.0.0/8 or `[::1]`, with any port.
pub fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((inside, "")) => inside,
            Some((inside, port)) if valid_port(port.strip_prefix(':')) => inside,
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) if valid_port(Some(port)) => host,
            Some(_) => return false,
            None => authority,
        },
    };
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn valid_port(port: Option<&str>) -> bool {
    port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// Whether an `Origin` header names a page served from this machine.
/// `null` (sandboxed frames, files, some redirects) is not one.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && is_loopback_authority(authority)
}

/// Client-chosen text quoted in an error message, kept short.
fn quoted(text: &str) -> String {
    text.chars().take(100).collect()
}

/// The open-mode rules for one request: `Host` (or the URI's authority)
/// and `Origin`.
pub fn check(path: &str, host: Option<&str>, origin: Option<&str>) -> Result<(), ApiError> {
    if PROBES.contains(&path) {
        return Ok(());
    }
    if let Some(host) = host
        && !is_loopback_authority(host)
    {
        return Err(ApiError::Refused {
            code: "forbidden_host",
            message: format!(
                "Authentication is off, so this gateway answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]); Host `{}` is not one. Turn authentication on (auth.enabled = true) to serve other names.",
                quoted(host)
            ),
        });
    }
    if let Some(origin) = origin
        && !is_loopback_origin(origin)
    {
        return Err(ApiError::Refused {
            code: "forbidden_origin",
            message: format!(
                "Authentication is off, so requests from web pages are accepted only from loopback origins; Origin `{}` is not one. Turn authentication on (auth.enabled = true) to accept them.",
                quoted(origin)
            ),
        });
    }
    Ok(())
}

/// Middleware applying [`check`] while authentication is off.
pub async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let open = request
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| !state.auth.enabled());
    if open {
        let headers = request.headers();
        // An unreadable (non-ASCII) header is as foreign as a wrong one.
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap_or("(not ASCII)").to_string())
        };
        let host = text(header::HOST).or_else(|| request.uri().authority().map(|a| a.to_string()));
        let origin = text(header::ORIGIN);
        if let Err(error) = check(request.path(), host.as_deref(), origin.as_deref()) {
            return Ok(request.error_response(error).map_into_right_body());
        }
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_with_any_port() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback_authority(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.5:8080",
            "0.0.0.0:8080",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "[::1]x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_authority(host), "{host}");
        }
    }

    #[test]
    fn origins() {
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://127.0.0.1"));
        for origin in [
            "null",
            "https://evil.example",
            "http://localhost.evil.example",
            "file://",
            "chrome-extension://abc",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }

    #[test]
    fn refusals_carry_their_codes_and_probes_are_exempt() {
        let code = |result: Result<(), ApiError>| result.err().and_then(|e| e.body().error.code);
        assert_eq!(
            code(check("/v1/models", Some("evil.example"), None)).as_deref(),
            Some("forbidden_host")
        );
        assert_eq!(
            code(check(
                "/v1/models",
                Some("localhost"),
                Some("https://evil.example")
            ))
            .as_deref(),
            Some("forbidden_origin")
        );
        assert!(check("/v1/models", None, None).is_ok());
        assert!(check("/health", Some("10.0.0.5:8080"), None).is_ok());
    }
}

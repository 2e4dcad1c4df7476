//! Request bodies: at most 1 MiB, valid JSON, then a DTO that denies unknown
//! fields. Each failure is a 4xx naming what was wrong.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body deserialized into `T` with precise errors: 413 when too big,
/// `malformed_json` when not JSON, `unknown_field` / `invalid_field` (with the
/// path of the field) when the shape is wrong.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let body: Body = req.into_body();
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses a body; an empty body is read as `{}` so that bodiless POSTs work.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default();
            // serde_path_to_error's path already ends with the unknown key.
            let field = if path == "." { field.to_owned() } else { path };
            ApiError::bad_request("unknown_field", format!("unknown field {field:?}: {inner}"))
                .with("field", field)
        } else if let Some(rest) = inner.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default().to_owned();
            ApiError::bad_request("invalid_field", format!("{field}: is required"))
                .with("field", field)
        } else {
            ApiError::bad_request("invalid_field", format!("{path}: {inner}")).with("field", path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Dto {
        name: String,
        tier: Option<u8>,
    }

    fn code(bytes: &[u8]) -> String {
        match parse::<Dto>(bytes) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{} {}", e.code, e.message),
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(code(br#"{"name":"a"}"#), "ok");
        assert!(
            code(br#"{"name":"a","bogus":1}"#).starts_with("unknown_field unknown field \"bogus\"")
        );
        assert!(code(br#"{"name":"#).starts_with("malformed_json"));
        assert!(code(br#"[1]"#).starts_with("malformed_json"));
        assert!(code(br#"{}"#).starts_with("invalid_field name: is required"));
        assert!(code(br#"{"name":"a","tier":"2"}"#).starts_with("invalid_field tier:"));
    }
}

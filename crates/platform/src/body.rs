//! Request bodies: at most 1 MiB, arrived within the body timeout, valid
//! JSON without a duplicated key, then a DTO that denies unknown fields.
//! Each failure is a 4xx naming what was wrong.

use crate::error::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

pub use holdfast_cp::body::MAX_BODY_BYTES;
use holdfast_cp::body::{BodyDeadline, BodyError, read_limited};

/// A JSON body deserialized into `T` with precise errors: 413 when too big,
/// 408 when it did not arrive in time, `malformed_json` when not JSON,
/// `duplicate_key` (naming the key), `unknown_field` / `invalid_field` (with
/// the path of the field) when the shape is wrong.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read(req.into_body()).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`] (the one limiter both
/// edges share, `holdfast_cp::body`).
pub async fn read(body: Body) -> Result<Bytes, ApiError> {
    read_limited(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TimedOut => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            ),
            BodyError::Unreadable => {
                ApiError::bad_request("unreadable_body", "the request body could not be read")
            }
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
        })
}

/// Middleware: the whole body of a request must arrive within `limit` of
/// its head. A slow body then fails its reader with [`BodyDeadline`] (which
/// [`read`] answers with 408), and the answer closes the connection, whose
/// unread rest of a body cannot be skipped.
pub async fn deadline(req: Request, next: Next, limit: Duration) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let until = tokio::time::Instant::now() + limit;
    let stream =
        futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
            let mut inner = state?;
            let item: Result<Bytes, axum::BoxError> =
                match tokio::time::timeout_at(until, inner.next()).await {
                    Ok(Some(Ok(bytes))) => Ok(bytes),
                    Ok(Some(Err(e))) => Err(e.into()),
                    Ok(None) => return None,
                    Err(_) => Err(Box::new(BodyDeadline)),
                };
            let next = item.is_ok().then_some(inner);
            Some((item, next))
        });
    let mut response = next
        .run(Request::from_parts(parts, Body::from_stream(stream)))
        .await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Parses a body; an empty body is read as `{}` so that bodiless POSTs work
/// (a body of only whitespace is not JSON, and is refused as such).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    let value = parse_value(bytes)?;
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

/// Parses JSON into a `Value`, refusing a key that appears twice in one
/// object at any depth. serde_json alone would keep the last of them, so a
/// body could say one thing to a reader (or a proxy that checks it) and
/// another to us.
fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Checked {
        path: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => match duplicate.into_inner() {
            Some(key) => Err(ApiError::bad_request(
                "duplicate_key",
                format!("key {key:?} appears more than once in the request body"),
            )
            .with("field", key)),
            None => Err(ApiError::bad_request(
                "malformed_json",
                format!("request body is not valid JSON: {e}"),
            )),
        },
    }
}

/// A `Value` built by a visitor that records the first duplicated key (as a
/// dotted path) and stops there.
struct Checked<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl Checked<'_> {
    fn child(&self, segment: &str) -> Self {
        Checked {
            path: if self.path.is_empty() {
                segment.to_owned()
            } else {
                format!("{}.{segment}", self.path)
            },
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Checked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child(&format!("[{}]", items.len())))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(&key);
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(child.path);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
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
        extra: Option<Value>,
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
        assert!(code(br#"{"name":"a"} x"#).starts_with("malformed_json"));
        assert!(code(br#"[1]"#).starts_with("malformed_json"));
        assert!(code(b"\t").starts_with("malformed_json"));
        assert!(code(br#"{}"#).starts_with("invalid_field name: is required"));
        assert!(code(br#"{"name":"a","tier":"2"}"#).starts_with("invalid_field tier:"));
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        // The positive controls: the same keys, once each, are fine.
        assert_eq!(code(br#"{"name":"a","extra":{"k":1,"j":[{"x":1}]}}"#), "ok");
        assert_eq!(
            code(br#"{"name":"a","name":"b"}"#),
            r#"duplicate_key key "name" appears more than once in the request body"#
        );
        assert_eq!(
            code(br#"{"name":"a","extra":{"k":1,"k":2}}"#),
            r#"duplicate_key key "extra.k" appears more than once in the request body"#
        );
        assert_eq!(
            code(br#"{"name":"a","extra":[{"x":1},{"x":1,"x":2}]}"#),
            r#"duplicate_key key "extra.[1].x" appears more than once in the request body"#
        );
        // The same key in sibling objects is no duplicate.
        assert_eq!(code(br#"{"name":"a","extra":[{"x":1},{"x":2}]}"#), "ok");
    }
}

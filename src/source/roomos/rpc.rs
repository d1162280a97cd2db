//! The xAPI's JSON-RPC 2.0 frames: requests roomhook sends, and what a frame from the device
//! is (a result, an error, a feedback notification) or why it is not one. Pure code.

use serde_json::{json, Value};

/// A frame from the device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// The answer to a request.
    Result {
        /// The request id, as text (devices may answer integer ids as strings).
        id: String,
        /// The result.
        result: Value,
    },
    /// A request failed.
    Error {
        /// The request id (None: the device could not read the request's id).
        id: Option<String>,
        /// JSON-RPC / xAPI error code.
        code: i64,
        /// The device's message (with `data.Cause` when given).
        message: String,
    },
    /// `xFeedback/Event`: a partial tree for one subscription.
    Feedback {
        /// The subscription id (`params.Id`).
        sub: u64,
        /// The document: `Status`, `Event` (others are passed through).
        doc: String,
        /// The tree below the document name.
        tree: Value,
    },
}

/// Why a frame is not something roomhook understands; the `reason` label of
/// `roomhook_source_decode_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a JSON-RPC frame of a known shape.
    #[error("malformed JSON-RPC frame: {0}")]
    Malformed(String),
    /// A notification of a method roomhook does not know.
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
}

impl FrameError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::NotJson(_) => "not_json",
            FrameError::Malformed(_) => "malformed",
            FrameError::UnknownMethod(_) => "unknown_method",
        }
    }
}

/// A request frame.
pub(crate) fn request(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// `xFeedback/Subscribe` for a query, current values included.
pub(crate) fn subscribe(id: u64, query: &[String]) -> String {
    request(
        id,
        "xFeedback/Subscribe",
        json!({"Query": query, "NotifyCurrentValue": true}),
    )
}

/// `xQuery`: the current values under a query, as a tree from the root.
pub(crate) fn query(id: u64, query: &[String]) -> String {
    request(id, "xQuery", json!({ "Query": query }))
}

/// `xGet`: one value, relative to the path.
pub(crate) fn get(id: u64, path: &[&str]) -> String {
    request(id, "xGet", json!({ "Path": path }))
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn short(s: &str) -> String {
    let mut cut = s.len().min(120);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// Reads one text frame.
pub(crate) fn parse(text: &str) -> Result<Incoming, FrameError> {
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(FrameError::Malformed(format!(
            "not an object: {}",
            short(text)
        )));
    };
    if let Some(method) = obj.get("method") {
        let method = method.as_str().unwrap_or_default();
        if method != "xFeedback/Event" {
            return Err(FrameError::UnknownMethod(short(method)));
        }
        let params = obj
            .get("params")
            .and_then(Value::as_object)
            .ok_or_else(|| FrameError::Malformed("xFeedback/Event without params".into()))?;
        let sub = params
            .get("Id")
            .and_then(|i| i.as_u64().or_else(|| i.as_str()?.parse().ok()))
            .ok_or_else(|| FrameError::Malformed("xFeedback/Event without params.Id".into()))?;
        let (doc, tree) = params
            .iter()
            .find(|(k, _)| k.as_str() != "Id")
            .ok_or_else(|| FrameError::Malformed("xFeedback/Event without a tree".into()))?;
        return Ok(Incoming::Feedback {
            sub,
            doc: doc.clone(),
            tree: tree.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        let code = err.get("code").and_then(Value::as_i64).ok_or_else(|| {
            FrameError::Malformed(format!("error without a code: {}", short(text)))
        })?;
        let mut message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(cause) = err.pointer("/data/Cause").and_then(Value::as_str) {
            message = format!("{message} ({cause})");
        }
        return Ok(Incoming::Error {
            id: obj.get("id").and_then(id_text),
            code,
            message,
        });
    }
    match (obj.get("id").and_then(id_text), obj.get("result")) {
        (Some(id), Some(result)) => Ok(Incoming::Result {
            id,
            result: result.clone(),
        }),
        _ => Err(FrameError::Malformed(format!(
            "neither a result, an error nor a notification: {}",
            short(text)
        ))),
    }
}

/// The xAPI error of a device that is still starting up (retried).
pub(crate) const NOT_READY: i64 = -31997;
/// The xAPI error for too many feedback subscriptions on the device.
pub(crate) const TOO_MANY_SUBSCRIPTIONS: i64 = -31998;

/// What an xAPI error code means, in words an operator can act on.
pub(crate) fn explain(code: i64, message: &str) -> String {
    let what = match code {
        3 => "invalid path: the device has no such status or event (check the path; some exist only on certain models or RoomOS versions)",
        -31999 => "permission denied: the device user's role may not read this (an Integrator may read people count, presence and a Navigator's sensors, but not the main unit's temperature, humidity or air quality: use a User or Admin account for those, or read them from a Room Navigator)",
        TOO_MANY_SUBSCRIPTIONS => "subscriber count exceeded: the device has too many feedback subscriptions (close other integrations, or select fewer paths)",
        NOT_READY => "the device is not ready yet (retried)",
        -32601 => "method not found: this RoomOS version does not offer it",
        -32602 => "invalid parameter",
        1 => "command error",
        _ => "",
    };
    match (what.is_empty(), message.is_empty()) {
        (true, _) => format!("error {code}: {message}"),
        (false, true) => format!("{what} (error {code})"),
        (false, false) => format!("{what} (error {code}: {message})"),
    }
}

/// Whether a failed subscription is worth trying again later on the same connection.
pub(crate) fn retryable(code: i64) -> bool {
    matches!(code, NOT_READY | TOO_MANY_SUBSCRIPTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_errors_and_notifications() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":7,"result":{"Id":3}}"#),
            Ok(Incoming::Result {
                id: "7".into(),
                result: json!({"Id":3})
            })
        );
        // jsxapi sends string ids; answers come back as strings.
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"2","result":75}"#),
            Ok(Incoming::Result {
                id: "2".into(),
                result: json!(75)
            })
        );
        assert_eq!(
            parse(
                r#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"Command error","data":{"Cause":"No such widget"}}}"#
            ),
            Ok(Incoming::Error {
                id: Some("4".into()),
                code: 1,
                message: "Command error (No such widget)".into()
            })
        );
        let n = parse(
            r#"{"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Id":3,"Status":{"RoomAnalytics":{"PeopleCount":{"Current":2}}}}}"#,
        );
        assert_eq!(
            n,
            Ok(Incoming::Feedback {
                sub: 3,
                doc: "Status".into(),
                tree: json!({"RoomAnalytics":{"PeopleCount":{"Current":2}}})
            })
        );
    }

    #[test]
    fn bad_frames_have_reasons() {
        assert_eq!(parse("hello").unwrap_err().label(), "not_json");
        assert_eq!(parse("[1,2]").unwrap_err().label(), "malformed");
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0"}"#).unwrap_err().label(),
            "malformed"
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"xCommand/Dial","params":{}}"#)
                .unwrap_err()
                .label(),
            "unknown_method"
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Status":{}}}"#)
                .unwrap_err()
                .label(),
            "malformed"
        );
    }

    #[test]
    fn requests() {
        let q = vec!["Status".to_string(), "RoomAnalytics".to_string()];
        let v: Value = serde_json::from_str(&subscribe(5, &q)).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":5,"method":"xFeedback/Subscribe",
                   "params":{"Query":["Status","RoomAnalytics"],"NotifyCurrentValue":true}})
        );
        assert!(explain(-31999, "Permission denied").contains("Integrator"));
    }
}

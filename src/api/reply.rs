//! The response envelope: one JSON object with `success` (always present) and `error`
//! (empty on success), plus the command's own fields.

use serde_json::{Map, Value, json};

/// A reply to the management node.
#[derive(Debug, Clone)]
pub struct Reply(Map<String, Value>);

impl Reply {
    /// `{"success": true, "error": ""}`
    pub fn ok() -> Reply {
        let mut m = Map::new();
        m.insert("success".into(), Value::Bool(true));
        m.insert("error".into(), Value::String(String::new()));
        Reply(m)
    }

    /// `{"success": false, "error": msg}`
    pub fn fail(msg: impl Into<String>) -> Reply {
        let mut m = Map::new();
        m.insert("success".into(), Value::Bool(false));
        m.insert("error".into(), Value::String(msg.into()));
        Reply(m)
    }

    /// Adds a field (never `success` or `error`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Reply {
        if key != "success" && key != "error" {
            self.0.insert(key.into(), value.into());
        }
        self
    }

    /// The `error` text (empty on success).
    pub fn error(&self) -> &str {
        self.0.get("error").and_then(Value::as_str).unwrap_or("")
    }

    /// True for a success reply.
    pub fn is_success(&self) -> bool {
        self.0.get("success") == Some(&json!(true))
    }

    /// The JSON text.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_else(|_| {
            br#"{"success":false,"error":"reply could not be encoded"}"#.to_vec()
        })
    }
}

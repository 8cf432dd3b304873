//! Exact-match answer cache, per logical model with its own TTL (opt-in in the models file).
//! The key is a hash of the whole normalised request: the logical model, every message and
//! every generation parameter (tools, temperature, response format, …), with object keys
//! sorted so that the same request in another key order hits. Only `user`, `stream` and
//! `stream_options` are left out: they do not change the answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::resp::{Redis, Reply};
use crate::types::{ChatRequest, ChatResponse, ToolCall};

#[derive(Debug, Clone, PartialEq, Default)]
pub enum CacheBackend {
    #[default]
    Memory,
    Redis {
        url: String,
    },
}

/// Entries kept in memory at most; past it the oldest half goes.
const MEMORY_ENTRIES: usize = 10_000;

pub(crate) struct AnswerCache {
    memory: Mutex<HashMap<String, (Instant, ChatResponse)>>,
    redis: Option<Redis>,
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), sorted(&map[key]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

pub(crate) fn key(model: &str, request: &ChatRequest) -> String {
    let mut parameters = request.parameters.clone();
    for ignored in ["user", "stream", "stream_options"] {
        parameters.remove(ignored);
    }
    let normalised = json!({"model": model, "messages": request.messages, "parameters": sorted(&Value::Object(parameters)), "completion": request.completion});
    let digest = ring::digest::digest(&ring::digest::SHA256, sorted(&normalised).to_string().as_bytes());
    let hex: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("flowgate:cache:{hex}")
}

fn to_json(answer: &ChatResponse) -> Value {
    json!({"content": answer.content, "reasoning": answer.reasoning, "finish_reason": answer.finish_reason, "tool_calls": answer.tool_calls, "model": answer.model})
}

fn from_json(value: &Value) -> Option<ChatResponse> {
    Some(ChatResponse {
        id: String::new(),
        model: value["model"].as_str()?.to_owned(),
        content: value["content"].as_str()?.to_owned(),
        reasoning: value["reasoning"].as_str().unwrap_or_default().to_owned(),
        tool_calls: serde_json::from_value::<Vec<ToolCall>>(value["tool_calls"].clone()).unwrap_or_default(),
        finish_reason: value["finish_reason"].as_str().map(str::to_owned),
        usage: None,
    })
}

impl AnswerCache {
    pub(crate) fn new(backend: &CacheBackend) -> Result<Self, String> {
        let redis = match backend {
            CacheBackend::Memory => None,
            CacheBackend::Redis { url } => Some(Redis::new(url, Duration::from_millis(250)).map_err(|error| error.to_string())?),
        };
        Ok(Self { memory: Mutex::new(HashMap::new()), redis })
    }

    /// A cached answer; an unreachable Redis is a miss.
    pub(crate) async fn get(&self, key: &str) -> Option<ChatResponse> {
        if let Some(redis) = &self.redis {
            return match redis.command(&[b"GET", key.as_bytes()]).await {
                Ok(Reply::Bulk(Some(bytes))) => serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(from_json),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "answer cache unavailable");
                    None
                }
            };
        }
        let mut memory = self.memory.lock().ok()?;
        match memory.get(key) {
            Some((expires, answer)) if *expires > Instant::now() => Some(answer.clone()),
            Some(_) => {
                memory.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) async fn put(&self, key: &str, answer: &ChatResponse, ttl: Duration) {
        if let Some(redis) = &self.redis {
            let value = to_json(answer).to_string();
            let millis = ttl.as_millis().max(1).to_string();
            if let Err(error) = redis.command(&[b"SET", key.as_bytes(), value.as_bytes(), b"PX", millis.as_bytes()]).await {
                tracing::warn!(%error, "answer cache unavailable");
            }
            return;
        }
        let Ok(mut memory) = self.memory.lock() else { return };
        if memory.len() >= MEMORY_ENTRIES {
            let now = Instant::now();
            memory.retain(|_, (expires, _)| *expires > now);
            if memory.len() >= MEMORY_ENTRIES {
                let mut by_expiry: Vec<(Instant, String)> = memory.iter().map(|(key, (expires, _))| (*expires, key.clone())).collect();
                by_expiry.sort();
                for (_, key) in by_expiry.into_iter().take(MEMORY_ENTRIES / 2) {
                    memory.remove(&key);
                }
            }
        }
        memory.insert(key.to_owned(), (Instant::now() + ttl, answer.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::text_messages;

    #[test]
    fn the_key_covers_every_parameter_in_any_order_but_not_the_user() {
        let request = |parameters: Value| ChatRequest {
            model: String::new(),
            messages: text_messages(&[("user", "hi")]),
            parameters: parameters.as_object().cloned().unwrap_or_default(),
            completion: false,
        };
        let base = key(
            "m",
            &request(
                json!({"temperature": 0.1, "tools": [{"type": "function", "function": {"name": "a", "parameters": {"x": 1, "y": 2}}}]}),
            ),
        );
        let reordered = key(
            "m",
            &request(
                json!({"tools": [{"function": {"parameters": {"y": 2, "x": 1}, "name": "a"}, "type": "function"}], "temperature": 0.1}),
            ),
        );
        assert_eq!(base, reordered);
        assert_eq!(
            base,
            key(
                "m",
                &request(
                    json!({"temperature": 0.1, "user": "bob", "stream": true, "tools": [{"type": "function", "function": {"name": "a", "parameters": {"x": 1, "y": 2}}}]})
                )
            )
        );
        assert_ne!(
            base,
            key(
                "m",
                &request(
                    json!({"temperature": 0.2, "tools": [{"type": "function", "function": {"name": "a", "parameters": {"x": 1, "y": 2}}}]})
                )
            )
        );
        assert_ne!(
            base,
            key(
                "other",
                &request(
                    json!({"temperature": 0.1, "tools": [{"type": "function", "function": {"name": "a", "parameters": {"x": 1, "y": 2}}}]})
                )
            )
        );
    }
}

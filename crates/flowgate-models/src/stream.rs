//! Streamed answers: SSE frames read as they arrive (a bounded buffer, nothing held back once
//! a frame is complete) and turned into [`StreamEvent`]s by the provider's dialect.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{ErrorClass, ProviderError};
use crate::types::{ChatResponse, StreamEvent};

/// An SSE event stream can hold a frame this large at most; a longer one is a broken upstream.
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// A streamed answer: events in order, then `None`.
pub struct ChatStream {
    label: String,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: BytesMut,
    pending: VecDeque<StreamEvent>,
    deadline: Instant,
    dialect: Dialect,
    state: StreamState,
    /// Keeps the call counted on its target while the stream lives.
    in_flight: Option<crate::gateway::InFlight>,
}

/// Which wire format the events are in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What a dialect's parser keeps between frames.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// No more frames are expected.
    pub done: bool,
    /// A finish reason arrived: the answer is complete even if the end marker never does.
    pub finished: bool,
    /// Anthropic: input tokens from `message_start`, reported with the final usage.
    pub input_tokens: u64,
    /// Anthropic: content block index → tool call index; Gemini: one entry per call.
    pub tool_blocks: Vec<(u64, usize)>,
}

impl ChatStream {
    pub(crate) fn hold(&mut self, in_flight: crate::gateway::InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// Wraps a streaming response and waits for its first event, so that an upstream that
    /// fails before its first token fails here, where the caller can still try another.
    pub(crate) async fn start(
        label: &str,
        response: reqwest::Response,
        dialect: Dialect,
        first_token_deadline: Instant,
        deadline: Instant,
    ) -> Result<Self, ProviderError> {
        let mut stream = Self {
            label: label.to_owned(),
            body: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
            pending: VecDeque::new(),
            deadline,
            dialect,
            state: StreamState::default(),
            in_flight: None,
        };
        match tokio::time::timeout_at(first_token_deadline, stream.fill()).await {
            Err(_) => Err(ProviderError::new(ErrorClass::Timeout, label, "no first token in time")),
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => Ok(stream),
        }
    }

    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        if self.pending.is_empty() && !self.state.done {
            match tokio::time::timeout_at(self.deadline, self.fill()).await {
                Err(_) => {
                    self.state.done = true;
                    return Some(Err(ProviderError::new(ErrorClass::Timeout, &self.label, "the stream did not complete in time")));
                }
                Ok(Err(error)) => {
                    self.state.done = true;
                    return Some(Err(error));
                }
                Ok(Ok(())) => {}
            }
        }
        self.pending.pop_front().map(Ok)
    }

    /// Reads until at least one event is pending or the stream ends.
    async fn fill(&mut self) -> Result<(), ProviderError> {
        while self.pending.is_empty() && !self.state.done {
            while let Some(frame) = take_frame(&mut self.buffer) {
                self.parse_frame(&frame)?;
            }
            if !self.pending.is_empty() || self.state.done {
                break;
            }
            if self.buffer.len() > MAX_FRAME {
                return Err(ProviderError::new(ErrorClass::Protocol, &self.label, "an SSE frame longer than 4 MiB"));
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(error)) => {
                    return Err(ProviderError::new(ErrorClass::Connection, &self.label, format!("the stream broke: {error}")));
                }
                None => {
                    // Some servers close without `[DONE]` after the finish reason: complete.
                    // A stream that ends before its finish reason is broken.
                    self.state.done = true;
                    if !self.state.finished {
                        return Err(ProviderError::new(ErrorClass::Connection, &self.label, "the stream ended before the answer finished"));
                    }
                }
            }
        }
        Ok(())
    }

    fn parse_frame(&mut self, frame: &str) -> Result<(), ProviderError> {
        let mut event = "";
        let mut data = String::new();
        for line in frame.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim();
            } else if let Some(part) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(part.strip_prefix(' ').unwrap_or(part));
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.state.done = true;
            return Ok(());
        }
        let not_json = |error: serde_json::Error| {
            ProviderError::new(ErrorClass::Protocol, &self.label, format!("a stream chunk is not JSON: {error}"))
        };
        match self.dialect {
            Dialect::OpenAi => {
                crate::openai::parse_chunk(&self.label, &data, &mut self.state, &mut self.pending).map_err(|error| match error {
                    crate::openai::ChunkError::Json(error) => not_json(error),
                    crate::openai::ChunkError::Provider(error) => error,
                })
            }
            Dialect::Anthropic => {
                let chunk: Value = serde_json::from_str(&data).map_err(not_json)?;
                crate::anthropic::parse_event(&self.label, event, &chunk, &mut self.state, &mut self.pending)
            }
            Dialect::Gemini => {
                let chunk: Value = serde_json::from_str(&data).map_err(not_json)?;
                crate::gemini::parse_chunk(&self.label, &chunk, &mut self.state, &mut self.pending)
            }
        }
    }

    /// Events already read and parsed, without waiting for more: a caller that forwards a
    /// stream sends these together.
    pub fn ready(&mut self) -> impl Iterator<Item = StreamEvent> + '_ {
        self.pending.drain(..)
    }

    /// Reads the rest of the stream into one response (for callers that need the whole answer).
    pub async fn collect(mut self) -> Result<ChatResponse, ProviderError> {
        let mut response = ChatResponse::default();
        while let Some(event) = self.next().await {
            response.add(event?);
        }
        Ok(response)
    }
}

/// Takes one complete SSE frame (up to a blank line, whichever line ending comes first) off
/// the front of `buffer`.
fn take_frame(buffer: &mut BytesMut) -> Option<String> {
    let lf = buffer.windows(2).position(|pair| pair == b"\n\n").map(|at| (at, 2));
    let crlf = buffer.windows(4).position(|quad| quad == b"\r\n\r\n").map(|at| (at, 4));
    let end = match (lf, crlf) {
        (Some(lf), Some(crlf)) => lf.min(crlf),
        (lf, crlf) => lf.or(crlf)?,
    };
    let frame = buffer.split_to(end.0 + end.1);
    Some(String::from_utf8_lossy(&frame[..end.0]).replace('\r', ""))
}

/// The stream parser without a connection, for the fuzz target (`fuzz/`): `chunks` arrive as
/// if read off the wire, in `dialect` (0 OpenAI, 1 Anthropic, 2 Gemini).
#[cfg(feature = "fuzzing")]
pub fn parse_chunks(dialect: u8, chunks: Vec<Bytes>) -> Result<ChatResponse, ProviderError> {
    let dialect = match dialect % 3 {
        0 => Dialect::OpenAi,
        1 => Dialect::Anthropic,
        _ => Dialect::Gemini,
    };
    let far = Instant::now() + std::time::Duration::from_secs(3600);
    let stream = ChatStream {
        label: "fuzz".into(),
        body: futures::stream::iter(chunks.into_iter().map(Ok)).boxed(),
        buffer: BytesMut::new(),
        pending: VecDeque::new(),
        deadline: far,
        dialect,
        state: StreamState::default(),
        in_flight: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|error| ProviderError::new(ErrorClass::Connection, "fuzz", error.to_string()))?;
    runtime.block_on(stream.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_the_first_blank_line_whatever_its_line_ending() {
        let mut buffer = BytesMut::from(&b"data: a\r\n\r\ndata: b\n\ndata: c"[..]);
        assert_eq!(take_frame(&mut buffer).as_deref(), Some("data: a"));
        assert_eq!(take_frame(&mut buffer).as_deref(), Some("data: b"));
        assert_eq!(take_frame(&mut buffer), None, "an incomplete frame waits for more");
        assert_eq!(&buffer[..], b"data: c");
    }
}

//! The one typed event stream a run produces. Wire encoders (SSE, blocking responses, the
//! CLI's NDJSON) and the run recorder consume it; nothing else observes a run.

use std::sync::Arc;

use crate::ports::Usage;
use crate::value::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    PartialSucceeded,
    Failed,
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::PartialSucceeded => "partial-succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    pub fn is_success(self) -> bool {
        matches!(self, Self::Succeeded | Self::PartialSucceeded)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Succeeded,
    Failed,
    /// Failed, handled by the node's error strategy.
    Exception,
    /// A failed attempt that will be retried.
    Retry,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Exception => "exception",
            Self::Retry => "retry",
        }
    }
}

/// Which iteration item or loop round a node ran in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub iteration: Option<(Arc<str>, usize)>,
    pub loop_round: Option<(Arc<str>, usize)>,
}

/// Identity of one node execution, shared by its started/finished events.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub execution_id: Arc<str>,
    pub node_id: Arc<str>,
    pub node_type: Arc<str>,
    pub title: Arc<str>,
    /// 1-based order in which nodes started in this run.
    pub index: u64,
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NodeFinished {
    pub info: NodeInfo,
    pub status: NodeStatus,
    pub inputs: Option<Arc<Map>>,
    pub process_data: Option<Arc<Map>>,
    pub outputs: Option<Arc<Map>>,
    pub error: Option<String>,
    pub error_type: Option<String>,
    /// Seconds.
    pub elapsed: f64,
    pub metadata: Option<Arc<Map>>,
    pub finished_at: i64,
    /// Set on retry events: which retry comes next (1-based).
    pub retry_index: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ContainerCompleted {
    pub info: NodeInfo,
    pub inputs: Arc<Map>,
    pub outputs: Arc<Map>,
    pub status: NodeStatus,
    pub error: Option<String>,
    pub elapsed: f64,
    pub steps: usize,
    pub metadata: Arc<Map>,
    pub total_tokens: i64,
}

/// The summary of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub status: RunStatus,
    pub outputs: Arc<Map>,
    pub error: Option<String>,
    /// Seconds.
    pub elapsed: f64,
    /// Every model call's tokens and price, added up (Dify's `llm_usage` of the run).
    pub usage: Usage,
    pub total_steps: u64,
    pub exceptions_count: u32,
    pub created_at: i64,
    pub finished_at: i64,
    /// The text streamed to the user (the chat answer of advanced-chat apps).
    pub answer: String,
    /// Conversation variables as the run left them.
    pub conversation_variables: Arc<Map>,
}

#[derive(Debug, Clone)]
pub enum RunEvent {
    WorkflowStarted {
        run_id: Arc<str>,
        workflow_id: Arc<str>,
        inputs: Arc<Map>,
        created_at: i64,
    },
    NodeStarted(NodeInfo),
    NodeFinished(Box<NodeFinished>),
    NodeRetry(Box<NodeFinished>),
    /// Answer/end text in the order Dify streams it.
    TextChunk {
        text: String,
        selector: Arc<[String]>,
    },
    IterationStarted {
        info: NodeInfo,
        inputs: Arc<Map>,
        length: usize,
    },
    IterationNext {
        info: NodeInfo,
        index: usize,
    },
    IterationCompleted(Box<ContainerCompleted>),
    LoopStarted {
        info: NodeInfo,
        inputs: Arc<Map>,
        length: i64,
    },
    LoopNext {
        info: NodeInfo,
        index: usize,
    },
    LoopCompleted(Box<ContainerCompleted>),
    /// An assigner wrote a variable (conversation variables are persisted from these).
    VariableUpdated {
        node_id: Arc<str>,
        selector: Arc<[String]>,
        value: Value,
    },
    WorkflowFinished(Box<RunSummary>),
}

/// Receives a run's events in order.
pub trait EventSink: Send {
    fn emit(&mut self, event: RunEvent);
}

impl<F: FnMut(RunEvent) + Send> EventSink for F {
    fn emit(&mut self, event: RunEvent) {
        self(event);
    }
}

/// Drops every event (a run whose only result is its summary).
pub struct Discard;

impl EventSink for Discard {
    fn emit(&mut self, _event: RunEvent) {}
}

impl EventSink for Vec<RunEvent> {
    fn emit(&mut self, event: RunEvent) {
        self.push(event);
    }
}

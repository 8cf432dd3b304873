//! Node kinds: compile-time configuration and run-time behaviour.
//!
//! A node either finishes synchronously ([`Exec::Done`]) or hands the scheduler a future
//! ([`Exec::Pending`]) that owns everything it needs, so other nodes keep running meanwhile.

mod aggregator;
mod answer;
mod app_prompt;
mod assigner;
mod classifier_prompt;
mod code;
pub mod containers;
pub mod conversation_name;
mod document;
mod end;
mod extractor_prompt;
mod http;
mod if_else;
pub mod jinja;
mod list_operator;
mod memory;
mod model;
mod ported;
mod start;
pub mod suggested;
mod template_transform;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use flowgate_dsl::nodes::NodeData;

use crate::plan::{Plan, PlanNode, SelectorResolver};
use crate::pool::{Pool, Selector};
use crate::ports::{PortContext, Ports};
use crate::run::{ChunkSink, RunContext};
use crate::value::{Map, Value};

pub use containers::{IterationSpec, LoopSpec};

/// A capability a node needs from outside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Model,
    Code,
    Tool,
    Agent,
    Knowledge,
    Http,
    Files,
}

impl Capability {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Model => "a model provider",
            Self::Code => "a code sandbox",
            Self::Tool => "a tool runtime",
            Self::Agent => "an agent runtime",
            Self::Knowledge => "a knowledge base",
            Self::Http => "an HTTP client",
            Self::Files => "file storage",
        }
    }
}

#[derive(Debug)]
pub enum NodeKind {
    Start(start::StartNode),
    End(end::EndNode),
    Answer(answer::AnswerNode),
    IfElse(if_else::IfElseNode),
    Aggregator(aggregator::AggregatorNode),
    AssignerV1(assigner::AssignerV1),
    AssignerV2(assigner::AssignerV2),
    TemplateTransform(template_transform::TemplateTransformNode),
    ListOperator(list_operator::ListOperatorNode),
    HttpRequest(http::HttpRequestNode),
    DocumentExtractor(document::DocumentExtractorNode),
    Code(code::CodeNode),
    Llm(model::LlmNode),
    QuestionClassifier(model::QuestionClassifierNode),
    ParameterExtractor(model::ParameterExtractorNode),
    Tool(ported::ToolNode),
    Agent(ported::AgentNode),
    KnowledgeRetrieval(ported::KnowledgeNode),
    Iteration(IterationSpec),
    Loop(LoopSpec),
    IterationStart,
    LoopStart,
    LoopEnd,
    /// Parsed but not executable yet; running it fails with "not supported yet".
    NotSupported,
}

impl NodeKind {
    pub fn capability(&self) -> Option<Capability> {
        Some(match self {
            Self::Code(_) => Capability::Code,
            Self::Llm(_) | Self::QuestionClassifier(_) | Self::ParameterExtractor(_) => Capability::Model,
            Self::Tool(_) => Capability::Tool,
            Self::Agent(_) => Capability::Agent,
            Self::KnowledgeRetrieval(_) => Capability::Knowledge,
            Self::HttpRequest(_) => Capability::Http,
            Self::DocumentExtractor(_) => Capability::Files,
            _ => return None,
        })
    }

    /// Whether failed runs of this kind are retried when `retry_config` enables it (Dify
    /// retries llm, code, http-request and tool nodes).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Llm(_) | Self::Code(_) | Self::HttpRequest(_) | Self::Tool(_))
    }

    /// Response streaming: does running this node change the given variables (assigners that
    /// write a variable an answer prints)?
    pub fn blocks_variables(&self, selectors: &[Vec<String>]) -> bool {
        match self {
            Self::AssignerV1(node) => selectors.iter().any(|selector| node.assigned_parts() == selector.as_slice()),
            Self::AssignerV2(node) => node.assigned_parts().any(|parts| selectors.iter().any(|selector| parts == selector.as_slice())),
            _ => false,
        }
    }
}

pub(crate) fn compile(
    node: &flowgate_dsl::Node,
    resolver: &SelectorResolver<'_>,
    graph: &flowgate_dsl::Graph,
    ids: &HashMap<String, u32>,
) -> NodeKind {
    match &node.data {
        NodeData::Start(data) => NodeKind::Start(start::StartNode::compile(data)),
        NodeData::End(data) => NodeKind::End(end::EndNode::compile(data, resolver)),
        NodeData::Answer(data) => NodeKind::Answer(answer::AnswerNode::compile(data, resolver)),
        NodeData::IfElse(data) => NodeKind::IfElse(if_else::IfElseNode::compile(data, resolver)),
        NodeData::VariableAggregator(data) => NodeKind::Aggregator(aggregator::AggregatorNode::compile(data, resolver)),
        NodeData::AssignerV1(data) => NodeKind::AssignerV1(assigner::AssignerV1::compile(data, resolver)),
        NodeData::AssignerV2(data) => NodeKind::AssignerV2(assigner::AssignerV2::compile(data, resolver, &node.raw)),
        NodeData::TemplateTransform(data) => {
            NodeKind::TemplateTransform(template_transform::TemplateTransformNode::compile(data, resolver))
        }
        NodeData::ListOperator(data) => NodeKind::ListOperator(list_operator::ListOperatorNode::compile(data, resolver)),
        NodeData::HttpRequest(data) => NodeKind::HttpRequest(http::HttpRequestNode::compile(data, resolver, node)),
        NodeData::DocumentExtractor(data) => NodeKind::DocumentExtractor(document::DocumentExtractorNode::compile(data, resolver)),
        NodeData::Code(data) => NodeKind::Code(code::CodeNode::compile(data, resolver)),
        NodeData::Llm(data) => NodeKind::Llm(model::LlmNode::compile(data, resolver)),
        NodeData::QuestionClassifier(data) => NodeKind::QuestionClassifier(model::QuestionClassifierNode::compile(data, resolver)),
        NodeData::ParameterExtractor(data) => NodeKind::ParameterExtractor(model::ParameterExtractorNode::compile(data, resolver)),
        NodeData::Tool(data) => NodeKind::Tool(ported::ToolNode::compile(data, resolver)),
        NodeData::Agent(data) => NodeKind::Agent(ported::AgentNode::compile(data, resolver, &node.raw)),
        NodeData::KnowledgeRetrieval(data) => NodeKind::KnowledgeRetrieval(ported::KnowledgeNode::compile(data, resolver, &node.raw)),
        NodeData::Iteration(data) => NodeKind::Iteration(IterationSpec::compile(data, resolver, ids)),
        NodeData::Loop(data) => NodeKind::Loop(LoopSpec::compile(&node.id, data, resolver, graph, ids)),
        NodeData::IterationStart => NodeKind::IterationStart,
        NodeData::LoopStart => NodeKind::LoopStart,
        NodeData::LoopEnd => NodeKind::LoopEnd,
        NodeData::NotSupported | NodeData::Invalid => NodeKind::NotSupported,
    }
}

/// What a node produced.
#[derive(Debug, Clone, Default)]
pub struct NodeResult {
    pub failure: Option<Failure>,
    pub inputs: Option<Arc<Map>>,
    pub process_data: Option<Arc<Map>>,
    pub outputs: Arc<Map>,
    /// For branch nodes: the handle of the edges to follow.
    pub handle: Option<Arc<str>>,
    pub metadata: Option<Arc<Map>>,
    /// Variables the node writes (assigners), applied before its outputs.
    pub updates: Vec<VariableUpdate>,
    pub usage: Option<Box<crate::ports::Usage>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    /// Dify's `error_type` (an exception class name), shown to fail-branch handlers.
    pub error_type: String,
}

#[derive(Debug, Clone)]
pub struct VariableUpdate {
    pub selector: Selector,
    pub value: Value,
}

impl NodeResult {
    pub fn succeeded(outputs: Map) -> Self {
        Self { outputs: Arc::new(outputs), ..Self::default() }
    }

    pub fn failed(error: impl Into<String>, error_type: &str) -> Self {
        Self { failure: Some(Failure { error: error.into(), error_type: error_type.to_owned() }), ..Self::default() }
    }

    pub fn with_inputs(mut self, inputs: Map) -> Self {
        self.inputs = Some(Arc::new(inputs));
        self
    }

    pub fn with_process_data(mut self, process_data: Map) -> Self {
        self.process_data = Some(Arc::new(process_data));
        self
    }
}

pub enum Exec {
    Done(NodeResult),
    Pending(BoxFuture<'static, NodeResult>),
}

/// What a node sees while it runs.
pub struct NodeCtx<'a> {
    pub plan: &'a Arc<Plan>,
    pub index: u32,
    pub node: &'a PlanNode,
    pub pool: &'a Pool,
    pub ports: &'a Ports,
    pub run: &'a Arc<RunContext>,
    pub chunks: ChunkSink,
}

impl NodeCtx<'_> {
    pub fn port_context(&self) -> PortContext {
        PortContext {
            node_id: self.node.id.clone(),
            node_type: self.node.node_type.clone(),
            title: self.node.title.clone(),
            run_id: self.run.run_id.clone(),
            app_id: self.run.app_id.clone(),
            user_id: self.run.user_id.clone(),
        }
    }

    /// The failure for a node whose capability has no port configured.
    pub fn missing_port(&self, capability: Capability) -> NodeResult {
        NodeResult::failed(
            format!(
                "node '{}' ({}) needs {}, and none is configured for this run",
                self.node.id,
                self.node.node_type,
                capability.describe()
            ),
            "CapabilityNotConfigured",
        )
    }
}

pub(crate) fn execute(ctx: NodeCtx<'_>) -> Exec {
    match &ctx.node.kind {
        NodeKind::Start(node) => Exec::Done(node.run(&ctx)),
        NodeKind::End(node) => Exec::Done(node.run(&ctx)),
        NodeKind::Answer(node) => Exec::Done(node.run(&ctx)),
        NodeKind::IfElse(node) => Exec::Done(node.run(&ctx)),
        NodeKind::Aggregator(node) => Exec::Done(node.run(&ctx)),
        NodeKind::AssignerV1(node) => Exec::Done(node.run(&ctx)),
        NodeKind::AssignerV2(node) => Exec::Done(node.run(&ctx)),
        NodeKind::TemplateTransform(node) => Exec::Done(node.run(&ctx)),
        NodeKind::ListOperator(node) => Exec::Done(node.run(&ctx)),
        NodeKind::HttpRequest(node) => node.run(&ctx),
        NodeKind::DocumentExtractor(node) => node.run(&ctx),
        NodeKind::Code(node) => node.run(&ctx),
        NodeKind::Llm(node) => node.run(&ctx),
        NodeKind::QuestionClassifier(node) => node.run(&ctx),
        NodeKind::ParameterExtractor(node) => node.run(&ctx),
        NodeKind::Tool(node) => node.run(&ctx),
        NodeKind::Agent(node) => node.run(&ctx),
        NodeKind::KnowledgeRetrieval(node) => node.run(&ctx),
        NodeKind::IterationStart | NodeKind::LoopStart | NodeKind::LoopEnd => Exec::Done(NodeResult::default()),
        NodeKind::NotSupported => Exec::Done(NodeResult::failed(
            format!("not supported yet: {} nodes (node '{}')", ctx.node.node_type, ctx.node.id),
            "NotSupportedError",
        )),
        // Containers are driven by the scheduler, never executed as plain nodes.
        NodeKind::Iteration(_) | NodeKind::Loop(_) => {
            Exec::Done(NodeResult::failed("container nodes are scheduled by the engine", "WorkflowNodeError"))
        }
    }
}

/// `{variable: value}` for a list of (name, selector) bindings; missing values are `None`.
pub(crate) fn bound_inputs(bindings: &[(Arc<str>, Selector)], pool: &Pool) -> Map {
    let mut inputs = crate::value::map_with_capacity(bindings.len());
    for (name, selector) in bindings {
        inputs.insert(name.clone(), pool.get(selector).unwrap_or(Value::None));
    }
    inputs
}

pub(crate) fn compile_bindings(
    bindings: &[flowgate_dsl::nodes::VariableBinding],
    resolver: &SelectorResolver<'_>,
) -> Vec<(Arc<str>, Selector)> {
    bindings.iter().map(|binding| (Arc::from(binding.variable.as_str()), resolver.selector(&binding.value_selector))).collect()
}

//! Tool, agent and knowledge-retrieval nodes: inputs are resolved here, the work is done by
//! their ports.

use std::sync::Arc;

use futures::future::BoxFuture;

use flowgate_dsl::nodes::{AgentData, KnowledgeRetrievalData, ToolData};

use super::model::usage_metadata;
use super::{Capability, Exec, NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector};
use crate::ports::{AgentCall, KnowledgeQuery, PortError, TextSink, ToolCall, ToolOutput};
use crate::run::ChunkSink;
use crate::template::{Render, TextTemplate};
use crate::value::{Map, Value, key, map_of, map_with_capacity};

/// A tool/agent parameter: a variable, a text with `{{#...#}}` references, or a constant.
#[derive(Debug)]
enum Input {
    Variable(Selector),
    Mixed(TextTemplate),
    Constant(Value),
}

impl Input {
    fn compile(kind: &str, value: &serde_json::Value, resolver: &SelectorResolver<'_>) -> Self {
        match (kind, value) {
            ("variable", serde_json::Value::Array(parts)) => {
                let parts: Vec<String> = parts.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                Self::Variable(resolver.selector(&parts))
            }
            ("mixed", serde_json::Value::String(text)) => Self::Mixed(TextTemplate::compile(text, resolver)),
            (_, value) => Self::Constant(Value::from(value)),
        }
    }

    fn resolve(&self, pool: &Pool) -> Value {
        match self {
            Self::Variable(selector) => pool.get(selector).unwrap_or(Value::None),
            Self::Mixed(template) => Value::from(template.render(pool, Render::Text)),
            Self::Constant(value) => value.clone(),
        }
    }
}

fn resolve_inputs(inputs: &[(Arc<str>, Input)], pool: &Pool) -> Map {
    let mut resolved = map_with_capacity(inputs.len());
    for (name, input) in inputs {
        resolved.insert(name.clone(), input.resolve(pool));
    }
    resolved
}

/// Runs a tool or agent call whose text streams to the answer as `[node, "text"]`, closing
/// that stream when the call ends, and turns its output into the node's result.
fn invoke_streaming(
    ctx: &NodeCtx<'_>,
    parameters: Map,
    error_type: &'static str,
    invoke: impl FnOnce(TextSink) -> BoxFuture<'static, Result<ToolOutput, PortError>>,
) -> Exec {
    let (chunks, selector, sink) = text_stream(ctx);
    let call = invoke(sink);
    Exec::Pending(Box::pin(async move {
        let result = call.await;
        chunks.send(&selector, "", true);
        match result {
            Ok(output) => tool_result(output, parameters),
            Err(error) => NodeResult::failed(error.message, error_type).with_inputs(parameters),
        }
    }))
}

fn text_stream(ctx: &NodeCtx<'_>) -> (ChunkSink, Arc<[String]>, TextSink) {
    let chunks = ctx.chunks.clone();
    let selector: Arc<[String]> = Arc::from(vec![ctx.node.id.to_string(), "text".to_owned()]);
    let stream_chunks = chunks.clone();
    let stream_selector = selector.clone();
    let sink: TextSink = Arc::new(move |text: &str| stream_chunks.send(&stream_selector, text, false));
    (chunks, selector, sink)
}

fn tool_result(output: ToolOutput, inputs: Map) -> NodeResult {
    let mut outputs = map_with_capacity(3 + output.variables.len());
    outputs.insert(key("text"), Value::from(output.text));
    outputs.insert(key("files"), Value::array(output.files));
    outputs.insert(key("json"), Value::array(output.json));
    for (key, value) in output.variables {
        outputs.insert(key, value);
    }
    NodeResult {
        metadata: output.usage.as_ref().map(|usage| Arc::new(usage_metadata(usage))),
        usage: output.usage.map(Box::new),
        ..NodeResult::succeeded(outputs).with_inputs(inputs)
    }
}

#[derive(Debug)]
pub struct ToolNode {
    provider_id: String,
    provider_type: String,
    provider_name: String,
    tool_name: String,
    configurations: Map,
    parameters: Vec<(Arc<str>, Input)>,
}

impl ToolNode {
    pub fn compile(data: &ToolData, resolver: &SelectorResolver<'_>) -> Self {
        Self {
            provider_id: data.provider_id.clone(),
            provider_type: data.provider_type.clone(),
            provider_name: data.provider_name.clone(),
            tool_name: data.tool_name.clone(),
            configurations: data.tool_configurations.iter().map(|(key, value)| (Arc::from(key.as_str()), Value::from(value))).collect(),
            parameters: data
                .tool_parameters
                .iter()
                .map(|(name, input)| (Arc::from(name.as_str()), Input::compile(&input.kind, &input.value, resolver)))
                .collect(),
        }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let parameters = resolve_inputs(&self.parameters, ctx.pool);
        let Some(port) = ctx.ports.tool.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Tool).with_inputs(parameters));
        };
        let call = ToolCall {
            context: ctx.port_context(),
            provider_id: self.provider_id.clone(),
            provider_type: self.provider_type.clone(),
            provider_name: self.provider_name.clone(),
            tool_name: self.tool_name.clone(),
            configurations: self.configurations.clone(),
            parameters: parameters.clone(),
        };
        invoke_streaming(ctx, parameters, "ToolInvokeError", |sink| port.invoke(call, sink))
    }
}

#[derive(Debug)]
pub struct AgentNode {
    strategy_provider: String,
    strategy: String,
    parameters: Vec<(Arc<str>, Input)>,
}

impl AgentNode {
    pub fn compile(data: &AgentData, resolver: &SelectorResolver<'_>, _raw: &serde_json::Value) -> Self {
        let parameters = data
            .agent_parameters
            .iter()
            .map(|(name, parameter)| {
                let kind = parameter.get("type").and_then(serde_json::Value::as_str).unwrap_or("constant");
                let value = parameter.get("value").cloned().unwrap_or(serde_json::Value::Null);
                (Arc::from(name.as_str()), Input::compile(kind, &value, resolver))
            })
            .collect();
        Self { strategy_provider: data.agent_strategy_provider_name.clone(), strategy: data.agent_strategy_name.clone(), parameters }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let parameters = resolve_inputs(&self.parameters, ctx.pool);
        let Some(port) = ctx.ports.agent.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Agent).with_inputs(parameters));
        };
        let call = AgentCall {
            context: ctx.port_context(),
            strategy_provider: self.strategy_provider.clone(),
            strategy: self.strategy.clone(),
            parameters: parameters.clone(),
        };
        invoke_streaming(ctx, parameters, "AgentNodeError", |sink| port.invoke(call, sink))
    }
}

#[derive(Debug)]
pub struct KnowledgeNode {
    query: Option<Selector>,
    dataset_ids: Vec<String>,
    settings: serde_json::Value,
}

impl KnowledgeNode {
    pub fn compile(data: &KnowledgeRetrievalData, resolver: &SelectorResolver<'_>, raw: &serde_json::Value) -> Self {
        Self {
            query: data.query_variable_selector.as_ref().map(|selector| resolver.selector(selector)),
            dataset_ids: data.dataset_ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect(),
            settings: raw.clone(),
        }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let query = self.query.as_ref().and_then(|selector| ctx.pool.get(selector)).map(|value| value.to_text()).unwrap_or_default();
        let inputs = map_of([("query", Value::from(query.clone()))]);
        let Some(port) = ctx.ports.knowledge.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Knowledge).with_inputs(inputs));
        };
        let request =
            KnowledgeQuery { context: ctx.port_context(), query, dataset_ids: self.dataset_ids.clone(), settings: self.settings.clone() };
        Exec::Pending(Box::pin(async move {
            match port.retrieve(request).await {
                Ok(result) => NodeResult::succeeded(map_of([("result", Value::array(result))])).with_inputs(inputs),
                Err(error) => NodeResult::failed(error.message, "KnowledgeRetrievalNodeError").with_inputs(inputs),
            }
        }))
    }
}

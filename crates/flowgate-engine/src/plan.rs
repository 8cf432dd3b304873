//! Compiling a DSL document into an immutable [`Plan`] that runs many times.
//!
//! Everything that can be decided before a run is decided here: node ids become indices,
//! selectors become slots, templates and conditions are parsed, edges are indexed by node, and
//! the response-streaming paths are precomputed.

use std::collections::HashMap;
use std::sync::Arc;

use flowgate_dsl::nodes::NodeData;
use flowgate_dsl::{AppMode, Diagnostic, Document, ErrorStrategy};

use crate::nodes::{self, NodeKind};
use crate::pool::{NamespacedKeys, Selector, Slot};
use crate::stream::ResponsePlan;
use crate::value::{Map, SegType, Value};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the DSL has errors:\n{}", .0.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("not supported yet: {}", .0.join(", "))]
    NotSupported(Vec<String>),
}

/// How the scheduler treats a node after it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecType {
    Root,
    Executable,
    /// Answer and end nodes: their outputs merge into the run's outputs and they stream.
    Response,
    /// Follows only the edges of the handle it selects.
    Branch,
    /// Iteration and loop: run child frames.
    Container,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RetryPolicy {
    pub enabled: bool,
    pub max_retries: u32,
    pub interval_ms: u64,
}

#[derive(Debug)]
pub struct PlanNode {
    pub id: Arc<str>,
    pub title: Arc<str>,
    pub node_type: Arc<str>,
    pub exec: ExecType,
    /// The iteration or loop whose frames run this node.
    pub container: Option<u32>,
    /// The nearest enclosing loop (through iterations), whose rounds reset this node's outputs.
    pub loop_owner: Option<u32>,
    pub outgoing: Vec<u32>,
    pub incoming: Vec<u32>,
    pub error_strategy: Option<ErrorStrategy>,
    pub default_values: Map,
    pub retry: RetryPolicy,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub struct PlanEdge {
    pub source: u32,
    pub target: u32,
    pub handle: Arc<str>,
}

/// An environment or conversation variable with its declared type and initial value.
#[derive(Debug, Clone)]
pub struct DeclaredVariable {
    pub id: String,
    pub name: Arc<str>,
    pub value_type: Option<SegType>,
    pub value_type_name: String,
    pub value: Value,
    pub description: String,
}

#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub mode: AppMode,
    pub nodes: Vec<PlanNode>,
    pub edges: Vec<PlanEdge>,
    pub root: u32,
    pub node_ids: Vec<Arc<str>>,
    ids: HashMap<String, u32>,
    pub environment: Vec<DeclaredVariable>,
    pub conversation: Vec<DeclaredVariable>,
    pub response: ResponsePlan,
    pub features: serde_json::Value,
    /// The start node's input form, for validating run inputs.
    pub start_variables: Vec<flowgate_dsl::nodes::InputVariable>,
    /// Keys of the start node's `namespace.name` outputs.
    pub namespaced_keys: NamespacedKeys,
}

impl Plan {
    pub fn compile(document: &Document) -> Result<Self, CompileError> {
        let errors = document.errors();
        if !errors.is_empty() {
            return Err(CompileError::Invalid(errors));
        }
        let Some(workflow) = &document.workflow else {
            return Err(CompileError::Invalid(errors));
        };
        if !workflow.unsupported.is_empty() {
            return Err(CompileError::NotSupported(workflow.unsupported.clone()));
        }
        let graph = &workflow.graph;
        let ids: HashMap<String, u32> = graph.nodes.iter().enumerate().map(|(index, node)| (node.id.clone(), index as u32)).collect();
        let resolver = SelectorResolver { ids: &ids };
        let node_ids: Vec<Arc<str>> = graph.nodes.iter().map(|node| Arc::from(node.id.as_str())).collect();

        let mut edges = Vec::with_capacity(graph.edges.len());
        let mut outgoing: Vec<Vec<u32>> = vec![Vec::new(); graph.nodes.len()];
        let mut incoming: Vec<Vec<u32>> = vec![Vec::new(); graph.nodes.len()];
        for edge in &graph.edges {
            // Validation guarantees both ends exist and share a scope.
            let (Some(&source), Some(&target)) = (ids.get(&edge.source), ids.get(&edge.target)) else {
                continue;
            };
            let index = edges.len() as u32;
            outgoing[source as usize].push(index);
            incoming[target as usize].push(index);
            edges.push(PlanEdge { source, target, handle: Arc::from(edge.source_handle.as_str()) });
        }

        let loop_owner = |node: &flowgate_dsl::Node| -> Option<u32> {
            let mut container = node.container.as_deref();
            while let Some(id) = container {
                let owner = graph.node(id)?;
                if owner.node_type == "loop" {
                    return ids.get(id).copied();
                }
                container = owner.container.as_deref();
            }
            None
        };

        let mut plan_nodes = Vec::with_capacity(graph.nodes.len());
        for (index, node) in graph.nodes.iter().enumerate() {
            let mut kind = nodes::compile(node, &resolver, graph, &ids);
            if let (NodeKind::Llm(llm), Some(prompt)) = (&mut kind, &workflow.app_prompt) {
                llm.use_app_prompt(prompt.clone(), resolver.slot_of("start"), document.app.mode == AppMode::AgentChat);
            }
            let exec = match (&node.data, node.error_strategy) {
                (NodeData::Start(_), _) => ExecType::Root,
                (NodeData::Answer(_) | NodeData::End(_), _) => ExecType::Response,
                (NodeData::Iteration(_) | NodeData::Loop(_), _) => ExecType::Container,
                (NodeData::IfElse(_) | NodeData::QuestionClassifier(_), _) => ExecType::Branch,
                (_, Some(ErrorStrategy::FailBranch)) => ExecType::Branch,
                _ => ExecType::Executable,
            };
            let default_values: Map =
                node.default_values.iter().map(|default| (Arc::from(default.key.as_str()), Value::from(&default.value))).collect();
            plan_nodes.push(PlanNode {
                id: node_ids[index].clone(),
                title: Arc::from(node.title.as_str()),
                node_type: Arc::from(node.node_type.as_str()),
                exec,
                container: node.container.as_ref().and_then(|id| ids.get(id).copied()),
                loop_owner: loop_owner(node),
                outgoing: std::mem::take(&mut outgoing[index]),
                incoming: std::mem::take(&mut incoming[index]),
                error_strategy: node.error_strategy,
                default_values,
                retry: RetryPolicy {
                    enabled: node.retry.enabled,
                    max_retries: node.retry.max_retries,
                    interval_ms: node.retry.interval_ms,
                },
                kind,
            });
        }

        let root_node = graph.root().ok_or_else(|| CompileError::Invalid(document.errors()))?;
        let root = ids[&root_node.id];
        let start_variables = match &root_node.data {
            NodeData::Start(start) => start.variables.clone(),
            _ => Vec::new(),
        };
        let declared = |variables: &[flowgate_dsl::VariableDecl]| -> Vec<DeclaredVariable> {
            variables
                .iter()
                .map(|variable| {
                    let value_type = SegType::parse(&variable.value_type);
                    DeclaredVariable {
                        id: variable.id.clone(),
                        name: Arc::from(variable.name.as_str()),
                        value_type,
                        value_type_name: variable.value_type.clone(),
                        value: typed_initial_value(value_type, &variable.value),
                        description: variable.description.clone(),
                    }
                })
                .collect()
        };
        let environment = declared(&workflow.environment_variables);
        let conversation = declared(&workflow.conversation_variables);
        let namespaced_keys = NamespacedKeys::new(
            crate::inputs::SYSTEM_VARIABLES
                .iter()
                .map(|name| (Slot::Sys, *name))
                .chain(environment.iter().map(|variable| (Slot::Env, &*variable.name)))
                .chain(conversation.iter().map(|variable| (Slot::Conversation, &*variable.name)))
                .chain([(Slot::UserInput, "files")]),
        );
        let mut plan = Self {
            name: document.app.name.clone(),
            mode: document.app.mode,
            nodes: plan_nodes,
            edges,
            root,
            node_ids,
            ids,
            environment,
            conversation,
            response: ResponsePlan::default(),
            features: workflow.features.clone(),
            start_variables,
            namespaced_keys,
        };
        plan.response = ResponsePlan::build(&plan);
        Ok(plan)
    }

    pub fn node_index(&self, id: &str) -> Option<u32> {
        self.ids.get(id).copied()
    }

    pub fn node(&self, index: u32) -> &PlanNode {
        &self.nodes[index as usize]
    }

    pub fn resolver(&self) -> SelectorResolver<'_> {
        SelectorResolver { ids: &self.ids }
    }

    /// The most earlier conversation turns any model node with memory reads (none: no history
    /// needs loading).
    pub fn memory_turns(&self) -> Option<usize> {
        self.nodes
            .iter()
            .filter_map(|node| match &node.kind {
                NodeKind::Llm(llm) => llm.memory_turns(),
                NodeKind::QuestionClassifier(classifier) => classifier.memory_turns(),
                NodeKind::ParameterExtractor(extractor) => extractor.memory_turns(),
                _ => None,
            })
            .max()
    }

    /// Port capabilities the plan's nodes need, as (node id, node type, capability).
    pub fn required_capabilities(&self) -> Vec<(Arc<str>, Arc<str>, nodes::Capability)> {
        self.nodes
            .iter()
            .filter_map(|node| node.kind.capability().map(|capability| (node.id.clone(), node.node_type.clone(), capability)))
            .collect()
    }
}

/// Values of declared variables take their declared type (a declared float stays a float).
fn typed_initial_value(value_type: Option<SegType>, value: &serde_json::Value) -> Value {
    let converted = Value::from(value);
    match (value_type, &converted) {
        (Some(SegType::Float), Value::Int(int)) => Value::Float(*int as f64),
        (Some(SegType::String | SegType::Secret), Value::None) => Value::str(""),
        _ => converted,
    }
}

/// Turns written selectors into slots, against the plan's node ids.
pub struct SelectorResolver<'a> {
    ids: &'a HashMap<String, u32>,
}

impl SelectorResolver<'_> {
    pub fn slot_of(&self, head: &str) -> Slot {
        if let Some(&index) = self.ids.get(head) {
            return Slot::Node(index);
        }
        Slot::namespace(head).unwrap_or(Slot::Missing)
    }

    pub fn selector(&self, parts: &[String]) -> Selector {
        let slot = parts.first().map_or(Slot::Missing, |head| self.slot_of(head));
        let slot = if parts.len() < 2 { Slot::Missing } else { slot };
        Selector {
            slot,
            name: Arc::from(parts.get(1).map_or("", String::as_str)),
            path: parts.iter().skip(2).map(|part| Arc::from(part.as_str())).collect(),
            parts: parts.to_vec().into(),
        }
    }
}

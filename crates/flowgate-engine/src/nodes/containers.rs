//! Iteration and loop configuration. The scheduler runs them (they own child frames); this
//! module holds what is decided at compile time and the value rules Dify applies.

use std::collections::HashMap;
use std::sync::Arc;

use flowgate_dsl::nodes::{ErrorHandleMode, IterationData, LogicalOperator, LoopData};

use crate::condition::CompiledCondition;
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::value::{SegType, Value};

#[derive(Debug)]
pub struct IterationSpec {
    pub iterator: Selector,
    pub output: Selector,
    /// The node each item's frame starts at (usually the `iteration-start` node).
    pub start: Option<u32>,
    /// Items run at the same time (1 when the iteration is sequential).
    pub parallelism: usize,
    pub error_mode: ErrorHandleMode,
    pub flatten: bool,
}

impl IterationSpec {
    pub fn compile(data: &IterationData, resolver: &SelectorResolver<'_>, ids: &HashMap<String, u32>) -> Self {
        let parallel_nums = data.parallel_nums.unwrap_or(10).max(1) as usize;
        Self {
            iterator: resolver.selector(&data.iterator_selector),
            output: resolver.selector(&data.output_selector),
            start: ids.get(&data.start_node_id).copied(),
            parallelism: if data.is_parallel { parallel_nums } else { 1 },
            error_mode: data.error_handle_mode,
            flatten: data.flatten_output.unwrap_or(true),
        }
    }
}

#[derive(Debug)]
pub enum LoopVariableSource {
    Constant(Value),
    Variable(Selector),
    Invalid,
}

#[derive(Debug)]
pub struct LoopVariable {
    pub label: Arc<str>,
    pub var_type: Option<SegType>,
    pub source: LoopVariableSource,
}

#[derive(Debug)]
pub struct LoopSpec {
    pub start: Option<u32>,
    pub count: i64,
    pub break_conditions: Vec<CompiledCondition>,
    pub operator: LogicalOperator,
    pub variables: Vec<LoopVariable>,
    /// Nodes whose nearest loop is this one; their outputs are cleared before each round.
    pub members: Vec<u32>,
}

impl LoopSpec {
    pub fn compile(
        loop_id: &str,
        data: &LoopData,
        resolver: &SelectorResolver<'_>,
        graph: &flowgate_dsl::Graph,
        ids: &HashMap<String, u32>,
    ) -> Self {
        let variables = data
            .loop_variables
            .iter()
            .map(|variable| LoopVariable {
                label: Arc::from(variable.label.as_str()),
                var_type: SegType::parse(&variable.var_type),
                source: match (variable.value_type.as_str(), &variable.value) {
                    ("variable", serde_json::Value::Array(parts)) => {
                        let parts: Vec<String> = parts.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                        LoopVariableSource::Variable(resolver.selector(&parts))
                    }
                    ("constant", value) => LoopVariableSource::Constant(Value::from(value)),
                    _ => LoopVariableSource::Invalid,
                },
            })
            .collect();
        let members = graph
            .nodes
            .iter()
            .filter(|node| nearest_loop(graph, node) == Some(loop_id))
            .filter_map(|node| ids.get(&node.id).copied())
            .collect();
        Self {
            start: ids.get(&data.start_node_id).copied(),
            count: data.loop_count.unwrap_or(1).max(1),
            break_conditions: data.break_conditions.iter().map(|condition| CompiledCondition::compile(condition, resolver)).collect(),
            operator: data.logical_operator,
            variables,
            members,
        }
    }
}

fn nearest_loop<'a>(graph: &'a flowgate_dsl::Graph, node: &flowgate_dsl::Node) -> Option<&'a str> {
    let mut container = node.container.as_deref();
    let mut hops = 0;
    while let Some(id) = container {
        let owner = graph.node(id)?;
        if owner.node_type == "loop" {
            return Some(owner.id.as_str());
        }
        container = owner.container.as_deref();
        hops += 1;
        if hops > graph.nodes.len() {
            return None;
        }
    }
    None
}

/// A loop variable's constant, converted to its declared type as Dify does: JSON text for
/// array types, then a type check with one JSON-decoding retry for text.
pub fn constant_loop_value(var_type: Option<SegType>, value: &Value) -> Result<Value, String> {
    let Some(var_type) = var_type else {
        return Ok(value.clone());
    };
    let prepared = match var_type {
        SegType::ArrayNumber | SegType::ArrayObject | SegType::ArrayString => match value {
            Value::Str(text) if !text.is_empty() => parse_json(text)?,
            _ => Value::array(Vec::new()),
        },
        _ => value.clone(),
    };
    match typed_value(var_type, prepared) {
        Ok(typed) => Ok(typed),
        Err(error) => match value {
            Value::Str(text) => typed_value(var_type, parse_json(text).map_err(|_| error)?),
            _ => Err(error),
        },
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    crate::pyfmt::json_loads(text).map(Value::from)
}

/// Dify's `build_segment_with_type`: the value must fit the declared type.
pub fn typed_value(seg_type: SegType, value: Value) -> Result<Value, String> {
    if value.is_none() {
        return if seg_type == SegType::None {
            Ok(value)
        } else {
            Err(format!("Type mismatch: expected {}, but got None", seg_type.as_str()))
        };
    }
    if matches!(&value, Value::Array(items) if items.is_empty()) {
        return if seg_type.is_array() {
            Ok(value)
        } else {
            Err(format!("Type mismatch: expected {}, but got empty list", seg_type.as_str()))
        };
    }
    let fits = match seg_type {
        SegType::Number => matches!(value, Value::Int(_) | Value::Float(_)),
        SegType::ArrayNumber => {
            matches!(&value, Value::Array(items) if items.iter().all(|item| matches!(item, Value::Int(_) | Value::Float(_))))
        }
        other => other.accepts(&value),
    };
    if fits {
        Ok(match (seg_type, value) {
            (SegType::Float, Value::Int(int)) => Value::Float(int as f64),
            (_, value) => value,
        })
    } else {
        Err(format!(
            "Type mismatch: expected {}, but got {}, value={}",
            seg_type.as_str(),
            value.seg_type().as_str(),
            crate::pyfmt::py_str(&value)
        ))
    }
}

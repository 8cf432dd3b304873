use std::sync::Arc;

use flowgate_dsl::nodes::{InputType, StartData};

use super::{NodeCtx, NodeResult};
use crate::pool::Slot;
use crate::value::{Map, Value};

/// The start node publishes the run's inputs (seeded into its slot before the run) and, as
/// Dify does, every other variable of the pool under `namespace.name` keys.
#[derive(Debug)]
pub struct StartNode {
    json_objects: Vec<(Arc<str>, bool)>,
}

impl StartNode {
    pub fn compile(data: &StartData) -> Self {
        let json_objects = data
            .variables
            .iter()
            .filter(|variable| variable.kind == InputType::JsonObject)
            .map(|variable| (Arc::from(variable.variable.as_str()), variable.required))
            .collect();
        Self { json_objects }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let slot = Slot::Node(ctx.index);
        let inputs: Map = ctx.pool.entries(slot).map(|(key, value)| (key.clone(), value.clone())).collect();
        for (name, required) in &self.json_objects {
            match inputs.get(name) {
                None | Some(Value::None) if *required => {
                    return NodeResult::failed(format!("{name} is required in input form"), "ValueError").with_inputs(inputs);
                }
                Some(value) if value.truthy() && !matches!(value, Value::Object(_)) => {
                    return NodeResult::failed(format!("JSON object for '{name}' must be an object"), "TypeError").with_inputs(inputs);
                }
                _ => {}
            }
        }
        // The start node's own slot holds the inputs, which come out unprefixed.
        let outputs = ctx.pool.flatten(slot, &ctx.plan.node_ids, &ctx.plan.namespaced_keys);
        NodeResult::succeeded(outputs).with_inputs(inputs)
    }
}

use std::sync::Arc;

use flowgate_dsl::nodes::VariableAggregatorData;

use super::{NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::value::{Value, map_of, map_with_capacity};

/// The first selector that resolves wins; with groups, one output object per group.
#[derive(Debug)]
pub struct AggregatorNode {
    groups: Option<Vec<(Arc<str>, Vec<Selector>)>>,
    variables: Vec<Selector>,
    input_keys: Vec<Arc<str>>,
}

impl AggregatorNode {
    pub fn compile(data: &VariableAggregatorData, resolver: &SelectorResolver<'_>) -> Self {
        let groups = data.advanced_settings.as_ref().filter(|settings| settings.group_enabled).map(|settings| {
            settings
                .groups
                .iter()
                .map(|group| {
                    (Arc::from(group.group_name.as_str()), group.variables.iter().map(|selector| resolver.selector(selector)).collect())
                })
                .collect()
        });
        let variables: Vec<Selector> = data.variables.iter().map(|selector| resolver.selector(selector)).collect();
        let input_keys = variables.iter().map(|selector| Arc::from(selector.parts()[1..].join(".").as_str())).collect();
        Self { groups, variables, input_keys }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let Some(groups) = &self.groups else {
            for (selector, key) in self.variables.iter().zip(&self.input_keys) {
                if let Some(value) = ctx.pool.get(selector) {
                    let mut inputs = map_with_capacity(1);
                    inputs.insert(key.clone(), value.clone());
                    let mut outputs = map_with_capacity(1);
                    outputs.insert(crate::value::key("output"), value);
                    return NodeResult::succeeded(outputs).with_inputs(inputs);
                }
            }
            return NodeResult::succeeded(map_with_capacity(0)).with_inputs(map_with_capacity(0));
        };
        let mut outputs = map_with_capacity(groups.len());
        let mut inputs = map_with_capacity(groups.len());
        for (name, selectors) in groups {
            if let Some((selector, value)) = selectors.iter().find_map(|selector| ctx.pool.get(selector).map(|value| (selector, value))) {
                inputs.insert(Arc::from(selector.parts()[1..].join(".").as_str()), value.clone());
                outputs.insert(name.clone(), Value::object(map_of([("output", value)])));
            }
        }
        NodeResult::succeeded(outputs).with_inputs(inputs)
    }
}

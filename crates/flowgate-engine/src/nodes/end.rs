use std::sync::Arc;

use flowgate_dsl::nodes::EndData;

use super::{NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::value::{Value, map_with_capacity};

#[derive(Debug)]
pub struct EndNode {
    pub(crate) outputs: Vec<(Arc<str>, Selector)>,
}

impl EndNode {
    pub fn compile(data: &EndData, resolver: &SelectorResolver<'_>) -> Self {
        let outputs =
            data.outputs.iter().map(|output| (Arc::from(output.variable.as_str()), resolver.selector(&output.value_selector))).collect();
        Self { outputs }
    }

    /// Missing values are `None`; an end node never fails.
    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let mut outputs = map_with_capacity(self.outputs.len());
        for (name, selector) in &self.outputs {
            outputs.insert(name.clone(), ctx.pool.get(selector).unwrap_or(Value::None));
        }
        let outputs = Arc::new(outputs);
        NodeResult { inputs: Some(outputs.clone()), outputs, ..NodeResult::default() }
    }
}

use std::sync::Arc;

use flowgate_dsl::nodes::TemplateTransformData;

use super::jinja::JinjaTemplate;
use super::{NodeCtx, NodeResult, bound_inputs, compile_bindings};
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::value::{Value, key, map_with_capacity};

/// Dify's `TEMPLATE_TRANSFORM_MAX_LENGTH`.
pub const MAX_OUTPUT_CHARS: usize = 400_000;

#[derive(Debug)]
pub struct TemplateTransformNode {
    bindings: Vec<(Arc<str>, Selector)>,
    template: JinjaTemplate,
}

impl TemplateTransformNode {
    pub fn compile(data: &TemplateTransformData, resolver: &SelectorResolver<'_>) -> Self {
        Self { bindings: compile_bindings(&data.variables, resolver), template: JinjaTemplate::compile(&data.template) }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let inputs = bound_inputs(&self.bindings, ctx.pool);
        match self.template.render(&inputs) {
            Err(error) => NodeResult::failed(error, "TemplateRenderError").with_inputs(inputs),
            Ok(rendered) if rendered.chars().count() > MAX_OUTPUT_CHARS => {
                NodeResult::failed(format!("Output length exceeds {MAX_OUTPUT_CHARS} characters"), "WorkflowNodeError").with_inputs(inputs)
            }
            Ok(rendered) => {
                let mut outputs = map_with_capacity(1);
                outputs.insert(key("output"), Value::from(rendered));
                NodeResult::succeeded(outputs).with_inputs(inputs)
            }
        }
    }
}

use flowgate_dsl::nodes::AnswerData;

use super::{NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::template::{Render, TextTemplate};
use crate::value::{Value, map_of};

#[derive(Debug)]
pub struct AnswerNode {
    template: TextTemplate,
    /// The answer as written, for response streaming.
    pub(crate) source: String,
}

impl AnswerNode {
    pub fn compile(data: &AnswerData, resolver: &SelectorResolver<'_>) -> Self {
        Self { template: TextTemplate::compile(&data.answer, resolver), source: data.answer.clone() }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let answer = self.template.render(ctx.pool, Render::Markdown);
        let mut files = Vec::new();
        for value in self.template.resolved_values(ctx.pool) {
            match value {
                Value::File(file) => files.push(Value::File(file)),
                Value::Array(items) if items.iter().all(|item| matches!(item, Value::File(_))) => {
                    files.extend(items.iter().cloned());
                }
                _ => {}
            }
        }
        NodeResult::succeeded(map_of([("answer", Value::from(answer)), ("files", Value::array(files))]))
    }
}

use std::sync::Arc;

use flowgate_dsl::nodes::{IfElseData, LogicalOperator};

use super::{NodeCtx, NodeResult};
use crate::condition::{CompiledCondition, condition_result, logical_name, process_conditions};
use crate::plan::SelectorResolver;
use crate::value::{Value, key, map_of, map_with_capacity};

#[derive(Debug)]
struct Case {
    id: Arc<str>,
    operator: LogicalOperator,
    conditions: Vec<CompiledCondition>,
    /// The case as Dify dumps it into `process_data` (`"default"` for the legacy shape).
    group: Value,
}

#[derive(Debug)]
pub struct IfElseNode {
    cases: Vec<Case>,
}

const FALSE_HANDLE: &str = "false";

impl IfElseNode {
    pub fn compile(data: &IfElseData, resolver: &SelectorResolver<'_>) -> Self {
        let cases = data
            .cases
            .iter()
            .map(|case| {
                let conditions: Vec<CompiledCondition> =
                    case.conditions.iter().map(|condition| CompiledCondition::compile(condition, resolver)).collect();
                let group = if data.legacy {
                    Value::str("default")
                } else {
                    Value::object(map_of([
                        ("case_id", Value::str(case.case_id.as_str())),
                        ("logical_operator", Value::str(logical_name(case.logical_operator))),
                        ("conditions", Value::array(conditions.iter().map(|condition| condition.dump.clone()).collect())),
                    ]))
                };
                Case { id: Arc::from(case.case_id.as_str()), operator: case.logical_operator, conditions, group }
            })
            .collect();
        Self { cases }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let mut results = Vec::with_capacity(self.cases.len());
        let mut last_inputs = Vec::new();
        let mut selected: Option<&Arc<str>> = None;
        for case in &self.cases {
            match process_conditions(&case.conditions, case.operator, ctx.pool) {
                Ok(check) => {
                    results.push(condition_result(case.group.clone(), &check));
                    last_inputs = check.inputs;
                    if check.final_result {
                        selected = Some(&case.id);
                        break;
                    }
                }
                Err(error) => {
                    let inputs = map_of([("conditions", Value::array(last_inputs))]);
                    let process_data = map_of([("condition_results", Value::array(results))]);
                    return NodeResult::failed(error, "WorkflowNodeError").with_inputs(inputs).with_process_data(process_data);
                }
            }
        }
        let mut outputs = map_with_capacity(2);
        outputs.insert(key("result"), Value::Bool(selected.is_some()));
        let handle: Arc<str> = selected.cloned().unwrap_or_else(|| Arc::from(FALSE_HANDLE));
        outputs.insert(key("selected_case_id"), Value::Str(handle.clone()));
        NodeResult {
            handle: Some(handle),
            ..NodeResult::succeeded(outputs)
                .with_inputs(map_of([("conditions", Value::array(last_inputs))]))
                .with_process_data(map_of([("condition_results", Value::array(results))]))
        }
    }
}

//! Variable assigners: v1 (one variable, over-write/append/clear) and v2 (a list of
//! operations). They produce no outputs; their writes are applied by the scheduler.

use std::sync::Arc;

use flowgate_dsl::nodes::{AssignerInput, AssignerOperation, AssignerV1Data, AssignerV2Data, WriteMode};

use super::{NodeCtx, NodeResult, VariableUpdate};
use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector};
use crate::pyfmt;
use crate::value::{Map, SegType, Value, key, map_of, map_with_capacity};

fn variable_type(pool: &Pool, selector: &Selector, value: &Value) -> SegType {
    pool.declared_type(selector.slot, &selector.name).unwrap_or_else(|| value.seg_type())
}

fn zero_value(seg_type: SegType) -> Result<Value, String> {
    Ok(match seg_type {
        SegType::ArrayAny | SegType::ArrayString | SegType::ArrayNumber | SegType::ArrayObject | SegType::ArrayBoolean => {
            Value::array(Vec::new())
        }
        SegType::Object => Value::object(Map::default()),
        SegType::String => Value::str(""),
        SegType::Integer | SegType::Number => Value::Int(0),
        SegType::Float => Value::Float(0.0),
        SegType::Boolean => Value::Bool(false),
        other => return Err(format!("unsupported variable type: {}", other.as_str())),
    })
}

fn updated_variables_entry(selector: &Selector, seg_type: SegType, value: &Value) -> Value {
    Value::object(map_of([
        ("name", Value::str(&*selector.name)),
        ("selector", Value::array(selector.variable_parts().iter().map(|part| Value::str(part.as_str())).collect())),
        ("value_type", Value::str(seg_type.as_str())),
        ("new_value", value.clone()),
    ]))
}

#[derive(Debug)]
pub struct AssignerV1 {
    target: Selector,
    input: Selector,
    mode: WriteMode,
}

impl AssignerV1 {
    pub fn compile(data: &AssignerV1Data, resolver: &SelectorResolver<'_>) -> Self {
        Self {
            target: resolver.selector(&data.assigned_variable_selector),
            input: resolver.selector(&data.input_variable_selector),
            mode: data.write_mode,
        }
    }

    pub fn assigned_parts(&self) -> &[String] {
        self.target.parts()
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let fail = |message: &str| NodeResult::failed(message, "VariableOperatorNodeError");
        let Some(original) = ctx.pool.variable(self.target.slot, &self.target.name).cloned() else {
            return fail("assigned variable not found");
        };
        let seg_type = variable_type(ctx.pool, &self.target, &original);
        let (income, updated) = match self.mode {
            WriteMode::OverWrite => {
                let Some(income) = ctx.pool.get(&self.input) else {
                    return fail("input value not found");
                };
                (income.clone(), income)
            }
            WriteMode::Append => {
                let Some(income) = ctx.pool.get(&self.input) else {
                    return fail("input value not found");
                };
                let Value::Array(items) = &original else {
                    return fail("append mode requires an array variable");
                };
                let mut items = items.as_ref().clone();
                items.push(income.clone());
                (income, Value::array(items))
            }
            WriteMode::Clear => match zero_value(seg_type) {
                Ok(zero) => (zero.clone(), zero),
                Err(error) => return NodeResult::failed(error, "ValueError"),
            },
        };
        let mut process_data = map_with_capacity(1);
        process_data.insert(key("__updated_variables"), Value::array(vec![updated_variables_entry(&self.target, seg_type, &updated)]));
        NodeResult {
            updates: vec![VariableUpdate { selector: self.target.clone(), value: updated }],
            ..NodeResult::succeeded(Map::default()).with_inputs(map_of([("value", income)])).with_process_data(process_data)
        }
    }
}

#[derive(Debug)]
struct Item {
    target: Selector,
    input_type: AssignerInput,
    operation: AssignerOperation,
    /// For variable inputs, the selector to read; otherwise the constant.
    source: Option<Selector>,
    constant: Value,
}

#[derive(Debug)]
pub struct AssignerV2 {
    items: Vec<Item>,
    /// `node_data.model_dump()`, which Dify reports as the node's inputs.
    inputs: Arc<Map>,
}

impl AssignerV2 {
    pub fn compile(data: &AssignerV2Data, resolver: &SelectorResolver<'_>, raw: &serde_json::Value) -> Self {
        let items = data
            .items
            .iter()
            .map(|item| {
                let source = match (&item.input_type, &item.value) {
                    (AssignerInput::Variable, serde_json::Value::Array(parts)) => {
                        let parts: Vec<String> = parts.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                        Some(resolver.selector(&parts))
                    }
                    _ => None,
                };
                Item {
                    target: resolver.selector(&item.variable_selector),
                    input_type: item.input_type,
                    operation: item.operation,
                    source,
                    constant: Value::from(&item.value),
                }
            })
            .collect();
        let inputs = match Value::from(raw) {
            Value::Object(map) => map,
            _ => Arc::new(Map::default()),
        };
        Self { items, inputs }
    }

    pub fn assigned_parts(&self) -> impl Iterator<Item = &[String]> {
        self.items.iter().map(|item| item.target.parts())
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        // Later items see earlier writes, without touching the shared pool.
        let mut working = ctx.pool.clone();
        let mut updated: Vec<&Selector> = Vec::new();
        for item in &self.items {
            match apply_item(item, &mut working) {
                Ok(true) => {
                    if !updated.iter().any(|selector| selector.variable_parts() == item.target.variable_parts()) {
                        updated.push(&item.target);
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    return NodeResult { inputs: Some(self.inputs.clone()), ..NodeResult::failed(error, "VariableOperatorNodeError") };
                }
            }
        }
        let mut process_data = map_with_capacity(updated.len() + 1);
        let mut entries = Vec::with_capacity(updated.len());
        let mut updates = Vec::with_capacity(updated.len());
        for selector in updated {
            let value = working.variable(selector.slot, &selector.name).cloned().unwrap_or_default();
            let seg_type = variable_type(&working, selector, &value);
            process_data.insert(selector.name.clone(), value.clone());
            entries.push(updated_variables_entry(selector, seg_type, &value));
            updates.push(VariableUpdate { selector: selector.clone(), value });
        }
        process_data.insert(key("__updated_variables"), Value::array(entries));
        NodeResult { inputs: Some(self.inputs.clone()), updates, ..NodeResult::succeeded(Map::default()).with_process_data(process_data) }
    }
}

/// Applies one operation; `Ok(false)` when the input variable holds `None` (skipped, as Dify
/// does).
fn apply_item(item: &Item, pool: &mut Pool) -> Result<bool, String> {
    let not_found = |parts: &[String]| format!("Variable {} not found", crate::value::python_list_of_strings(parts));
    // Only whole variables can be assigned, never a key inside one.
    let current = if item.target.path.is_empty() { pool.variable(item.target.slot, &item.target.name).cloned() } else { None };
    let Some(current) = current else {
        return Err(not_found(item.target.parts()));
    };
    let seg_type = variable_type(pool, &item.target, &current);
    let operation = item.operation;
    if !operation_supported(seg_type, operation) {
        return Err(format!("Operation {} is not supported for type {}", operation.as_str(), seg_type.as_str()));
    }
    match item.input_type {
        AssignerInput::Variable if !variable_input_supported(operation) => {
            return Err(format!("Input type variable is not supported for operation {}", operation.as_str()));
        }
        AssignerInput::Constant if !constant_input_supported(seg_type, operation) => {
            return Err(format!("Input type constant is not supported for operation {}", operation.as_str()));
        }
        _ => {}
    }
    let reads_variable = item.input_type == AssignerInput::Variable
        && !matches!(operation, AssignerOperation::Clear | AssignerOperation::RemoveFirst | AssignerOperation::RemoveLast)
        && !item.constant.is_none();
    let mut input = item.constant.clone();
    if reads_variable {
        let Some(source) = &item.source else {
            return Err(not_found(&[]));
        };
        match pool.get(source) {
            None => return Err(not_found(source.parts())),
            Some(Value::None) => return Ok(false),
            Some(value) => input = value,
        }
    }
    if operation == AssignerOperation::Set
        && seg_type == SegType::Object
        && let Value::Str(text) = &input
    {
        input = serde_json::from_str::<serde_json::Value>(text)
            .map(Value::from)
            .map_err(|_| format!("Invalid input value {}", pyfmt::py_str(&input)))?;
    }
    if !input_valid(seg_type, operation, &input) {
        return Err(format!("Invalid input value {}", pyfmt::py_str(&input)));
    }
    let updated = match operation {
        AssignerOperation::OverWrite | AssignerOperation::Set => input,
        AssignerOperation::Clear => zero_value(seg_type)?,
        AssignerOperation::Append => {
            let mut items = current.as_array().map(<[Value]>::to_vec).unwrap_or_default();
            items.push(input);
            Value::array(items)
        }
        AssignerOperation::Extend => {
            let mut items = current.as_array().map(<[Value]>::to_vec).unwrap_or_default();
            items.extend(input.as_array().map(<[Value]>::to_vec).unwrap_or_default());
            Value::array(items)
        }
        AssignerOperation::Add | AssignerOperation::Subtract | AssignerOperation::Multiply | AssignerOperation::Divide => {
            arithmetic(operation, &current, &input)?
        }
        AssignerOperation::RemoveFirst | AssignerOperation::RemoveLast => match &current {
            Value::Array(items) if !items.is_empty() => {
                let items: Vec<Value> =
                    if operation == AssignerOperation::RemoveFirst { items[1..].to_vec() } else { items[..items.len() - 1].to_vec() };
                Value::array(items)
            }
            other => other.clone(),
        },
    };
    pool.set(item.target.slot, item.target.name.clone(), updated);
    Ok(true)
}

fn arithmetic(operation: AssignerOperation, current: &Value, input: &Value) -> Result<Value, String> {
    let (Some(left), Some(right)) = (current.as_number(), input.as_number()) else {
        return Err(format!("Invalid input value {}", pyfmt::py_str(input)));
    };
    use crate::value::Number::Int;
    Ok(match (operation, left, right) {
        (AssignerOperation::Divide, left, right) => Value::Float(left.as_f64() / right.as_f64()),
        (AssignerOperation::Add, Int(a), Int(b)) => a.checked_add(b).map_or(Value::Float(a as f64 + b as f64), Value::Int),
        (AssignerOperation::Subtract, Int(a), Int(b)) => a.checked_sub(b).map_or(Value::Float(a as f64 - b as f64), Value::Int),
        (AssignerOperation::Multiply, Int(a), Int(b)) => a.checked_mul(b).map_or(Value::Float(a as f64 * b as f64), Value::Int),
        (AssignerOperation::Add, a, b) => Value::Float(a.as_f64() + b.as_f64()),
        (AssignerOperation::Subtract, a, b) => Value::Float(a.as_f64() - b.as_f64()),
        (_, a, b) => Value::Float(a.as_f64() * b.as_f64()),
    })
}

fn numeric(seg_type: SegType) -> bool {
    matches!(seg_type, SegType::Number | SegType::Integer | SegType::Float)
}

fn operation_supported(seg_type: SegType, operation: AssignerOperation) -> bool {
    use AssignerOperation as Op;
    match operation {
        Op::OverWrite | Op::Clear => true,
        Op::Set => matches!(seg_type, SegType::Object | SegType::String | SegType::Boolean) || numeric(seg_type),
        Op::Add | Op::Subtract | Op::Multiply | Op::Divide => numeric(seg_type),
        Op::Append | Op::Extend | Op::RemoveFirst | Op::RemoveLast => seg_type.is_array(),
    }
}

fn variable_input_supported(operation: AssignerOperation) -> bool {
    use AssignerOperation as Op;
    !matches!(operation, Op::Set | Op::Add | Op::Subtract | Op::Multiply | Op::Divide)
}

fn constant_input_supported(seg_type: SegType, operation: AssignerOperation) -> bool {
    use AssignerOperation as Op;
    match seg_type {
        SegType::String | SegType::Object | SegType::Boolean => {
            matches!(operation, Op::OverWrite | Op::Set)
        }
        kind if numeric(kind) => {
            matches!(operation, Op::OverWrite | Op::Set | Op::Add | Op::Subtract | Op::Multiply | Op::Divide)
        }
        _ => false,
    }
}

fn input_valid(seg_type: SegType, operation: AssignerOperation, value: &Value) -> bool {
    use AssignerOperation as Op;
    if matches!(operation, Op::Clear | Op::RemoveFirst | Op::RemoveLast) {
        return true;
    }
    if numeric(seg_type) {
        return match value.as_number() {
            Some(number) => !(operation == Op::Divide && number.as_f64() == 0.0),
            None => false,
        };
    }
    let scalar_ok = match seg_type {
        SegType::String => matches!(value, Value::Str(_)),
        SegType::Boolean => matches!(value, Value::Bool(_)),
        SegType::Object => matches!(value, Value::Object(_)),
        _ => false,
    };
    if scalar_ok {
        return true;
    }
    let element_ok = |item: &Value| match seg_type {
        SegType::ArrayAny => matches!(item, Value::Str(_) | Value::Float(_) | Value::Int(_) | Value::Bool(_) | Value::Object(_)),
        SegType::ArrayString => matches!(item, Value::Str(_)),
        SegType::ArrayNumber => matches!(item, Value::Int(_) | Value::Float(_) | Value::Bool(_)),
        SegType::ArrayObject => matches!(item, Value::Object(_)),
        SegType::ArrayBoolean => matches!(item, Value::Bool(_)),
        _ => false,
    };
    match operation {
        Op::Append => element_ok(value),
        Op::Extend | Op::OverWrite => {
            matches!(value, Value::Array(items) if items.iter().all(element_ok))
        }
        _ => false,
    }
}

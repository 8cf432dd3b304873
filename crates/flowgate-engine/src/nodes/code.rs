//! Code nodes: inputs go to the code port; the returned mapping is validated against the
//! declared outputs with Dify's rules and messages.

use std::sync::Arc;

use flowgate_dsl::nodes::{CodeData, CodeOutput, indexmap_like::OrderedMap};

use super::{Capability, Exec, NodeCtx, NodeResult, compile_bindings};
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::ports::CodeCall;
use crate::pyfmt;
use crate::value::{Map, SegType, Value, map_with_capacity};

/// Dify's `CODE_MAX_*` defaults.
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    pub max_string_length: usize,
    pub max_number: f64,
    pub min_number: f64,
    pub max_precision: usize,
    pub max_depth: usize,
    pub max_number_array_length: usize,
    pub max_string_array_length: usize,
    pub max_object_array_length: usize,
}

pub const CODE_LIMITS: CodeLimits = CodeLimits {
    max_string_length: 400_000,
    max_number: 9_223_372_036_854_775_807.0,
    min_number: -9_223_372_036_854_775_807.0,
    max_precision: 20,
    max_depth: 5,
    max_number_array_length: 1000,
    max_string_array_length: 30,
    max_object_array_length: 30,
};

#[derive(Debug)]
struct OutputSchema {
    name: Arc<str>,
    kind: Option<SegType>,
    kind_name: String,
    children: Option<Vec<OutputSchema>>,
}

fn compile_schema(outputs: &OrderedMap<CodeOutput>) -> Vec<OutputSchema> {
    outputs
        .iter()
        .map(|(name, output)| OutputSchema {
            name: Arc::from(name.as_str()),
            kind: SegType::parse(&output.kind),
            kind_name: output.kind.clone(),
            children: output.children.as_ref().map(compile_schema),
        })
        .collect()
}

#[derive(Debug)]
pub struct CodeNode {
    language: String,
    code: Arc<str>,
    bindings: Vec<(Arc<str>, Selector)>,
    schema: Arc<Vec<OutputSchema>>,
}

impl CodeNode {
    pub fn compile(data: &CodeData, resolver: &SelectorResolver<'_>) -> Self {
        Self {
            language: data.code_language.clone(),
            code: Arc::from(data.code.as_str()),
            bindings: compile_bindings(&data.variables, resolver),
            schema: Arc::new(compile_schema(&data.outputs)),
        }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let mut inputs = map_with_capacity(self.bindings.len());
        for (name, selector) in &self.bindings {
            let value = match ctx.pool.get(selector) {
                // Dify passes an empty file list as None.
                Some(Value::Array(items)) if items.is_empty() && selector.path.is_empty() && declared_file_list(ctx, selector) => {
                    Value::None
                }
                Some(value) => value,
                None => Value::None,
            };
            inputs.insert(name.clone(), value);
        }
        let Some(port) = ctx.ports.code.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Code).with_inputs(inputs));
        };
        if !matches!(self.language.as_str(), "python3" | "javascript") {
            return Exec::Done(
                NodeResult::failed(format!("Unsupported code language: {}", self.language), "CodeNodeError").with_inputs(inputs),
            );
        }
        let call =
            CodeCall { context: ctx.port_context(), language: self.language.clone(), code: self.code.to_string(), inputs: inputs.clone() };
        let schema = self.schema.clone();
        Exec::Pending(Box::pin(async move {
            let inputs = Arc::new(inputs);
            match port.execute(call).await {
                Err(error) => NodeResult { inputs: Some(inputs), ..NodeResult::failed(error.message, "CodeExecutionError") },
                Ok(result) => match validate(&result, Some(&schema), "", 1, &CODE_LIMITS) {
                    Ok(outputs) => NodeResult { inputs: Some(inputs), ..NodeResult::succeeded(outputs) },
                    Err((error, error_type)) => NodeResult { inputs: Some(inputs), ..NodeResult::failed(error, error_type) },
                },
            }
        }))
    }
}

fn declared_file_list(ctx: &NodeCtx<'_>, selector: &Selector) -> bool {
    ctx.pool.declared_type(selector.slot, &selector.name) == Some(SegType::ArrayFile)
}

type Invalid = (String, &'static str);

fn invalid(message: String) -> Invalid {
    (message, "OutputValidationError")
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

fn short_type(value: &Value) -> &'static str {
    match value {
        Value::None => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
        Value::File(_) => "File",
    }
}

/// Dify's `_transform_result`: checks every declared output (and nothing undeclared).
fn validate(result: &Map, schema: Option<&[OutputSchema]>, prefix: &str, depth: usize, limits: &CodeLimits) -> Result<Map, Invalid> {
    if depth > limits.max_depth {
        return Err((format!("Depth limit {} reached, object too deep.", limits.max_depth), "DepthLimitError"));
    }
    let Some(schema) = schema else {
        for (name, value) in result {
            validate_untyped(name, value, prefix, depth, limits)?;
        }
        return Ok(result.clone());
    };
    let mut transformed = map_with_capacity(schema.len());
    for output in schema {
        let Some(value) = result.get(&output.name) else {
            return Err(invalid(format!("Output {} is missing.", path(prefix, &output.name))));
        };
        transformed.insert(output.name.clone(), transform(output, value, prefix, depth, limits)?);
    }
    if schema.len() != result.len() {
        return Err(("Not all output parameters are validated.".into(), "CodeNodeError"));
    }
    Ok(transformed)
}

fn transform(output: &OutputSchema, value: &Value, prefix: &str, depth: usize, limits: &CodeLimits) -> Result<Value, Invalid> {
    let output_path = path(prefix, &output.name);
    let not_array = || invalid(format!("Output {output_path} is not an array, got {} instead.", crate::pyfmt::python_type_name(value)));
    match output.kind {
        Some(SegType::Object) => match value {
            Value::None => Ok(Value::None),
            Value::Object(map) => validate(map, output.children.as_deref(), &output_path, depth + 1, limits).map(Value::object),
            other => Err(invalid(format!("Output {output_path} is not an object, got {} instead.", crate::pyfmt::python_type_name(other)))),
        },
        Some(SegType::Number) => match value {
            Value::None => Ok(Value::None),
            Value::Bool(flag) => Ok(Value::Int(i64::from(*flag))),
            Value::Int(_) | Value::Float(_) => check_number(value, &output_path, limits).map(|()| value.clone()),
            other => Err(invalid(format!("Output {output_path} is not a number, got {} instead.", crate::pyfmt::python_type_name(other)))),
        },
        Some(SegType::String) => match value {
            Value::None => Ok(Value::None),
            Value::Str(text) => check_string(text, &output_path, limits),
            other => Err(invalid(format!("Output {output_path} must be a string, got {} instead.", short_type(other)))),
        },
        Some(SegType::Boolean) => Ok(value.clone()),
        Some(SegType::ArrayNumber) => match value {
            Value::None => Ok(Value::None),
            Value::Array(items) => {
                if items.len() > limits.max_number_array_length {
                    return Err(invalid(format!(
                        "The length of output variable `{output_path}` must be less than {} elements.",
                        limits.max_number_array_length
                    )));
                }
                let mut checked = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::Bool(flag) => checked.push(Value::Int(i64::from(*flag))),
                        Value::Int(_) | Value::Float(_) => checked.push(item.clone()),
                        _ => {
                            return Err(invalid(format!(
                                "The element at index {index} of output variable `{output_path}` must be a number."
                            )));
                        }
                    }
                }
                Ok(Value::array(checked))
            }
            _ => Err(not_array()),
        },
        Some(SegType::ArrayString) => match value {
            Value::None => Ok(Value::None),
            Value::Array(items) => {
                if items.len() > limits.max_string_array_length {
                    return Err(invalid(format!(
                        "The length of output variable `{output_path}` must be less than {} elements.",
                        limits.max_string_array_length
                    )));
                }
                let mut checked = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::None => checked.push(Value::None),
                        Value::Str(text) => checked.push(check_string(text, &format!("{output_path}[{index}]"), limits)?),
                        other => {
                            return Err(invalid(format!(
                                "Output {output_path}[{index}] must be a string, got {} instead.",
                                short_type(other)
                            )));
                        }
                    }
                }
                Ok(Value::array(checked))
            }
            _ => Err(not_array()),
        },
        Some(SegType::ArrayObject) => match value {
            Value::None => Ok(Value::None),
            Value::Array(items) => {
                if items.len() > limits.max_object_array_length {
                    return Err(invalid(format!(
                        "The length of output variable `{output_path}` must be less than {} elements.",
                        limits.max_object_array_length
                    )));
                }
                let mut checked = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::None => checked.push(Value::None),
                        Value::Object(map) => checked.push(Value::object(validate(
                            map,
                            output.children.as_deref(),
                            &format!("{output_path}[{index}]"),
                            depth + 1,
                            limits,
                        )?)),
                        other => {
                            return Err(invalid(format!(
                                "Output {output_path}[{index}] is not an object, got {} instead at index {index}.",
                                crate::pyfmt::python_type_name(other)
                            )));
                        }
                    }
                }
                Ok(Value::array(checked))
            }
            _ => Err(not_array()),
        },
        Some(SegType::ArrayBoolean) => match value {
            Value::None => Ok(Value::None),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if !matches!(item, Value::None | Value::Bool(_)) {
                        return Err(invalid(format!(
                            "Output {output_path}[{index}] is not a boolean, got {} instead.",
                            crate::pyfmt::python_type_name(item)
                        )));
                    }
                }
                Ok(value.clone())
            }
            _ => Err(not_array()),
        },
        _ => Err(invalid(format!("Output type {} is not supported.", output.kind_name))),
    }
}

fn validate_untyped(name: &str, value: &Value, prefix: &str, depth: usize, limits: &CodeLimits) -> Result<(), Invalid> {
    let output_path = path(prefix, name);
    match value {
        Value::Object(map) => validate(map, None, &output_path, depth + 1, limits).map(|_| ()),
        Value::Bool(_) | Value::None => Ok(()),
        Value::Int(_) | Value::Float(_) => check_number(value, &output_path, limits),
        Value::Str(text) => check_string(text, &output_path, limits).map(|_| ()),
        Value::Array(items) => {
            let Some(first) = items.first().filter(|first| !first.is_none()) else {
                return Ok(());
            };
            let all = |check: fn(&Value) -> bool| items.iter().all(|item| item.is_none() || check(item));
            if matches!(first, Value::Int(_) | Value::Float(_) | Value::Bool(_))
                && all(|item| matches!(item, Value::Int(_) | Value::Float(_) | Value::Bool(_)))
            {
                for (index, item) in items.iter().enumerate() {
                    if !item.is_none() {
                        check_number(item, &format!("{output_path}[{index}]"), limits)?;
                    }
                }
                return Ok(());
            }
            if matches!(first, Value::Str(_)) && all(|item| matches!(item, Value::Str(_))) {
                for (index, item) in items.iter().enumerate() {
                    if let Value::Str(text) = item {
                        check_string(text, &format!("{output_path}[{index}]"), limits)?;
                    }
                }
                return Ok(());
            }
            let objects = matches!(first, Value::Object(_)) && all(|item| matches!(item, Value::Object(_)));
            let lists = matches!(first, Value::Array(_)) && all(|item| matches!(item, Value::Array(_)));
            if objects {
                for (index, item) in items.iter().enumerate() {
                    if let Value::Object(map) = item {
                        validate(map, None, &format!("{output_path}[{index}]"), depth + 1, limits)?;
                    }
                }
                return Ok(());
            }
            if lists {
                // Dify walks nested lists as if they were mappings and fails on the first one.
                if depth + 1 > limits.max_depth {
                    return Err((format!("Depth limit {} reached, object too deep.", limits.max_depth), "DepthLimitError"));
                }
                return Err(("'list' object has no attribute 'items'".into(), "WorkflowNodeError"));
            }
            Err(invalid(format!("Output {output_path} is not a valid array. make sure all elements are of the same type.")))
        }
        Value::File(_) => Err(invalid(format!("Output {output_path} is not a valid type."))),
    }
}

fn check_string(text: &str, variable: &str, limits: &CodeLimits) -> Result<Value, Invalid> {
    if text.chars().count() > limits.max_string_length {
        return Err(invalid(format!(
            "The length of output variable `{variable}` must be less than {} characters",
            limits.max_string_length
        )));
    }
    Ok(if text.contains('\0') { Value::from(text.replace('\0', "")) } else { Value::str(text) })
}

fn check_number(value: &Value, variable: &str, limits: &CodeLimits) -> Result<(), Invalid> {
    let Some(number) = value.as_number() else {
        return Ok(());
    };
    let as_float = number.as_f64();
    if as_float > limits.max_number || as_float < limits.min_number {
        return Err(invalid(format!(
            "Output variable `{variable}` is out of range, it must be between {} and {}.",
            limits.min_number as i64, limits.max_number as i64
        )));
    }
    if let Value::Float(float) = value
        && decimal_places(*float) > limits.max_precision
    {
        return Err(invalid(format!(
            "Output variable `{variable}` has too high precision, it must be less than {} digits.",
            limits.max_precision
        )));
    }
    Ok(())
}

/// Decimal places of `Decimal(str(value)).normalize()`.
fn decimal_places(float: f64) -> usize {
    let repr = pyfmt::float_repr(float);
    let (mantissa, exponent) = match repr.split_once('e') {
        Some((mantissa, exponent)) => (mantissa.to_owned(), exponent.parse::<i64>().unwrap_or(0)),
        None => (repr.clone(), 0),
    };
    let fraction = mantissa.split_once('.').map_or("", |(_, fraction)| fraction).trim_end_matches('0');
    (fraction.len() as i64 - exponent).max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::map_of;

    fn schema(outputs: &[(&str, &str)]) -> Vec<OutputSchema> {
        outputs
            .iter()
            .map(|(name, kind)| OutputSchema {
                name: Arc::from(*name),
                kind: SegType::parse(kind),
                kind_name: (*kind).to_owned(),
                children: None,
            })
            .collect()
    }

    #[test]
    fn missing_and_extra_outputs_are_rejected_with_dify_messages() {
        let result = map_of([("a", Value::Int(1))]);
        let error = validate(&result, Some(&schema(&[("a", "number"), ("b", "string")])), "", 1, &CODE_LIMITS).unwrap_err();
        assert_eq!(error.0, "Output b is missing.");
        let result = map_of([("a", Value::Int(1)), ("extra", Value::Int(2))]);
        let error = validate(&result, Some(&schema(&[("a", "number")])), "", 1, &CODE_LIMITS).unwrap_err();
        assert_eq!(error, ("Not all output parameters are validated.".into(), "CodeNodeError"));
    }

    #[test]
    fn types_and_limits_are_enforced() {
        let result = map_of([("a", Value::str("x"))]);
        let error = validate(&result, Some(&schema(&[("a", "number")])), "", 1, &CODE_LIMITS).unwrap_err();
        assert_eq!(error.0, "Output a is not a number, got <class 'str'> instead.");
        let result = map_of([("a", Value::Bool(true))]);
        let ok = validate(&result, Some(&schema(&[("a", "number")])), "", 1, &CODE_LIMITS).unwrap();
        assert_eq!(ok.get("a"), Some(&Value::Int(1)));
        let many = Value::array((0..31).map(|_| Value::str("x")).collect());
        let error = validate(&map_of([("a", many)]), Some(&schema(&[("a", "array[string]")])), "", 1, &CODE_LIMITS).unwrap_err();
        assert_eq!(error.0, "The length of output variable `a` must be less than 30 elements.");
        assert_eq!(decimal_places(0.1), 1);
        assert_eq!(decimal_places(1e-5), 5);
        assert_eq!(decimal_places(1.5e16), 0);
    }

    #[test]
    fn deep_objects_hit_the_depth_limit() {
        let mut value = Value::Int(1);
        for _ in 0..6 {
            value = Value::object(map_of([("x", value)]));
        }
        let error = validate(&map_of([("a", value)]), None, "", 1, &CODE_LIMITS).unwrap_err();
        assert_eq!(error, ("Depth limit 5 reached, object too deep.".into(), "DepthLimitError"));
    }
}

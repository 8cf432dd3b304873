//! Condition evaluation for if-else branches and loop break conditions, with Dify's exact
//! operator semantics (Python truthiness and equality, its coercions and its error messages).

use flowgate_dsl::nodes::{Condition, ConditionValue, LogicalOperator, Operator, SubVariableCondition};

use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector};
use crate::pyfmt;
use crate::template::{Render, TextTemplate};
use crate::value::{Map, SegType, Value, key, map_of, map_with_capacity};

#[derive(Debug, Clone)]
enum Expected {
    None,
    /// A value without variables, rendered once at compile time.
    Constant(Value),
    Template(TextTemplate),
    Bool(bool),
    List(Vec<Value>),
}

#[derive(Debug, Clone)]
pub struct CompiledCondition {
    selector: Selector,
    operator: Operator,
    expected: Expected,
    sub: Option<SubVariableCondition>,
    /// The condition as Dify dumps it into `process_data`.
    pub dump: Value,
}

/// What evaluating a group of conditions produced, for node inputs and process data.
#[derive(Debug, Default)]
pub struct ConditionCheck {
    pub inputs: Vec<Value>,
    pub group_results: Vec<bool>,
    pub final_result: bool,
}

impl CompiledCondition {
    pub fn compile(condition: &Condition, resolver: &SelectorResolver<'_>) -> Self {
        let expected = match &condition.value {
            ConditionValue::None => Expected::None,
            ConditionValue::Text(text) => {
                let template = TextTemplate::compile(text, resolver);
                match template.constant() {
                    Some(text) => Expected::Constant(Value::Str(text)),
                    None => Expected::Template(template),
                }
            }
            ConditionValue::Bool(flag) => Expected::Bool(*flag),
            ConditionValue::List(items) => Expected::List(items.iter().map(Value::from).collect()),
        };
        let dump = Value::object(map_of([
            ("variable_selector", Value::array(condition.variable_selector.iter().map(|part| Value::str(part.as_str())).collect())),
            ("comparison_operator", Value::str(condition.comparison_operator.as_str())),
            ("value", raw_value(&condition.value)),
            ("sub_variable_condition", condition.sub_variable_condition.as_ref().map_or(Value::None, dump_sub)),
        ]));
        Self {
            selector: resolver.selector(&condition.variable_selector),
            operator: condition.comparison_operator,
            expected,
            sub: condition.sub_variable_condition.clone(),
            dump,
        }
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }
}

fn raw_value(value: &ConditionValue) -> Value {
    match value {
        ConditionValue::None => Value::None,
        ConditionValue::Text(text) => Value::str(text.as_str()),
        ConditionValue::Bool(flag) => Value::Bool(*flag),
        ConditionValue::List(items) => Value::array(items.iter().map(Value::from).collect()),
    }
}

fn dump_sub(sub: &SubVariableCondition) -> Value {
    let conditions = sub
        .conditions
        .iter()
        .map(|condition| {
            Value::object(map_of([
                ("key", Value::str(condition.key.as_str())),
                ("comparison_operator", Value::str(condition.comparison_operator.as_str())),
                ("value", raw_value(&condition.value)),
            ]))
        })
        .collect();
    Value::object(map_of([("logical_operator", Value::str(logical_name(sub.logical_operator))), ("conditions", Value::array(conditions))]))
}

pub fn logical_name(operator: LogicalOperator) -> &'static str {
    match operator {
        LogicalOperator::And => "and",
        LogicalOperator::Or => "or",
    }
}

/// Evaluates conditions in order with short-circuiting, as Dify's `process_conditions`.
pub fn process_conditions(conditions: &[CompiledCondition], operator: LogicalOperator, pool: &Pool) -> Result<ConditionCheck, String> {
    let mut check = ConditionCheck::default();
    for condition in conditions {
        let Some(variable) = pool.get(&condition.selector) else {
            return Err(format!("Variable {} not found", condition.selector.display()));
        };
        let declared = pool.declared_type(condition.selector.slot, &condition.selector.name);
        let variable_type = if condition.selector.path.is_empty() { declared } else { None }.unwrap_or_else(|| variable.seg_type());
        let is_file_array = variable_type == SegType::ArrayFile
            || matches!(&variable, Value::Array(items) if !items.is_empty() && items.iter().all(|item| matches!(item, Value::File(_))));
        let result = if is_file_array && matches!(condition.operator, Operator::Contains | Operator::NotContains | Operator::AllOf) {
            let Some(sub) = &condition.sub else {
                return Err("Sub variable is required".into());
            };
            process_sub_conditions(&variable, sub)?
        } else if matches!(condition.operator, Operator::Exists | Operator::NotExists) {
            evaluate(condition.operator, &variable, &Value::None)?
        } else {
            let expected = prepare_expected(&condition.expected, variable_type, pool)?;
            let mut input = map_with_capacity(3);
            input.insert(key("actual_value"), variable.clone());
            input.insert(key("expected_value"), expected.clone());
            input.insert(key("comparison_operator"), Value::Str(key(condition.operator.as_str())));
            check.inputs.push(Value::object(input));
            evaluate(condition.operator, &variable, &expected)?
        };
        check.group_results.push(result);
        if (operator == LogicalOperator::And && !result) || (operator == LogicalOperator::Or && result) {
            check.final_result = result;
            return Ok(check);
        }
    }
    check.final_result = match operator {
        LogicalOperator::And => check.group_results.iter().all(|result| *result),
        LogicalOperator::Or => check.group_results.iter().any(|result| *result),
    };
    Ok(check)
}

fn prepare_expected(expected: &Expected, variable_type: SegType, pool: &Pool) -> Result<Value, String> {
    let normalized = match expected {
        Expected::None => return Ok(Value::None),
        Expected::Constant(value) => value.clone(),
        Expected::Template(template) => Value::from(template.render(pool, Render::Text)),
        Expected::Bool(flag) => Value::Bool(*flag),
        Expected::List(items) => Value::array(items.clone()),
    };
    if matches!(variable_type, SegType::Boolean | SegType::ArrayBoolean) {
        return match &normalized {
            Value::Array(items) => items.iter().map(convert_to_bool).collect::<Result<Vec<_>, _>>().map(Value::array),
            other => convert_to_bool(other),
        };
    }
    match &normalized {
        Value::Str(_) | Value::Bool(_) => Ok(normalized),
        Value::Array(items) if items.iter().all(|item| matches!(item, Value::Str(_))) => Ok(normalized),
        Value::Array(items) if items.iter().all(|item| matches!(item, Value::Bool(_))) => Ok(normalized),
        other => Err(format!("unexpected expected value: {other}")),
    }
}

/// Dify's `_convert_to_bool`: ints by truthiness, strings through `json.loads`.
fn convert_to_bool(value: &Value) -> Result<Value, String> {
    match value {
        Value::Bool(flag) => Ok(Value::Bool(*flag)),
        Value::Int(int) => Ok(Value::Bool(*int != 0)),
        Value::Str(text) => match pyfmt::json_loads(text) {
            Ok(serde_json::Value::Bool(flag)) => Ok(Value::Bool(flag)),
            Ok(serde_json::Value::Number(number)) if number.is_i64() => Ok(Value::Bool(number.as_i64() != Some(0))),
            Ok(_) => Err(format!("unexpected value: type=<class 'str'>, value={text}")),
            Err(error) => Err(error),
        },
        other => Err(format!("unexpected value: type={}, value={}", pyfmt::python_type_name(other), pyfmt::py_str(other))),
    }
}

fn process_sub_conditions(variable: &Value, sub: &SubVariableCondition) -> Result<bool, String> {
    let files: Vec<&crate::value::File> = match variable {
        Value::Array(items) => items.iter().filter_map(|item| if let Value::File(file) = item { Some(&**file) } else { None }).collect(),
        _ => Vec::new(),
    };
    let mut group_results = Vec::with_capacity(sub.conditions.len());
    for condition in &sub.conditions {
        let key = condition.key.as_str();
        if !matches!(key, "type" | "size" | "name" | "mime_type" | "transfer_method" | "url" | "extension" | "related_id") {
            return Err(format!("'{key}' is not a valid FileAttribute"));
        }
        let mut values: Vec<Value> = files.iter().map(|file| file.attribute(key).unwrap_or(Value::None)).collect();
        let mut expected = raw_value(&condition.value);
        if key == "extension" {
            let Value::Str(text) = &expected else {
                return Err("Expected value must be a string when key is FileAttribute.EXTENSION".into());
            };
            if !text.is_empty() && !text.starts_with('.') {
                expected = Value::from(format!(".{text}"));
            }
            for value in &mut values {
                if let Value::Str(text) = value
                    && !text.is_empty()
                    && !text.starts_with('.')
                {
                    *value = Value::from(format!(".{text}"));
                }
            }
        }
        let results =
            values.iter().map(|value| evaluate(condition.comparison_operator, value, &expected)).collect::<Result<Vec<_>, _>>()?;
        let result = if condition.comparison_operator.as_str().contains("not") {
            results.iter().all(|result| *result)
        } else {
            results.iter().any(|result| *result)
        };
        group_results.push(result);
    }
    Ok(match sub.logical_operator {
        LogicalOperator::And => group_results.iter().all(|result| *result),
        LogicalOperator::Or => group_results.iter().any(|result| *result),
    })
}

/// One comparison, as Dify's `_evaluate_condition` dispatches it.
pub fn evaluate(operator: Operator, value: &Value, expected: &Value) -> Result<bool, String> {
    Ok(match operator {
        Operator::Contains => {
            if !value.truthy() {
                return Ok(false);
            }
            contains(value, expected)?
        }
        Operator::NotContains => {
            if !value.truthy() {
                return Ok(true);
            }
            !contains(value, expected)?
        }
        Operator::StartWith | Operator::EndWith => {
            if !value.truthy() {
                return Ok(false);
            }
            let Value::Str(text) = value else {
                return Err("Invalid actual value type: string".into());
            };
            let Value::Str(expected) = expected else {
                let which = if operator == Operator::StartWith { "startswith" } else { "endswith" };
                return Err(format!("Expected value must be a string for {which}"));
            };
            if operator == Operator::StartWith { text.starts_with(&**expected) } else { text.ends_with(&**expected) }
        }
        Operator::Is | Operator::IsNot => {
            if value.is_none() {
                return Ok(false);
            }
            if !matches!(value, Value::Str(_) | Value::Bool(_)) {
                return Err("Invalid actual value type: string or boolean".into());
            }
            let equal = value.py_eq(expected);
            if operator == Operator::Is { equal } else { !equal }
        }
        Operator::Empty => !value.truthy(),
        Operator::NotEmpty => value.truthy(),
        Operator::Equal | Operator::NotEqual => {
            if value.is_none() {
                return Ok(false);
            }
            let normalized = normalize_equality_expected(value, expected)?;
            let equal = value.py_eq(&normalized);
            if operator == Operator::Equal { equal } else { !equal }
        }
        Operator::Greater | Operator::Less | Operator::GreaterOrEqual | Operator::LessOrEqual => {
            if value.is_none() {
                return Ok(false);
            }
            let Some(actual) = value.as_number() else {
                return Err("Invalid actual value type: number".into());
            };
            let expected_number = normalize_numeric_expected(actual, expected)?;
            let Some(ordering) = actual.partial_cmp(expected_number) else {
                return Ok(false);
            };
            match operator {
                Operator::Greater => ordering.is_gt(),
                Operator::Less => ordering.is_lt(),
                Operator::GreaterOrEqual => ordering.is_ge(),
                _ => ordering.is_le(),
            }
        }
        Operator::Null => value.is_none(),
        Operator::NotNull => !value.is_none(),
        Operator::In | Operator::NotIn => {
            if !value.truthy() {
                return Ok(operator == Operator::NotIn);
            }
            let Value::Array(items) = expected else {
                return Err("Invalid expected value type: array".into());
            };
            let found = items.iter().any(|item| value.py_eq(item));
            if operator == Operator::In { found } else { !found }
        }
        Operator::AllOf => all_of(value, expected)?,
        Operator::Exists => !value.is_none(),
        Operator::NotExists => value.is_none(),
    })
}

fn contains(value: &Value, expected: &Value) -> Result<bool, String> {
    match value {
        Value::Str(text) => Ok(match expected {
            Value::Str(needle) => text.contains(&**needle),
            other => text.contains(&pyfmt::py_str(other)),
        }),
        Value::Array(items) => Ok(items.iter().any(|item| item.py_eq(expected))),
        _ => Err("Invalid actual value type: string or array".into()),
    }
}

fn normalize_equality_expected(value: &Value, expected: &Value) -> Result<Value, String> {
    match value {
        Value::Bool(_) => match expected {
            Value::Bool(_) | Value::Int(_) | Value::Str(_) => Ok(Value::Bool(expected.truthy())),
            other => Err(format!("Cannot convert {} to bool", pyfmt::python_type_name(other))),
        },
        Value::Int(_) => match expected {
            Value::Int(int) => Ok(Value::Int(*int)),
            Value::Bool(flag) => Ok(Value::Int(i64::from(*flag))),
            Value::Float(float) => Ok(Value::Int(float.trunc() as i64)),
            Value::Str(text) => pyfmt::parse_int(text).map(Value::Int),
            other => Err(format!("Cannot convert {} to int", pyfmt::python_type_name(other))),
        },
        Value::Float(_) => match expected {
            Value::Int(int) => Ok(Value::Float(*int as f64)),
            Value::Bool(flag) => Ok(Value::Float(f64::from(u8::from(*flag)))),
            Value::Float(float) => Ok(Value::Float(*float)),
            Value::Str(text) => pyfmt::parse_float(text).map(Value::Float),
            other => Err(format!("Cannot convert {} to float", pyfmt::python_type_name(other))),
        },
        _ => Err("Invalid actual value type: number or boolean".into()),
    }
}

fn normalize_numeric_expected(actual: crate::value::Number, expected: &Value) -> Result<crate::value::Number, String> {
    use crate::value::Number;
    match expected {
        Value::Str(text) => {
            let float = pyfmt::parse_float(text).map_err(|_| format!("Cannot convert '{text}' to number"))?;
            Ok(match actual {
                Number::Int(_) if float.fract() == 0.0 && float.is_finite() => Number::Int(float as i64),
                _ => Number::Float(float),
            })
        }
        Value::Float(float) => Ok(Number::Float(*float)),
        Value::Int(int) => Ok(Number::Int(*int)),
        Value::Bool(flag) => Ok(Number::Int(i64::from(*flag))),
        other => Err(format!("Cannot convert {} to number", pyfmt::python_type_name(other))),
    }
}

fn all_of(value: &Value, expected: &Value) -> Result<bool, String> {
    let Value::Array(expected_items) = expected else {
        return Err("all of operator expects homogeneous list of strings or booleans".into());
    };
    let all_strings = expected_items.iter().all(|item| matches!(item, Value::Str(_)));
    let all_bools = expected_items.iter().all(|item| matches!(item, Value::Bool(_)));
    if !all_strings && !all_bools {
        return Err("all of operator expects homogeneous list of strings or booleans".into());
    }
    if !value.truthy() {
        return Ok(false);
    }
    Ok(match value {
        Value::Array(items) => expected_items.iter().all(|needle| items.iter().any(|item| item.py_eq(needle))),
        Value::Str(text) if all_strings => expected_items.iter().all(|needle| needle.as_str().is_some_and(|needle| text.contains(needle))),
        _ => false,
    })
}

/// `process_data.condition_results` entry for one evaluated case.
pub fn condition_result(group: Value, check: &ConditionCheck) -> Value {
    let mut map: Map = map_with_capacity(3);
    map.insert(key("group"), group);
    map.insert(key("results"), Value::array(check.group_results.iter().map(|result| Value::Bool(*result)).collect()));
    map.insert(key("final_result"), Value::Bool(check.final_result));
    Value::object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::str(text)
    }

    fn list(items: &[&str]) -> Value {
        Value::array(items.iter().map(|item| s(item)).collect())
    }

    #[test]
    fn contains_follows_python_membership() {
        assert!(evaluate(Operator::Contains, &list(&["ab", "def"]), &s("ab")).unwrap());
        assert!(!evaluate(Operator::Contains, &list(&["1ab"]), &s("ab")).unwrap());
        assert!(evaluate(Operator::Contains, &s("hello"), &s("ell")).unwrap());
        assert!(!evaluate(Operator::Contains, &s(""), &s("")).unwrap());
        assert!(evaluate(Operator::NotContains, &Value::None, &s("x")).unwrap());
        assert!(evaluate(Operator::Contains, &Value::Int(5), &s("5")).is_err());
    }

    #[test]
    fn equality_coerces_the_expected_side_like_dify() {
        assert!(evaluate(Operator::Equal, &Value::Int(22), &s("22")).unwrap());
        assert_eq!(evaluate(Operator::Equal, &Value::Int(22), &s("22.5")), Err("invalid literal for int() with base 10: '22.5'".into()));
        assert!(evaluate(Operator::Equal, &Value::Float(2.5), &s("2.5")).unwrap());
        assert!(evaluate(Operator::NotEqual, &Value::Float(2.5), &s("3")).unwrap());
        assert!(!evaluate(Operator::Equal, &Value::None, &s("1")).unwrap());
        assert!(evaluate(Operator::Equal, &s("x"), &s("x")).is_err());
    }

    #[test]
    fn ordering_compares_ints_exactly_and_floats_otherwise() {
        assert!(evaluate(Operator::Greater, &Value::Int(50), &s("10")).unwrap());
        assert!(evaluate(Operator::GreaterOrEqual, &Value::Int(10), &s("10.0")).unwrap());
        assert!(evaluate(Operator::Less, &Value::Int(10), &s("10.5")).unwrap());
        assert!(evaluate(Operator::LessOrEqual, &Value::Bool(true), &s("1")).unwrap());
        assert_eq!(evaluate(Operator::Greater, &Value::Int(1), &s("x")), Err("Cannot convert 'x' to number".into()));
        assert_eq!(evaluate(Operator::Greater, &s("9"), &s("1")), Err("Invalid actual value type: number".into()));
    }

    #[test]
    fn in_all_of_and_emptiness() {
        assert!(evaluate(Operator::In, &s("a"), &list(&["a", "b"])).unwrap());
        assert!(evaluate(Operator::NotIn, &s(""), &list(&["a"])).unwrap());
        assert!(evaluate(Operator::AllOf, &list(&["a", "b", "c"]), &list(&["a", "c"])).unwrap());
        assert!(evaluate(Operator::AllOf, &s("abc"), &list(&["a", "bc"])).unwrap());
        assert!(evaluate(Operator::Empty, &Value::Int(0), &Value::None).unwrap());
        assert!(evaluate(Operator::NotEmpty, &list(&["x"]), &Value::None).unwrap());
        assert!(evaluate(Operator::Null, &Value::None, &Value::None).unwrap());
    }

    #[test]
    fn is_needs_a_string_or_boolean() {
        assert!(evaluate(Operator::Is, &Value::Bool(true), &Value::Bool(true)).unwrap());
        assert!(!evaluate(Operator::Is, &Value::None, &s("x")).unwrap());
        assert!(!evaluate(Operator::IsNot, &Value::None, &s("x")).unwrap());
        assert!(evaluate(Operator::Is, &Value::Int(1), &s("1")).is_err());
    }

    #[test]
    fn booleans_read_expected_values_through_json() {
        assert_eq!(convert_to_bool(&s("true")), Ok(Value::Bool(true)));
        assert_eq!(convert_to_bool(&s("0")).map(|value| value.truthy()), Ok(false));
        assert!(convert_to_bool(&s("yes")).is_err());
    }
}

//! List operator: filter → extract → order → limit, over arrays of strings, numbers,
//! booleans or files (Dify rejects other arrays).

use std::cmp::Ordering;

use flowgate_dsl::nodes::{ConditionValue, ListOperatorData, Operator};

use super::{NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector};
use crate::pyfmt;
use crate::template::{Render, TextTemplate};
use crate::value::{File, SegType, Value, map_of};

#[derive(Debug)]
enum FilterValue {
    Template(TextTemplate),
    Bool(bool),
    List(Vec<String>),
    Other(Value),
}

#[derive(Debug)]
struct Filter {
    key: String,
    operator: Operator,
    value: FilterValue,
}

#[derive(Debug)]
pub struct ListOperatorNode {
    variable: Selector,
    filters: Option<Vec<Filter>>,
    extract: Option<TextTemplate>,
    order: Option<(String, bool)>,
    limit: Option<i64>,
}

impl ListOperatorNode {
    pub fn compile(data: &ListOperatorData, resolver: &SelectorResolver<'_>) -> Self {
        let filters = data.filter_by.enabled.then(|| {
            data.filter_by
                .conditions
                .iter()
                .map(|condition| Filter {
                    key: condition.key.clone(),
                    operator: condition.comparison_operator,
                    value: match &condition.value {
                        ConditionValue::Text(text) => FilterValue::Template(TextTemplate::compile(text, resolver)),
                        ConditionValue::Bool(flag) => FilterValue::Bool(*flag),
                        ConditionValue::List(items) if items.iter().all(serde_json::Value::is_string) => {
                            FilterValue::List(items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
                        }
                        ConditionValue::List(items) => FilterValue::Other(Value::from(&serde_json::Value::Array(items.clone()))),
                        ConditionValue::None => FilterValue::Other(Value::None),
                    },
                })
                .collect()
        });
        Self {
            variable: resolver.selector(&data.variable),
            filters,
            extract: data.extract_by.enabled.then(|| TextTemplate::compile(&data.extract_by.serial, resolver)),
            order: data.order_by.enabled.then(|| (data.order_by.key.clone(), data.order_by.value == "desc")),
            limit: data.limit.enabled.then_some(data.limit.size),
        }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> NodeResult {
        let Some(variable) = ctx.pool.get(&self.variable) else {
            return NodeResult::failed(format!("Variable not found for selector: {}", self.variable.display()), "WorkflowNodeError")
                .with_inputs(Default::default());
        };
        if !variable.truthy() {
            let empty = map_of([("variable", Value::array(Vec::new()))]);
            return outputs_for(Vec::new()).with_inputs(empty.clone()).with_process_data(empty);
        }
        let declared = ctx.pool.declared_type(self.variable.slot, &self.variable.name).filter(|_| self.variable.path.is_empty());
        let kind = declared.unwrap_or_else(|| variable.seg_type());
        let Value::Array(items) = &variable else {
            let runtime = if kind == SegType::Secret { kind } else { variable.seg_type() };
            return self.not_an_array(runtime);
        };
        if !matches!(kind, SegType::ArrayFile | SegType::ArrayNumber | SegType::ArrayString | SegType::ArrayBoolean) {
            return self.not_an_array(kind);
        }
        let payload = map_of([("variable", variable.clone())]);
        match self.apply(kind, items.to_vec(), ctx.pool) {
            Ok(result) => outputs_for(result).with_inputs(payload.clone()).with_process_data(payload),
            Err(error) => NodeResult::failed(error, "ListOperatorError").with_inputs(payload.clone()).with_process_data(payload),
        }
    }

    fn not_an_array(&self, kind: SegType) -> NodeResult {
        NodeResult::failed(
            format!(
                "Variable {} is not an array type, actual type: <class '{}'>",
                self.variable.display(),
                python_class(kind, self.variable.path.is_empty())
            ),
            "WorkflowNodeError",
        )
        .with_inputs(Default::default())
    }

    fn apply(&self, kind: SegType, mut items: Vec<Value>, pool: &Pool) -> Result<Vec<Value>, String> {
        if let Some(filters) = &self.filters {
            for filter in filters {
                items = apply_filter(kind, filter, items, pool)?;
            }
        }
        if let Some(serial) = &self.extract {
            let index = pyfmt::parse_int(&serial.render(pool, Render::Text))?;
            if index < 1 {
                return Err(format!("Invalid serial index: must be >= 1, got {index}"));
            }
            if index as usize > items.len() {
                return Err(format!("Invalid serial index: must be <= {}, got {index}", items.len()));
            }
            items = vec![items[index as usize - 1].clone()];
        }
        if let Some((key, descending)) = &self.order {
            // Python's `sorted(reverse=True)` keeps equal items in their original order.
            let direction = |ordering: Ordering| {
                if *descending { ordering.reverse() } else { ordering }
            };
            if kind == SegType::ArrayFile {
                let extract = file_sort_key(key)?;
                items.sort_by(|a, b| direction(python_order(&extract(a), &extract(b))));
            } else {
                items.sort_by(|a, b| direction(python_order(a, b)));
            }
        }
        if let Some(size) = self.limit {
            // Python slicing: `[:size]`, negative sizes count from the end.
            let length = items.len() as i64;
            let end = if size < 0 { (length + size).max(0) } else { size.min(length) };
            items.truncate(end as usize);
        }
        Ok(items)
    }
}

/// The Python class graphon reports for a value: the pool stores top-level values as
/// `Variable`s, while a nested selector yields a freshly built `Segment`.
fn python_class(kind: SegType, top_level: bool) -> String {
    let stem = match kind {
        SegType::String => "String",
        SegType::Secret => "Secret",
        SegType::Integer => "Integer",
        SegType::Float => "Float",
        SegType::Boolean => "Boolean",
        SegType::Object => "Object",
        SegType::File => "File",
        SegType::None => "None",
        SegType::ArrayObject => "ArrayObject",
        SegType::ArrayAny => "ArrayAny",
        SegType::ArrayString => "ArrayString",
        SegType::ArrayNumber => "ArrayNumber",
        SegType::ArrayBoolean => "ArrayBoolean",
        SegType::ArrayFile => "ArrayFile",
        SegType::Number => "Float",
    };
    if top_level { format!("graphon.variables.variables.{stem}Variable") } else { format!("graphon.variables.segments.{stem}Segment") }
}

fn outputs_for(items: Vec<Value>) -> NodeResult {
    let first = items.first().cloned().unwrap_or(Value::None);
    let last = items.last().cloned().unwrap_or(Value::None);
    NodeResult::succeeded(map_of([("result", Value::array(items)), ("first_record", first), ("last_record", last)]))
}

fn apply_filter(kind: SegType, filter: &Filter, items: Vec<Value>, pool: &Pool) -> Result<Vec<Value>, String> {
    let rendered = || match &filter.value {
        FilterValue::Template(template) => Ok(template.render(pool, Render::Text)),
        FilterValue::Bool(flag) => Err(format!("Invalid filter value: {}", if *flag { "True" } else { "False" })),
        FilterValue::List(list) => Err(format!("Invalid filter value: {}", crate::value::python_list_of_strings(list))),
        FilterValue::Other(value) => Err(format!("Invalid filter value: {}", pyfmt::py_str(value))),
    };
    match kind {
        SegType::ArrayString => {
            let value = rendered()?;
            let keep = string_filter(filter.operator, value)?;
            Ok(items.into_iter().filter(|item| item.as_str().is_some_and(&keep)).collect())
        }
        SegType::ArrayNumber => {
            let value = pyfmt::parse_float(&rendered()?)?;
            let keep = number_filter(filter.operator, value)?;
            Ok(items.into_iter().filter(|item| item.as_number().is_some_and(|number| keep(number.as_f64()))).collect())
        }
        SegType::ArrayFile => {
            let keep = file_filter(&filter.key, filter.operator, &filter.value, pool)?;
            Ok(items.into_iter().filter(|item| matches!(item, Value::File(file) if keep(file))).collect())
        }
        _ => {
            let FilterValue::Bool(expected) = filter.value else {
                return Err(format!("Boolean filter expects a boolean value, got {}", filter_value_type(&filter.value)));
            };
            let keep = match filter.operator {
                Operator::Is => true,
                Operator::IsNot => false,
                other => return Err(format!("Invalid condition: {}", other.as_str())),
            };
            Ok(items.into_iter().filter(|item| matches!(item, Value::Bool(flag) if (*flag == expected) == keep)).collect())
        }
    }
}

fn filter_value_type(value: &FilterValue) -> &'static str {
    match value {
        FilterValue::Template(_) => "<class 'str'>",
        FilterValue::Bool(_) => "<class 'bool'>",
        FilterValue::List(_) => "<class 'list'>",
        FilterValue::Other(value) => crate::pyfmt::python_type_name(value),
    }
}

type TextKeep = Box<dyn Fn(&str) -> bool>;
type NumberKeep = Box<dyn Fn(f64) -> bool>;
type FileKeep = Box<dyn Fn(&File) -> bool>;

fn string_filter(operator: Operator, value: String) -> Result<TextKeep, String> {
    Ok(match operator {
        Operator::Empty => Box::new(|item: &str| item.is_empty()),
        Operator::NotEmpty => Box::new(|item: &str| !item.is_empty()),
        Operator::Contains => Box::new(move |item: &str| item.contains(value.as_str())),
        Operator::NotContains => Box::new(move |item: &str| !item.contains(value.as_str())),
        Operator::StartWith => Box::new(move |item: &str| item.starts_with(value.as_str())),
        Operator::EndWith => Box::new(move |item: &str| item.ends_with(value.as_str())),
        Operator::Is => Box::new(move |item: &str| item == value),
        Operator::IsNot => Box::new(move |item: &str| item != value),
        // `x in value` with a string value is a substring test in Python.
        Operator::In => Box::new(move |item: &str| value.contains(item)),
        Operator::NotIn => Box::new(move |item: &str| !value.contains(item)),
        other => return Err(format!("Invalid condition: {}", other.as_str())),
    })
}

fn number_filter(operator: Operator, value: f64) -> Result<NumberKeep, String> {
    Ok(match operator {
        Operator::Equal => Box::new(move |item| item == value),
        Operator::NotEqual => Box::new(move |item| item != value),
        Operator::Less => Box::new(move |item| item < value),
        Operator::LessOrEqual => Box::new(move |item| item <= value),
        Operator::Greater => Box::new(move |item| item > value),
        Operator::GreaterOrEqual => Box::new(move |item| item >= value),
        other => return Err(format!("Invalid condition: {}", other.as_str())),
    })
}

fn file_string(file: &File, key: &str) -> Option<String> {
    Some(match key {
        "name" => file.filename.clone().unwrap_or_default(),
        "type" => file.kind.clone(),
        "extension" => file.extension.clone().unwrap_or_default(),
        "mime_type" => file.mime_type.clone().unwrap_or_default(),
        "transfer_method" => file.transfer_method.clone(),
        "url" => file.remote_url.clone().unwrap_or_default(),
        "related_id" => file.related_id.clone().unwrap_or_default(),
        _ => return None,
    })
}

fn file_filter(key: &str, operator: Operator, value: &FilterValue, pool: &Pool) -> Result<FileKeep, String> {
    let key_owned = key.to_owned();
    let text = match value {
        FilterValue::Template(template) => Some(template.render(pool, Render::Text)),
        FilterValue::Bool(_) => {
            return Err("File filter expects a string value, got <class 'bool'>".into());
        }
        _ => None,
    };
    match (key, &text) {
        ("name" | "extension" | "mime_type" | "url" | "related_id", Some(text)) => {
            let keep = string_filter(operator, text.clone())?;
            Ok(Box::new(move |file: &File| file_string(file, &key_owned).is_some_and(|field| keep(&field))))
        }
        ("type" | "transfer_method", _) => {
            // Python's `x in value`: a substring test for a string, membership for a list.
            let haystack: Result<TextKeep, String> = match (value, text) {
                (_, Some(text)) => Ok(Box::new(move |field: &str| text.contains(field))),
                (FilterValue::List(list), None) => {
                    let list = list.clone();
                    Ok(Box::new(move |field: &str| list.iter().any(|option| option == field)))
                }
                (FilterValue::Other(other), None) => Err(format!("argument of type '{}' is not iterable", python_short_type(other))),
                _ => Err(format!("Invalid key: {key}")),
            };
            let contains = haystack?;
            let negate = match operator {
                Operator::In => false,
                Operator::NotIn => true,
                other => return Err(format!("Invalid condition: {}", other.as_str())),
            };
            Ok(Box::new(move |file: &File| file_string(file, &key_owned).is_some_and(|field| contains(&field) != negate)))
        }
        ("size", Some(text)) => {
            let keep = number_filter(operator, pyfmt::parse_float(text)?)?;
            Ok(Box::new(move |file: &File| keep(file.size as f64)))
        }
        _ => Err(format!("Invalid key: {key}")),
    }
}

fn python_short_type(value: &Value) -> &'static str {
    match value {
        Value::None => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        _ => "object",
    }
}

fn file_sort_key(key: &str) -> Result<impl Fn(&Value) -> Value + use<>, String> {
    let key = key.to_owned();
    if !matches!(key.as_str(), "name" | "type" | "extension" | "mime_type" | "transfer_method" | "url" | "related_id" | "size") {
        return Err(format!("Invalid order key: {key}"));
    }
    Ok(move |item: &Value| match item {
        Value::File(file) if key == "size" => Value::Int(file.size),
        Value::File(file) => Value::from(file_string(file, &key).unwrap_or_default()),
        _ => Value::None,
    })
}

/// Python's ordering for the scalars a list operator sorts (strings, numbers, booleans).
fn python_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        _ => match (a.as_number(), b.as_number()) {
            (Some(x), Some(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
    }
}

//! Typed `data` of each node kind, read leniently from the export.
//!
//! Field names and defaults follow Dify's node entities. Unknown keys are ignored here (the
//! original `data` mapping stays available on [`crate::Node::raw`]).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::lenient;

pub type Selector = Vec<String>;

/// The kind-specific configuration of a node.
#[derive(Debug, Clone)]
pub enum NodeData {
    Start(StartData),
    End(EndData),
    Answer(AnswerData),
    IfElse(IfElseData),
    Code(CodeData),
    TemplateTransform(TemplateTransformData),
    HttpRequest(HttpRequestData),
    /// Also the legacy `variable-assigner` node type, which Dify treats as an aggregator.
    VariableAggregator(VariableAggregatorData),
    AssignerV1(AssignerV1Data),
    AssignerV2(AssignerV2Data),
    Iteration(IterationData),
    IterationStart,
    Loop(LoopData),
    LoopStart,
    LoopEnd,
    ListOperator(ListOperatorData),
    DocumentExtractor(DocumentExtractorData),
    Llm(LlmData),
    QuestionClassifier(QuestionClassifierData),
    ParameterExtractor(ParameterExtractorData),
    Tool(ToolData),
    Agent(AgentData),
    KnowledgeRetrieval(KnowledgeRetrievalData),
    /// A node type Dify knows but flowgate does not run yet (human-input, triggers, RAG
    /// pipeline nodes). Loading succeeds; running such a node fails with "not supported yet".
    NotSupported,
    /// The `data` block could not be read; a diagnostic says why.
    Invalid,
}

/// Node types Dify defines that flowgate parses but does not execute yet.
pub const NOT_SUPPORTED_TYPES: &[&str] = &[
    "human-input",
    "datasource",
    "knowledge-index",
    "trigger-webhook",
    "trigger-schedule",
    "trigger-plugin",
    "agent_v2",
    "knowledge_retrieval_v2",
    "knowledge-retrieval-v2",
    "human_input_v2",
    "command",
];

/// Reads the typed data for `node_type`. `Ok(None)` means the node type is unknown.
pub(crate) fn parse_node_data(node_type: &str, version: &str, data: &Value) -> Result<Option<NodeData>, ParseError> {
    let node = match node_type {
        "start" => NodeData::Start(read(data)?),
        "end" => NodeData::End(read(data)?),
        "answer" => NodeData::Answer(read(data)?),
        "if-else" => NodeData::IfElse(IfElseData::read(data)?),
        "code" => NodeData::Code(read(data)?),
        "template-transform" => NodeData::TemplateTransform(read(data)?),
        "http-request" => NodeData::HttpRequest(read(data)?),
        "variable-aggregator" | "variable-assigner" => NodeData::VariableAggregator(read(data)?),
        "assigner" if version == "2" || (version != "1" && data.get("items").is_some()) => NodeData::AssignerV2(read(data)?),
        "assigner" => NodeData::AssignerV1(read(data)?),
        "iteration" => NodeData::Iteration(read(data)?),
        "iteration-start" => NodeData::IterationStart,
        "loop" => NodeData::Loop(read(data)?),
        "loop-start" => NodeData::LoopStart,
        "loop-end" => NodeData::LoopEnd,
        "list-operator" => NodeData::ListOperator(read(data)?),
        "document-extractor" => NodeData::DocumentExtractor(read(data)?),
        "llm" => NodeData::Llm(read(data)?),
        "question-classifier" => NodeData::QuestionClassifier(read(data)?),
        "parameter-extractor" => NodeData::ParameterExtractor(read(data)?),
        "tool" => NodeData::Tool(read(data)?),
        "agent" => NodeData::Agent(read(data)?),
        "knowledge-retrieval" => NodeData::KnowledgeRetrieval(read(data)?),
        other if NOT_SUPPORTED_TYPES.contains(&other) => NodeData::NotSupported,
        _ => return Ok(None),
    };
    Ok(Some(node))
}

/// Why a node's `data` could not be read: the path of the offending field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

fn read<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(data).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        ParseError { field: if path == "." { String::new() } else { path }, message }
    })
}

// ---------------------------------------------------------------------------------------------
// start / end / answer

#[derive(Debug, Clone, Deserialize)]
pub struct StartData {
    #[serde(default, deserialize_with = "lenient::list")]
    pub variables: Vec<InputVariable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputVariable {
    #[serde(deserialize_with = "lenient::string")]
    pub variable: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub label: String,
    #[serde(rename = "type")]
    pub kind: InputType,
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub required: bool,
    #[serde(default)]
    pub default: Value,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub max_length: Option<i64>,
    #[serde(default, deserialize_with = "options_list")]
    pub options: Vec<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub allowed_file_types: Vec<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub allowed_file_extensions: Vec<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub allowed_file_upload_methods: Vec<String>,
    #[serde(default)]
    pub json_schema: Value,
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub hide: bool,
}

fn options_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    // Options are strings in the UI; tolerate numbers written without quotes.
    lenient::opt_selector(deserializer).map(Option::unwrap_or_default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InputType {
    #[serde(rename = "text-input")]
    TextInput,
    #[serde(rename = "select")]
    Select,
    #[serde(rename = "paragraph")]
    Paragraph,
    #[serde(rename = "number")]
    Number,
    #[serde(rename = "external_data_tool")]
    ExternalDataTool,
    #[serde(rename = "file")]
    File,
    #[serde(rename = "file-list")]
    FileList,
    #[serde(rename = "checkbox")]
    Checkbox,
    #[serde(rename = "json_object")]
    JsonObject,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TextInput => "text-input",
            Self::Select => "select",
            Self::Paragraph => "paragraph",
            Self::Number => "number",
            Self::ExternalDataTool => "external_data_tool",
            Self::File => "file",
            Self::FileList => "file-list",
            Self::Checkbox => "checkbox",
            Self::JsonObject => "json_object",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndData {
    #[serde(default, deserialize_with = "lenient::list")]
    pub outputs: Vec<OutputVariable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputVariable {
    #[serde(deserialize_with = "lenient::string")]
    pub variable: String,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub value_selector: Selector,
    /// Missing in some exports (Dify defaults it to `any`); `Array[...]` is lower-cased.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub value_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AnswerData {
    #[serde(deserialize_with = "lenient::string")]
    pub answer: String,
}

// ---------------------------------------------------------------------------------------------
// conditions (if-else, loop break conditions)

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalOperator {
    #[default]
    And,
    Or,
}

/// The 22 comparison operators, spelled exactly as Dify spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    #[serde(rename = "contains")]
    Contains,
    #[serde(rename = "not contains")]
    NotContains,
    #[serde(rename = "start with")]
    StartWith,
    #[serde(rename = "end with")]
    EndWith,
    #[serde(rename = "is")]
    Is,
    #[serde(rename = "is not")]
    IsNot,
    #[serde(rename = "empty")]
    Empty,
    #[serde(rename = "not empty")]
    NotEmpty,
    #[serde(rename = "in")]
    In,
    #[serde(rename = "not in")]
    NotIn,
    #[serde(rename = "all of")]
    AllOf,
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "≠")]
    NotEqual,
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "≥")]
    GreaterOrEqual,
    #[serde(rename = "≤")]
    LessOrEqual,
    #[serde(rename = "null")]
    Null,
    #[serde(rename = "not null")]
    NotNull,
    #[serde(rename = "exists")]
    Exists,
    #[serde(rename = "not exists")]
    NotExists,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contains => "contains",
            Self::NotContains => "not contains",
            Self::StartWith => "start with",
            Self::EndWith => "end with",
            Self::Is => "is",
            Self::IsNot => "is not",
            Self::Empty => "empty",
            Self::NotEmpty => "not empty",
            Self::In => "in",
            Self::NotIn => "not in",
            Self::AllOf => "all of",
            Self::Equal => "=",
            Self::NotEqual => "≠",
            Self::Greater => ">",
            Self::Less => "<",
            Self::GreaterOrEqual => "≥",
            Self::LessOrEqual => "≤",
            Self::Null => "null",
            Self::NotNull => "not null",
            Self::Exists => "exists",
            Self::NotExists => "not exists",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub variable_selector: Selector,
    pub comparison_operator: Operator,
    #[serde(default, deserialize_with = "condition_value")]
    pub value: ConditionValue,
    #[serde(default)]
    pub sub_variable_condition: Option<SubVariableCondition>,
}

/// The right-hand side of a condition: `str | list[str] | bool | None` in Dify.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ConditionValue {
    #[default]
    None,
    Text(String),
    Bool(bool),
    /// Items are kept as JSON so that "list of strings" and "list of booleans" stay distinct.
    List(Vec<Value>),
}

fn condition_value<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ConditionValue, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => ConditionValue::None,
        Value::String(text) => ConditionValue::Text(text),
        Value::Bool(flag) => ConditionValue::Bool(flag),
        Value::Number(number) => ConditionValue::Text(number.to_string()),
        Value::Array(items) => ConditionValue::List(items),
        Value::Object(_) => {
            return Err(serde::de::Error::custom("expected a string, list or boolean, found a mapping"));
        }
    })
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubVariableCondition {
    #[serde(default)]
    pub logical_operator: LogicalOperator,
    #[serde(default, deserialize_with = "lenient::list")]
    pub conditions: Vec<SubCondition>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubCondition {
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    pub comparison_operator: Operator,
    #[serde(default, deserialize_with = "condition_value")]
    pub value: ConditionValue,
}

#[derive(Debug, Clone)]
pub struct IfElseData {
    pub cases: Vec<Case>,
    /// The pre-`cases` shape: one implicit case whose branch handle is `"true"`.
    pub legacy: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    #[serde(deserialize_with = "lenient::string")]
    pub case_id: String,
    #[serde(default)]
    pub logical_operator: LogicalOperator,
    #[serde(default, deserialize_with = "lenient::list")]
    pub conditions: Vec<Condition>,
}

impl IfElseData {
    fn read(data: &Value) -> Result<Self, ParseError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            cases: Option<Vec<Case>>,
            #[serde(default, deserialize_with = "lenient::or_default")]
            logical_operator: LogicalOperator,
            #[serde(default, deserialize_with = "lenient::list")]
            conditions: Vec<Condition>,
        }
        let raw: Raw = read(data)?;
        Ok(match raw.cases {
            Some(cases) => Self { cases, legacy: false },
            None => Self {
                cases: vec![Case { case_id: "true".into(), logical_operator: raw.logical_operator, conditions: raw.conditions }],
                legacy: true,
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// code / template-transform

#[derive(Debug, Clone, Deserialize)]
pub struct VariableBinding {
    #[serde(deserialize_with = "lenient::string")]
    pub variable: String,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub value_selector: Selector,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeData {
    #[serde(default, deserialize_with = "lenient::list")]
    pub variables: Vec<VariableBinding>,
    #[serde(deserialize_with = "lenient::string")]
    pub code_language: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub code: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub outputs: indexmap_like::OrderedMap<CodeOutput>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeOutput {
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default)]
    pub children: Option<indexmap_like::OrderedMap<CodeOutput>>,
}

/// Insertion-ordered string-keyed map (serde_json with `preserve_order` keeps key order).
pub mod indexmap_like {
    use serde::{Deserialize, de::DeserializeOwned};

    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderedMap<T>(pub Vec<(String, T)>);

    impl<T> Default for OrderedMap<T> {
        fn default() -> Self {
            Self(Vec::new())
        }
    }

    impl<'de, T: DeserializeOwned> Deserialize<'de> for OrderedMap<T> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let map = serde_json::Map::deserialize(deserializer)?;
            map.into_iter()
                .map(|(key, value)| {
                    T::deserialize(value)
                        .map(|item| (key.clone(), item))
                        .map_err(|error| serde::de::Error::custom(format!("{key}: {error}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self)
        }
    }

    impl<T> OrderedMap<T> {
        pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
            self.0.iter().map(|(key, value)| (key, value))
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        pub fn get(&self, key: &str) -> Option<&T> {
            self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TemplateTransformData {
    #[serde(default, deserialize_with = "lenient::list")]
    pub variables: Vec<VariableBinding>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub template: String,
}

// ---------------------------------------------------------------------------------------------
// http-request

#[derive(Debug, Clone, Deserialize)]
pub struct HttpRequestData {
    #[serde(deserialize_with = "lenient::string")]
    pub method: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub url: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub authorization: HttpAuthorization,
    #[serde(default, deserialize_with = "lenient::string")]
    pub headers: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub params: String,
    #[serde(default)]
    pub body: Option<HttpBody>,
    #[serde(default)]
    pub timeout: Option<HttpTimeout>,
    #[serde(default, deserialize_with = "lenient::opt_boolean")]
    pub ssl_verify: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpAuthorization {
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default)]
    pub config: Option<HttpAuthConfig>,
}

impl Default for HttpAuthorization {
    fn default() -> Self {
        Self { kind: "no-auth".into(), config: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpAuthConfig {
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub api_key: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub header: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpBody {
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default, deserialize_with = "body_data")]
    pub data: Vec<HttpBodyItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpBodyItem {
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(rename = "type", default = "text_kind", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub file: Selector,
}

fn text_kind() -> String {
    "text".into()
}

/// Legacy exports store the body as a plain string; Dify turns it into one text item.
fn body_data<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<HttpBodyItem>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![HttpBodyItem { key: String::new(), kind: "text".into(), value: text, file: Vec::new() }]),
        Value::Array(items) => items.into_iter().map(|item| HttpBodyItem::deserialize(item).map_err(serde::de::Error::custom)).collect(),
        other => Err(serde::de::Error::custom(format!("expected a list of body items, found {}", lenient::kind(&other)))),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpTimeout {
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub connect: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub read: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub write: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// variable aggregator / assigner

#[derive(Debug, Clone, Deserialize)]
pub struct VariableAggregatorData {
    #[serde(default, deserialize_with = "lenient::string")]
    pub output_type: String,
    #[serde(default, deserialize_with = "lenient::selectors")]
    pub variables: Vec<Selector>,
    #[serde(default)]
    pub advanced_settings: Option<AggregatorSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AggregatorSettings {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub group_enabled: bool,
    #[serde(default, deserialize_with = "lenient::list")]
    pub groups: Vec<AggregatorGroup>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AggregatorGroup {
    #[serde(deserialize_with = "lenient::string")]
    pub group_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub output_type: String,
    #[serde(default, deserialize_with = "lenient::selectors")]
    pub variables: Vec<Selector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssignerV1Data {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub assigned_variable_selector: Selector,
    pub write_mode: WriteMode,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub input_variable_selector: Selector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WriteMode {
    #[serde(rename = "over-write")]
    OverWrite,
    #[serde(rename = "append")]
    Append,
    #[serde(rename = "clear")]
    Clear,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssignerV2Data {
    #[serde(default, deserialize_with = "lenient::list")]
    pub items: Vec<AssignerItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssignerItem {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub variable_selector: Selector,
    pub input_type: AssignerInput,
    pub operation: AssignerOperation,
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignerInput {
    Variable,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AssignerOperation {
    #[serde(rename = "over-write")]
    OverWrite,
    #[serde(rename = "clear")]
    Clear,
    #[serde(rename = "append")]
    Append,
    #[serde(rename = "extend")]
    Extend,
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "+=")]
    Add,
    #[serde(rename = "-=")]
    Subtract,
    #[serde(rename = "*=")]
    Multiply,
    #[serde(rename = "/=")]
    Divide,
    #[serde(rename = "remove-first")]
    RemoveFirst,
    #[serde(rename = "remove-last")]
    RemoveLast,
}

impl AssignerOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverWrite => "over-write",
            Self::Clear => "clear",
            Self::Append => "append",
            Self::Extend => "extend",
            Self::Set => "set",
            Self::Add => "+=",
            Self::Subtract => "-=",
            Self::Multiply => "*=",
            Self::Divide => "/=",
            Self::RemoveFirst => "remove-first",
            Self::RemoveLast => "remove-last",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// iteration / loop

#[derive(Debug, Clone, Deserialize)]
pub struct IterationData {
    #[serde(default, deserialize_with = "lenient::string")]
    pub start_node_id: String,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub iterator_selector: Selector,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub output_selector: Selector,
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub is_parallel: bool,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub parallel_nums: Option<i64>,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub error_handle_mode: ErrorHandleMode,
    #[serde(default, deserialize_with = "lenient::opt_boolean")]
    pub flatten_output: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ErrorHandleMode {
    #[default]
    #[serde(rename = "terminated")]
    Terminated,
    #[serde(rename = "continue-on-error")]
    ContinueOnError,
    #[serde(rename = "remove-abnormal-output")]
    RemoveAbnormalOutput,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoopData {
    #[serde(default, deserialize_with = "lenient::string")]
    pub start_node_id: String,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    pub loop_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub break_conditions: Vec<Condition>,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub logical_operator: LogicalOperator,
    #[serde(default, deserialize_with = "lenient::list")]
    pub loop_variables: Vec<LoopVariable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoopVariable {
    #[serde(deserialize_with = "lenient::string")]
    pub label: String,
    #[serde(deserialize_with = "lenient::string")]
    pub var_type: String,
    #[serde(deserialize_with = "lenient::string")]
    pub value_type: String,
    #[serde(default)]
    pub value: Value,
}

// ---------------------------------------------------------------------------------------------
// list-operator / document-extractor

#[derive(Debug, Clone, Deserialize)]
pub struct ListOperatorData {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub variable: Selector,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub filter_by: FilterBy,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub order_by: OrderBy,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub limit: Limit,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub extract_by: ExtractBy,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterBy {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "lenient::list")]
    pub conditions: Vec<FilterCondition>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FilterCondition {
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(default = "default_filter_operator")]
    pub comparison_operator: Operator,
    #[serde(default, deserialize_with = "condition_value")]
    pub value: ConditionValue,
}

fn default_filter_operator() -> Operator {
    Operator::Contains
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OrderBy {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Limit {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default = "minus_one", deserialize_with = "int_or_minus_one")]
    pub size: i64,
}

impl Default for Limit {
    fn default() -> Self {
        Self { enabled: false, size: -1 }
    }
}

fn minus_one() -> i64 {
    -1
}

fn int_or_minus_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    Ok(lenient::opt_int(deserializer)?.unwrap_or(-1))
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtractBy {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default = "one", deserialize_with = "lenient::string")]
    pub serial: String,
}

impl Default for ExtractBy {
    fn default() -> Self {
        Self { enabled: false, serial: one() }
    }
}

fn one() -> String {
    "1".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct DocumentExtractorData {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub variable_selector: Selector,
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub is_array_file: bool,
}

// ---------------------------------------------------------------------------------------------
// model-backed nodes (executed through the model port)

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    #[serde(default, deserialize_with = "lenient::string")]
    pub provider: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub mode: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub completion_params: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PromptMessage {
    #[serde(default, deserialize_with = "lenient::string")]
    pub role: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub text: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub edition_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub jinja2_text: Option<String>,
}

/// Chat models take a list of messages; completion models a single template.
#[derive(Debug, Clone)]
pub enum PromptTemplate {
    Chat(Vec<PromptMessage>),
    Completion(PromptMessage),
}

impl<'de> Deserialize<'de> for PromptTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(Self::Chat(Vec::new())),
            Value::Array(items) => items
                .into_iter()
                .map(|item| PromptMessage::deserialize(item).map_err(serde::de::Error::custom))
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Chat),
            value @ Value::Object(_) => PromptMessage::deserialize(value).map(Self::Completion).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a list of messages or a completion template, found {}",
                lenient::kind(&other)
            ))),
        }
    }
}

impl PromptTemplate {
    pub fn messages(&self) -> &[PromptMessage] {
        match self {
            Self::Chat(messages) => messages,
            Self::Completion(message) => std::slice::from_ref(message),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContextConfig {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "lenient::opt_selector")]
    pub variable_selector: Option<Selector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct VisionConfig {
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub enabled: bool,
    #[serde(default)]
    pub configs: Option<VisionOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct VisionOptions {
    #[serde(default, deserialize_with = "lenient::opt_selector")]
    pub variable_selector: Option<Selector>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PromptConfig {
    #[serde(default, deserialize_with = "lenient::list")]
    pub jinja2_variables: Vec<VariableBinding>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlmData {
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub model: ModelConfig,
    #[serde(default = "empty_chat")]
    pub prompt_template: PromptTemplate,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub prompt_config: PromptConfig,
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub context: ContextConfig,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub vision: VisionConfig,
    #[serde(default)]
    pub structured_output: Option<Value>,
    #[serde(default, alias = "structured_output_enabled", deserialize_with = "lenient::boolean")]
    pub structured_output_switch_on: bool,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub reasoning_format: Option<String>,
}

fn empty_chat() -> PromptTemplate {
    PromptTemplate::Chat(Vec::new())
}

#[derive(Debug, Clone, Deserialize)]
pub struct QuestionClassifierData {
    #[serde(default, deserialize_with = "lenient::selector")]
    pub query_variable_selector: Selector,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub model: ModelConfig,
    #[serde(default, deserialize_with = "lenient::list")]
    pub classes: Vec<ClassConfig>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub instruction: Option<String>,
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub vision: VisionConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClassConfig {
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub label: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ParameterExtractorData {
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub model: ModelConfig,
    #[serde(default, deserialize_with = "lenient::selector")]
    pub query: Selector,
    #[serde(default, deserialize_with = "lenient::list")]
    pub parameters: Vec<ExtractedParameter>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub instruction: Option<String>,
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub reasoning_mode: Option<String>,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub vision: VisionConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtractedParameter {
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    /// Legacy `bool` means `boolean` and `select` means `string`.
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::opt_selector")]
    pub options: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub required: bool,
}

// ---------------------------------------------------------------------------------------------
// tools, agents, knowledge (executed through their ports)

#[derive(Debug, Clone, Deserialize)]
pub struct ToolData {
    #[serde(default, deserialize_with = "lenient::string")]
    pub provider_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub provider_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub provider_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub tool_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub tool_label: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub tool_configurations: Map<String, Value>,
    #[serde(default, deserialize_with = "tool_parameters")]
    pub tool_parameters: Vec<(String, ToolInput)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolInput {
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default)]
    pub value: Value,
}

/// Dify drops tool parameters whose value is `null`.
fn tool_parameters<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, ToolInput)>, D::Error> {
    let map: Option<Map<String, Value>> = Option::deserialize(deserializer)?;
    let mut parameters = Vec::new();
    for (name, input) in map.unwrap_or_default() {
        // Early exports wrote a parameter as a bare template string.
        let input = match input {
            Value::String(text) => serde_json::json!({"type": "mixed", "value": text}),
            other => other,
        };
        if input.is_null() || input.get("value").is_none_or(Value::is_null) {
            continue;
        }
        let input = ToolInput::deserialize(input).map_err(|error| serde::de::Error::custom(format!("{name}: {error}")))?;
        parameters.push((name, input));
    }
    Ok(parameters)
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentData {
    #[serde(default, deserialize_with = "lenient::string")]
    pub agent_strategy_provider_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub agent_strategy_name: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub agent_parameters: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KnowledgeRetrievalData {
    #[serde(default, deserialize_with = "lenient::opt_selector")]
    pub query_variable_selector: Option<Selector>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub dataset_ids: Vec<Value>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub retrieval_mode: Option<String>,
}

//! Structural validation: what would make a graph impossible (or pointless) to run.

use std::collections::{HashMap, HashSet};

use crate::document::{Document, ErrorStrategy, Graph, Node, is_root_type};
use crate::error::Diagnostic;
use crate::nodes::{ConditionValue, NodeData, PromptTemplate};
use crate::template;

/// Namespaces a selector may start with besides node ids.
pub const RESERVED_NAMESPACES: &[&str] = &["sys", "env", "conversation", "rag", "userinput"];

impl Document {
    /// Everything found while loading and validating, errors first.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut diagnostics = self.load_diagnostics.clone();
        if let Some(workflow) = &self.workflow {
            let declared = Declared {
                env: workflow.environment_variables.iter().map(|variable| variable.name.as_str()).collect(),
                conversation: workflow.conversation_variables.iter().map(|variable| variable.name.as_str()).collect(),
            };
            validate_graph(&workflow.graph, &declared, &mut diagnostics);
            for feature in &workflow.unsupported {
                diagnostics
                    .push(Diagnostic::warning("feature_not_supported", format!("not supported yet: {feature}; running this app fails")));
            }
        }
        diagnostics.sort_by_key(|diagnostic| std::cmp::Reverse(diagnostic.severity));
        diagnostics
    }

    /// Errors only; an empty list means the document can be compiled.
    pub fn errors(&self) -> Vec<Diagnostic> {
        self.diagnostics().into_iter().filter(Diagnostic::is_error).collect()
    }
}

struct Declared<'a> {
    env: HashSet<&'a str>,
    conversation: HashSet<&'a str>,
}

fn validate_graph(graph: &Graph, declared: &Declared<'_>, diagnostics: &mut Vec<Diagnostic>) {
    let mut seen = HashSet::new();
    for node in &graph.nodes {
        if !seen.insert(node.id.as_str()) {
            diagnostics.push(
                Diagnostic::error("duplicate_node_id", format!("node id '{}' is used by more than one node", node.id))
                    .node(&node.id)
                    .line(node.line),
            );
        }
    }

    check_containers(graph, diagnostics);
    check_edges(graph, diagnostics);
    check_root(graph, diagnostics);
    check_cycles(graph, diagnostics);
    check_reachability(graph, diagnostics);
    for node in &graph.nodes {
        check_references(graph, node, declared, diagnostics);
        check_node_data(node, diagnostics);
        if matches!(node.data, NodeData::NotSupported) {
            diagnostics.push(
                Diagnostic::warning("node_not_supported", format!("not supported yet: {} nodes; running this node fails", node.node_type))
                    .node(&node.id)
                    .line(node.line),
            );
        }
    }
}

/// The parameter extractor's parameter types (legacy `bool` and `select` included).
const EXTRACTOR_PARAMETER_TYPES: &[&str] =
    &["string", "number", "boolean", "array[string]", "array[number]", "array[object]", "array[boolean]", "bool", "select"];

/// Node settings Dify refuses when it builds the node.
fn check_node_data(node: &Node, diagnostics: &mut Vec<Diagnostic>) {
    if let NodeData::ParameterExtractor(data) = &node.data {
        for (index, parameter) in data.parameters.iter().enumerate() {
            if !EXTRACTOR_PARAMETER_TYPES.contains(&parameter.kind.as_str()) {
                diagnostics.push(
                    Diagnostic::error(
                        "invalid_parameter_type",
                        format!("type {} is not allowd to use in Parameter Extractor node.", parameter.kind),
                    )
                    .node(&node.id)
                    .field(format!("data.parameters[{index}].type"))
                    .line(node.line),
                );
            }
        }
    }
}

fn is_container(node: &Node) -> bool {
    matches!(node.data, NodeData::Iteration(_) | NodeData::Loop(_)) || matches!(node.node_type.as_str(), "iteration" | "loop")
}

fn check_containers(graph: &Graph, diagnostics: &mut Vec<Diagnostic>) {
    for node in &graph.nodes {
        if let Some(container) = &node.container {
            match graph.node(container) {
                None => diagnostics.push(
                    Diagnostic::error("unknown_container", format!("node belongs to container '{container}', which does not exist"))
                        .node(&node.id)
                        .line(node.line),
                ),
                Some(owner) if !is_container(owner) => diagnostics.push(
                    Diagnostic::error(
                        "invalid_container",
                        format!("node belongs to '{container}', which is a {} node, not an iteration or loop", owner.node_type),
                    )
                    .node(&node.id)
                    .line(node.line),
                ),
                Some(_) => {}
            }
        }
        let start_node_id = match &node.data {
            NodeData::Iteration(data) => &data.start_node_id,
            NodeData::Loop(data) => &data.start_node_id,
            _ => continue,
        };
        let kind = &node.node_type;
        match graph.node(start_node_id) {
            _ if start_node_id.is_empty() => diagnostics.push(
                Diagnostic::error("missing_container_start", format!("the {kind} has no start_node_id"))
                    .node(&node.id)
                    .field("data.start_node_id")
                    .line(node.line),
            ),
            None => diagnostics.push(
                Diagnostic::error("missing_container_start", format!("the {kind} starts at node '{start_node_id}', which does not exist"))
                    .node(&node.id)
                    .field("data.start_node_id")
                    .line(node.line),
            ),
            Some(start) if start.container.as_deref() != Some(node.id.as_str()) => diagnostics.push(
                Diagnostic::error(
                    "missing_container_start",
                    format!("the {kind} starts at node '{start_node_id}', which is not inside it"),
                )
                .node(&node.id)
                .field("data.start_node_id")
                .line(node.line),
            ),
            Some(_) => {}
        }
    }
}

fn check_edges(graph: &Graph, diagnostics: &mut Vec<Diagnostic>) {
    let mut ids_by_scope: HashMap<Option<&str>, HashSet<&str>> = HashMap::new();
    for edge in &graph.edges {
        let source = graph.node(&edge.source);
        let target = graph.node(&edge.target);
        for (role, id, node) in [("source", &edge.source, source), ("target", &edge.target, target)] {
            if node.is_none() {
                diagnostics.push(
                    Diagnostic::error(
                        if role == "source" { "unknown_edge_source" } else { "unknown_edge_target" },
                        format!("edge '{}' {role} node '{id}' does not exist", edge.id),
                    )
                    .field(format!("edges.{}", edge.id))
                    .line(edge.line),
                );
            }
        }
        let (Some(source), Some(target)) = (source, target) else {
            continue;
        };
        if source.container != target.container {
            diagnostics.push(
                Diagnostic::error(
                    "edge_crosses_container",
                    format!(
                        "edge '{}' connects '{}' ({}) to '{}' ({}); edges cannot cross an iteration or loop boundary",
                        edge.id,
                        source.id,
                        scope_name(source.container.as_deref()),
                        target.id,
                        scope_name(target.container.as_deref())
                    ),
                )
                .node(&source.id)
                .line(edge.line),
            );
            continue;
        }
        if !ids_by_scope.entry(source.container.as_deref()).or_default().insert(edge.id.as_str()) {
            diagnostics.push(
                Diagnostic::error("duplicate_edge_id", format!("edge id '{}' is used twice in the same scope", edge.id)).line(edge.line),
            );
        }
        if let Some(handles) = branch_handles(source)
            && !handles.iter().any(|handle| *handle == edge.source_handle)
        {
            diagnostics.push(
                Diagnostic::warning(
                    "unknown_branch_handle",
                    format!(
                        "edge '{}' leaves through handle '{}', which this node never selects (it selects {}); the edge is never taken",
                        edge.id,
                        edge.source_handle,
                        handles.join(", ")
                    ),
                )
                .node(&source.id)
                .line(edge.line),
            );
        }
    }
}

fn scope_name(container: Option<&str>) -> String {
    container.map_or_else(|| "top level".to_owned(), |container| format!("inside '{container}'"))
}

/// The handles a branching node can select; `None` for nodes that take every outgoing edge.
pub fn branch_handles(node: &Node) -> Option<Vec<&str>> {
    let mut handles: Vec<&str> = match &node.data {
        NodeData::IfElse(data) => data.cases.iter().map(|case| case.case_id.as_str()).chain(["false"]).collect(),
        NodeData::QuestionClassifier(data) => data.classes.iter().map(|class| class.id.as_str()).collect(),
        _ if node.error_strategy == Some(ErrorStrategy::FailBranch) => vec!["source"],
        _ => return None,
    };
    if node.error_strategy == Some(ErrorStrategy::FailBranch) {
        handles.push("fail-branch");
    }
    Some(handles)
}

fn check_root(graph: &Graph, diagnostics: &mut Vec<Diagnostic>) {
    match graph.root() {
        None => diagnostics
            .push(Diagnostic::error("missing_start_node", "the workflow has no start node (a top-level node with data.type `start`)")),
        Some(root) if root.node_type != "start" => diagnostics.push(
            Diagnostic::warning("node_not_supported", format!("not supported yet: starting a run from a {} node", root.node_type))
                .node(&root.id)
                .line(root.line),
        ),
        Some(_) => {}
    }
    for node in graph.nodes.iter().filter(|node| node.node_type == "start" && node.container.is_some()) {
        diagnostics.push(
            Diagnostic::error("misplaced_start_node", "a start node cannot be inside an iteration or loop").node(&node.id).line(node.line),
        );
    }
}

fn check_cycles(graph: &Graph, diagnostics: &mut Vec<Diagnostic>) {
    let mut successors: HashMap<&str, Vec<&str>> = HashMap::new();
    for edge in &graph.edges {
        let (Some(source), Some(target)) = (graph.node(&edge.source), graph.node(&edge.target)) else {
            continue;
        };
        if source.container == target.container {
            successors.entry(source.id.as_str()).or_default().push(target.id.as_str());
        }
    }
    // Iterative DFS with colours; report each cycle once, by its node ids.
    let mut state: HashMap<&str, u8> = HashMap::new();
    for node in &graph.nodes {
        if state.contains_key(node.id.as_str()) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(node.id.as_str(), 0)];
        let mut path: Vec<&str> = vec![node.id.as_str()];
        state.insert(node.id.as_str(), 1);
        while let Some((current, next_child)) = stack.last_mut() {
            let children = successors.get(current).map(Vec::as_slice).unwrap_or_default();
            if let Some(&child) = children.get(*next_child) {
                *next_child += 1;
                match state.get(child) {
                    Some(1) => {
                        let start = path.iter().position(|id| *id == child).unwrap_or(0);
                        let mut cycle: Vec<&str> = path[start..].to_vec();
                        cycle.push(child);
                        let first = graph.node(child);
                        diagnostics.push(
                            Diagnostic::error(
                                "cycle",
                                format!("the graph contains a cycle: {} (only loop nodes may repeat work)", cycle.join(" -> ")),
                            )
                            .node(child)
                            .line(first.and_then(|node| node.line)),
                        );
                    }
                    Some(_) => {}
                    None => {
                        state.insert(child, 1);
                        stack.push((child, 0));
                        path.push(child);
                    }
                }
            } else {
                state.insert(current, 2);
                stack.pop();
                path.pop();
            }
        }
    }
}

fn check_reachability(graph: &Graph, diagnostics: &mut Vec<Diagnostic>) {
    let mut entries: Vec<&str> = graph.root().map(|root| root.id.as_str()).into_iter().collect();
    for node in &graph.nodes {
        match &node.data {
            NodeData::Iteration(data) => entries.push(data.start_node_id.as_str()),
            NodeData::Loop(data) => entries.push(data.start_node_id.as_str()),
            _ => {}
        }
    }
    if entries.is_empty() {
        return;
    }
    let mut successors: HashMap<&str, Vec<&str>> = HashMap::new();
    for edge in &graph.edges {
        successors.entry(edge.source.as_str()).or_default().push(edge.target.as_str());
    }
    let mut reached: HashSet<&str> = HashSet::new();
    while let Some(id) = entries.pop() {
        if reached.insert(id) {
            entries.extend(successors.get(id).into_iter().flatten());
        }
    }
    for node in &graph.nodes {
        let entry_type = matches!(node.node_type.as_str(), "iteration-start" | "loop-start") || is_root_type(&node.node_type);
        if !reached.contains(node.id.as_str()) && !entry_type {
            diagnostics
                .push(Diagnostic::warning("unreachable_node", "no path leads to this node; it never runs").node(&node.id).line(node.line));
        }
    }
}

/// Where a node reads variables: (field, selector, written inside a text template).
pub fn references(node: &Node) -> Vec<(String, Vec<String>, bool)> {
    let mut found = Vec::new();
    let mut typed = |field: String, selector: &[String]| {
        if !selector.is_empty() {
            found.push((field, selector.to_vec(), false));
        }
    };
    let mut texts: Vec<(String, &str)> = Vec::new();
    match &node.data {
        NodeData::End(data) => {
            for (index, output) in data.outputs.iter().enumerate() {
                typed(format!("data.outputs[{index}].value_selector"), &output.value_selector);
            }
        }
        NodeData::Answer(data) => texts.push(("data.answer".into(), &data.answer)),
        NodeData::IfElse(data) => {
            for (case_index, case) in data.cases.iter().enumerate() {
                for (index, condition) in case.conditions.iter().enumerate() {
                    let field = format!("data.cases[{case_index}].conditions[{index}]");
                    typed(format!("{field}.variable_selector"), &condition.variable_selector);
                    if let ConditionValue::Text(text) = &condition.value {
                        texts.push((format!("{field}.value"), text));
                    }
                }
            }
        }
        NodeData::Code(data) => {
            for (index, variable) in data.variables.iter().enumerate() {
                typed(format!("data.variables[{index}].value_selector"), &variable.value_selector);
            }
        }
        NodeData::TemplateTransform(data) => {
            for (index, variable) in data.variables.iter().enumerate() {
                typed(format!("data.variables[{index}].value_selector"), &variable.value_selector);
            }
        }
        NodeData::HttpRequest(data) => {
            texts.push(("data.url".into(), &data.url));
            texts.push(("data.headers".into(), &data.headers));
            texts.push(("data.params".into(), &data.params));
            if let Some(body) = &data.body {
                for (index, item) in body.data.iter().enumerate() {
                    texts.push((format!("data.body.data[{index}].value"), &item.value));
                    texts.push((format!("data.body.data[{index}].key"), &item.key));
                    typed(format!("data.body.data[{index}].file"), &item.file);
                }
            }
            if let Some(config) = &data.authorization.config {
                texts.push(("data.authorization.config.api_key".into(), &config.api_key));
            }
        }
        NodeData::VariableAggregator(data) => {
            for (index, selector) in data.variables.iter().enumerate() {
                typed(format!("data.variables[{index}]"), selector);
            }
            if let Some(settings) = data.advanced_settings.as_ref().filter(|settings| settings.group_enabled) {
                for (group_index, group) in settings.groups.iter().enumerate() {
                    for (index, selector) in group.variables.iter().enumerate() {
                        typed(format!("data.advanced_settings.groups[{group_index}].variables[{index}]"), selector);
                    }
                }
            }
        }
        NodeData::AssignerV1(data) => {
            typed("data.assigned_variable_selector".into(), &data.assigned_variable_selector);
            typed("data.input_variable_selector".into(), &data.input_variable_selector);
        }
        NodeData::AssignerV2(data) => {
            for (index, item) in data.items.iter().enumerate() {
                typed(format!("data.items[{index}].variable_selector"), &item.variable_selector);
                if item.input_type == crate::nodes::AssignerInput::Variable
                    && let Some(items) = item.value.as_array()
                {
                    let selector: Vec<String> = items.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                    typed(format!("data.items[{index}].value"), &selector);
                }
            }
        }
        NodeData::Iteration(data) => {
            typed("data.iterator_selector".into(), &data.iterator_selector);
            typed("data.output_selector".into(), &data.output_selector);
        }
        NodeData::Loop(data) => {
            for (index, condition) in data.break_conditions.iter().enumerate() {
                typed(format!("data.break_conditions[{index}].variable_selector"), &condition.variable_selector);
            }
            for (index, variable) in data.loop_variables.iter().enumerate() {
                if variable.value_type == "variable"
                    && let Some(items) = variable.value.as_array()
                {
                    let selector: Vec<String> = items.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                    typed(format!("data.loop_variables[{index}].value"), &selector);
                }
            }
        }
        NodeData::ListOperator(data) => typed("data.variable".into(), &data.variable),
        NodeData::DocumentExtractor(data) => typed("data.variable_selector".into(), &data.variable_selector),
        NodeData::Llm(data) => {
            let messages = match &data.prompt_template {
                PromptTemplate::Chat(messages) => messages.as_slice(),
                PromptTemplate::Completion(message) => std::slice::from_ref(message),
            };
            for (index, message) in messages.iter().enumerate() {
                if message.edition_type.as_deref() != Some("jinja2") {
                    texts.push((format!("data.prompt_template[{index}].text"), &message.text));
                }
            }
            for (index, variable) in data.prompt_config.jinja2_variables.iter().enumerate() {
                typed(format!("data.prompt_config.jinja2_variables[{index}].value_selector"), &variable.value_selector);
            }
            if data.context.enabled
                && let Some(selector) = &data.context.variable_selector
            {
                typed("data.context.variable_selector".into(), selector);
            }
        }
        NodeData::QuestionClassifier(data) => {
            typed("data.query_variable_selector".into(), &data.query_variable_selector);
            if let Some(instruction) = &data.instruction {
                texts.push(("data.instruction".into(), instruction));
            }
        }
        NodeData::ParameterExtractor(data) => {
            typed("data.query".into(), &data.query);
            if let Some(instruction) = &data.instruction {
                texts.push(("data.instruction".into(), instruction));
            }
        }
        NodeData::Tool(data) => {
            for (name, input) in &data.tool_parameters {
                let field = format!("data.tool_parameters.{name}.value");
                match (input.kind.as_str(), &input.value) {
                    ("variable", serde_json::Value::Array(items)) => {
                        let selector: Vec<String> = items.iter().filter_map(|part| part.as_str().map(str::to_owned)).collect();
                        typed(field, &selector);
                    }
                    ("mixed", serde_json::Value::String(text)) => texts.push((field, text)),
                    _ => {}
                }
            }
        }
        NodeData::KnowledgeRetrieval(data) => {
            if let Some(selector) = &data.query_variable_selector {
                typed("data.query_variable_selector".into(), selector);
            }
        }
        _ => {}
    }
    for (field, text) in texts {
        for selector in template::selectors(text) {
            found.push((field.clone(), selector, true));
        }
    }
    found
}

fn check_references(graph: &Graph, node: &Node, declared: &Declared<'_>, diagnostics: &mut Vec<Diagnostic>) {
    for (field, selector, in_template) in references(node) {
        let Some(head) = selector.first() else {
            continue;
        };
        let shown = selector.join(".");
        if selector.len() < 2 {
            diagnostics.push(
                Diagnostic::error("invalid_selector", format!("selector [{shown}] needs a node id and a variable name"))
                    .node(&node.id)
                    .field(field)
                    .line(node.line),
            );
            continue;
        }
        match head.as_str() {
            "env" if !declared.env.contains(selector[1].as_str()) => diagnostics.push(
                Diagnostic::warning("undeclared_variable", format!("environment variable '{}' is not declared", selector[1]))
                    .node(&node.id)
                    .field(field)
                    .line(node.line),
            ),
            "conversation" if !declared.conversation.contains(selector[1].as_str()) => diagnostics.push(
                Diagnostic::warning("undeclared_variable", format!("conversation variable '{}' is not declared", selector[1]))
                    .node(&node.id)
                    .field(field)
                    .line(node.line),
            ),
            namespace if RESERVED_NAMESPACES.contains(&namespace) => {}
            id if graph.node(id).is_some() => {}
            id => {
                // A reference inside text renders as its literal path when unresolved, which Dify
                // tolerates; a typed selector to a missing node can never produce a value.
                let (severity_error, code) =
                    if in_template { (false, "dangling_template_reference") } else { (true, "unknown_selector_node") };
                let message = format!("refers to [{shown}], but there is no node '{id}'");
                let diagnostic = if severity_error {
                    Diagnostic::error(code, message)
                } else {
                    Diagnostic::warning(code, format!("{message}; the text `{shown}` is used instead"))
                };
                diagnostics.push(diagnostic.node(&node.id).field(field).line(node.line));
            }
        }
    }
}

//! Ordered answer streaming (Dify's response stream filter).
//!
//! Each answer/end node of the top-level graph has a template of text and variable segments.
//! Its session becomes active once some path from the start reaches it with every *blocking*
//! edge taken (an edge is blocking when it leaves a branch, container or response node, or an
//! assigner that writes a variable the template prints). One session streams at a time, in node
//! id order: text immediately, variables from buffered token streams or, when the source never
//! streamed, its final value once it exists. Segments of skipped nodes are skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::nodes::NodeKind;
use crate::plan::{ExecType, Plan};
use crate::pool::{Pool, Selector};
use crate::run::{EdgeState, NodeState};

#[derive(Debug)]
enum Segment {
    Text(Arc<str>),
    Variable {
        selector: Selector,
        /// Index into [`ResponsePlan::streams`].
        stream: usize,
        /// The producing node when it is a top-level node (so its skip can be seen).
        source: Option<u32>,
    },
}

#[derive(Debug)]
struct ResponseNode {
    node: u32,
    segments: Vec<Segment>,
    /// `[node_id, "answer"]`, the selector text segments are reported under.
    text_selector: Arc<[String]>,
    /// Nodes reachable from the start before any blocking edge is taken.
    initially_reached: Vec<bool>,
    /// Per edge: whether it lies on some path from the start to this node, and blocks it.
    edges: Vec<PathEdge>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathEdge {
    /// On no path from the start to the response node.
    Off,
    /// Usable as soon as the graph reaches it.
    Open,
    /// Usable once taken.
    Blocking,
}

/// Precomputed streaming structure of a plan (top-level graph only, as in Dify).
#[derive(Debug, Default)]
pub struct ResponsePlan {
    /// Sorted by node id, the order Dify activates sessions in.
    nodes: Vec<ResponseNode>,
    /// Every selector a response template prints; chunks for others are dropped.
    streams: Vec<Arc<[String]>>,
    stream_index: HashMap<Arc<[String]>, usize>,
    /// For each edge, the response nodes whose activation it can change.
    watchers: Vec<Vec<usize>>,
}

impl ResponsePlan {
    pub fn build(plan: &Plan) -> Self {
        let resolver = plan.resolver();
        let mut response_ids: Vec<u32> = (0..plan.nodes.len() as u32)
            .filter(|&index| {
                let node = plan.node(index);
                node.exec == ExecType::Response && node.container.is_none()
            })
            .collect();
        response_ids.sort_by(|a, b| plan.node(*a).id.cmp(&plan.node(*b).id));

        let mut streams: Vec<Arc<[String]>> = Vec::new();
        let mut stream_index: HashMap<Arc<[String]>, usize> = HashMap::new();
        let mut intern = |parts: &[String]| -> usize {
            let key: Arc<[String]> = Arc::from(parts.to_vec());
            *stream_index.entry(key.clone()).or_insert_with(|| {
                streams.push(key);
                streams.len() - 1
            })
        };

        let mut nodes = Vec::with_capacity(response_ids.len());
        let mut watchers: Vec<Vec<usize>> = vec![Vec::new(); plan.edges.len()];
        for &response in &response_ids {
            let node = plan.node(response);
            let raw_segments = template_segments(plan, response);
            let mut segments = Vec::with_capacity(raw_segments.len());
            for raw in raw_segments {
                match raw {
                    RawSegment::Text(text) => segments.push(Segment::Text(Arc::from(text))),
                    RawSegment::Variable(parts) => {
                        let selector = resolver.selector(&parts);
                        let source = selector.node().filter(|index| plan.node(*index).container.is_none());
                        segments.push(Segment::Variable { stream: intern(&parts), selector, source });
                    }
                }
            }
            let printed: Vec<Vec<String>> = segments
                .iter()
                .filter_map(|segment| match segment {
                    Segment::Variable { selector, .. } => Some(selector.variable_parts().to_vec()),
                    Segment::Text(_) => None,
                })
                .collect();
            let mut edges = vec![PathEdge::Off; plan.edges.len()];
            for edge in edges_towards(plan, plan.root, response) {
                let source = plan.node(plan.edges[edge as usize].source);
                let blocking = matches!(source.exec, ExecType::Branch | ExecType::Container | ExecType::Response)
                    || source.kind.blocks_variables(&printed);
                edges[edge as usize] = if blocking { PathEdge::Blocking } else { PathEdge::Open };
            }
            let position = nodes.len();
            for (edge, kind) in edges.iter().enumerate() {
                if *kind == PathEdge::Blocking {
                    watchers[edge].push(position);
                }
            }
            let mut initially_reached = vec![false; plan.nodes.len()];
            extend_reach(plan, &edges, &mut initially_reached, plan.root, &[]);
            nodes.push(ResponseNode {
                node: response,
                segments,
                text_selector: Arc::from(vec![node.id.to_string(), "answer".to_owned()]),
                initially_reached,
                edges,
            });
        }
        Self { nodes, streams, stream_index, watchers }
    }
}

enum RawSegment {
    Text(String),
    Variable(Vec<String>),
}

/// The streaming template of an answer (its text) or an end node (its outputs joined by
/// newlines).
fn template_segments(plan: &Plan, index: u32) -> Vec<RawSegment> {
    match &plan.node(index).kind {
        NodeKind::Answer(_) => {
            let source = answer_source(plan, index);
            flowgate_dsl::template::parse(&source)
                .into_iter()
                .map(|part| match part {
                    flowgate_dsl::template::TemplatePart::Text(text) => RawSegment::Text(text),
                    flowgate_dsl::template::TemplatePart::Variable { selector, .. } => RawSegment::Variable(selector),
                })
                .collect()
        }
        NodeKind::End(end) => {
            let mut segments = Vec::new();
            for (position, (_, selector)) in end.outputs.iter().enumerate() {
                if position > 0 {
                    segments.push(RawSegment::Text("\n".into()));
                }
                if !selector.parts().is_empty() {
                    segments.push(RawSegment::Variable(selector.parts().to_vec()));
                }
            }
            if matches!(segments.last(), Some(RawSegment::Text(_))) {
                segments.pop();
            }
            segments
        }
        _ => Vec::new(),
    }
}

fn answer_source(plan: &Plan, index: u32) -> String {
    match &plan.node(index).kind {
        NodeKind::Answer(answer) => answer.source.clone(),
        _ => String::new(),
    }
}

/// Edges lying on some path from `from` to `to` within one scope.
fn edges_towards(plan: &Plan, from: u32, to: u32) -> Vec<u32> {
    let node_count = plan.nodes.len();
    let mut forward = vec![false; node_count];
    let mut stack = vec![from];
    while let Some(node) = stack.pop() {
        if std::mem::replace(&mut forward[node as usize], true) || node == to {
            continue;
        }
        stack.extend(plan.node(node).outgoing.iter().map(|&edge| plan.edges[edge as usize].target));
    }
    let mut backward = vec![false; node_count];
    let mut stack = vec![to];
    while let Some(node) = stack.pop() {
        if std::mem::replace(&mut backward[node as usize], true) || node == from {
            continue;
        }
        stack.extend(plan.node(node).incoming.iter().map(|&edge| plan.edges[edge as usize].source));
    }
    (0..plan.edges.len() as u32)
        .filter(|&edge| {
            let edge_ref = &plan.edges[edge as usize];
            edge_ref.source != to && forward[edge_ref.source as usize] && backward[edge_ref.target as usize]
        })
        .collect()
}

/// Marks `from` and every node reachable from it through usable edges (non-blocking, or
/// blocking and taken) as reached. Edges are only ever taken, never untaken, so the reached
/// set only grows and each run extends it incrementally.
fn extend_reach(plan: &Plan, edges: &[PathEdge], reached: &mut [bool], from: u32, edge_states: &[EdgeState]) {
    let mut stack = vec![from];
    while let Some(node) = stack.pop() {
        if std::mem::replace(&mut reached[node as usize], true) {
            continue;
        }
        for &edge in &plan.node(node).outgoing {
            let usable = match edges[edge as usize] {
                PathEdge::Off => false,
                PathEdge::Open => true,
                PathEdge::Blocking => edge_states.get(edge as usize) == Some(&EdgeState::Taken),
            };
            let target = plan.edges[edge as usize].target;
            if usable && !reached[target as usize] {
                stack.push(target);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Buffer {
    chunks: Vec<String>,
    read: usize,
    closed: bool,
}

/// What the filter needs to look at while flushing: the top-level frame.
pub struct View<'a> {
    pub plan: &'a Plan,
    pub pool: &'a Pool,
    pub node_states: &'a [NodeState],
    pub edge_states: &'a [EdgeState],
}

/// Text ready for the client, with the selector it belongs to.
pub type Emitted = (String, Arc<[String]>);

/// Run-time state of response streaming for one run.
pub struct ResponseFilter {
    pending: Vec<bool>,
    /// Per response node: the nodes reachable from the start with the edges taken so far.
    reached: Vec<Vec<bool>>,
    cursors: Vec<usize>,
    active: Option<usize>,
    waiting: VecDeque<usize>,
    buffers: Vec<Buffer>,
}

impl ResponseFilter {
    pub fn new(plan: &ResponsePlan) -> Self {
        Self {
            pending: vec![true; plan.nodes.len()],
            reached: plan.nodes.iter().map(|node| node.initially_reached.clone()).collect(),
            cursors: vec![0; plan.nodes.len()],
            active: None,
            waiting: VecDeque::new(),
            buffers: (0..plan.streams.len()).map(|_| Buffer::default()).collect(),
        }
    }

    pub fn start(&mut self, view: &View<'_>, out: &mut Vec<Emitted>) {
        let response = &view.plan.response;
        for position in 0..response.nodes.len() {
            let node = &response.nodes[position];
            if node.initially_reached[node.node as usize] {
                self.activate(position, view, out);
            }
        }
    }

    pub fn edge_taken(&mut self, edge: u32, view: &View<'_>, out: &mut Vec<Emitted>) {
        let response = &view.plan.response;
        let Some(watchers) = response.watchers.get(edge as usize) else {
            return;
        };
        let (source, target) = (view.plan.edges[edge as usize].source, view.plan.edges[edge as usize].target);
        for &position in watchers {
            if !self.pending[position] {
                continue;
            }
            let node = &response.nodes[position];
            let reached = &mut self.reached[position];
            if reached[source as usize] && !reached[target as usize] {
                extend_reach(view.plan, &node.edges, reached, target, view.edge_states);
            }
            if reached[node.node as usize] {
                self.activate(position, view, out);
            }
        }
    }

    pub fn chunk(&mut self, selector: &[String], text: &str, is_final: bool, view: &View<'_>, out: &mut Vec<Emitted>) {
        let Some(&stream) = view.plan.response.stream_index.get(selector) else {
            return;
        };
        let buffer = &mut self.buffers[stream];
        if buffer.closed {
            return;
        }
        buffer.chunks.push(text.to_owned());
        if is_final {
            buffer.closed = true;
        }
        self.flush(view, out);
    }

    /// After any node finished: values may now be in the pool.
    pub fn node_completed(&mut self, view: &View<'_>, out: &mut Vec<Emitted>) {
        self.flush(view, out);
    }

    fn activate(&mut self, position: usize, view: &View<'_>, out: &mut Vec<Emitted>) {
        if !std::mem::replace(&mut self.pending[position], false) {
            return;
        }
        if self.active.is_none() {
            self.active = Some(position);
            self.flush(view, out);
        } else {
            self.waiting.push_back(position);
        }
    }

    pub fn flush(&mut self, view: &View<'_>, out: &mut Vec<Emitted>) {
        while let Some(position) = self.active {
            let node = &view.plan.response.nodes[position];
            while self.cursors[position] < node.segments.len() {
                match &node.segments[self.cursors[position]] {
                    Segment::Text(text) => {
                        out.push((text.to_string(), node.text_selector.clone()));
                        self.cursors[position] += 1;
                    }
                    Segment::Variable { selector, stream, source } => {
                        if source.is_some_and(|source| view.node_states[source as usize] == NodeState::Skipped) {
                            self.cursors[position] += 1;
                            continue;
                        }
                        let buffer = &mut self.buffers[*stream];
                        let streamed = !buffer.chunks.is_empty();
                        for chunk in &buffer.chunks[buffer.read..] {
                            out.push((chunk.clone(), view.plan.response.streams[*stream].clone()));
                        }
                        buffer.read = buffer.chunks.len();
                        if buffer.closed {
                            self.cursors[position] += 1;
                        } else if !streamed && let Some(value) = view.pool.get(selector) {
                            out.push((value.to_markdown(), view.plan.response.streams[*stream].clone()));
                            self.cursors[position] += 1;
                        } else {
                            return;
                        }
                    }
                }
            }
            self.active = self.waiting.pop_front();
        }
    }
}

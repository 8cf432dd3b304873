//! The variable pool: every value a run has produced, addressed by selectors.
//!
//! Selectors are resolved to slots when a plan is compiled, so a lookup at run time is an index
//! plus one hash lookup. Slots hold `Arc<Map>`: storing a node's outputs and copying the pool
//! for an iteration item are pointer copies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::value::{Map, SegType, Value, map_with_capacity};

/// Where a selector's first segment points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Node(u32),
    Sys,
    Env,
    Conversation,
    Rag,
    UserInput,
    /// A node id that does not exist: never resolves.
    Missing,
}

const NAMESPACES: usize = 5;

impl Slot {
    pub fn namespace(name: &str) -> Option<Self> {
        Some(match name {
            "sys" => Self::Sys,
            "env" => Self::Env,
            "conversation" => Self::Conversation,
            "rag" => Self::Rag,
            "userinput" => Self::UserInput,
            _ => return None,
        })
    }

    /// The position of a namespace slot among the namespaces.
    fn namespace_offset(self) -> Option<usize> {
        Some(match self {
            Self::Sys => 0,
            Self::Env => 1,
            Self::Conversation => 2,
            Self::Rag => 3,
            Self::UserInput => 4,
            Self::Node(_) | Self::Missing => return None,
        })
    }
}

/// A compiled variable selector such as `["llm", "text"]` or `["start", "obj", "a", "b"]`.
#[derive(Debug, Clone)]
pub struct Selector {
    pub slot: Slot,
    pub name: Arc<str>,
    /// Keys below the variable (object keys, or one file attribute).
    pub path: Arc<[Arc<str>]>,
    /// The selector as written, for messages and events.
    pub parts: Arc<[String]>,
}

impl Selector {
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    pub fn node(&self) -> Option<u32> {
        match self.slot {
            Slot::Node(index) => Some(index),
            _ => None,
        }
    }

    /// The two-element selector of the variable itself (without nested keys).
    pub fn variable_parts(&self) -> &[String] {
        &self.parts[..self.parts.len().min(2)]
    }

    pub fn display(&self) -> String {
        crate::value::python_list_of_strings(&self.parts)
    }
}

/// Declared variable types, keyed by where the variable lives.
type DeclaredTypes = HashMap<(Slot, Arc<str>), SegType>;

#[derive(Debug, Clone)]
pub struct Pool {
    slots: Vec<Option<Arc<Map>>>,
    node_count: u32,
    /// Declared types of variables that keep their type across writes (conversation and
    /// environment variables, loop variables). Rare, so kept out of the hot path.
    declared: Option<Arc<DeclaredTypes>>,
}

impl Pool {
    pub fn new(node_count: usize) -> Self {
        Self { slots: vec![None; node_count + NAMESPACES], node_count: node_count as u32, declared: None }
    }

    fn index(&self, slot: Slot) -> Option<usize> {
        match slot {
            Slot::Node(index) => Some(index as usize),
            namespace => namespace.namespace_offset().map(|offset| self.node_count as usize + offset),
        }
    }

    pub fn slot(&self, slot: Slot) -> Option<&Arc<Map>> {
        self.index(slot).and_then(|index| self.slots[index].as_ref())
    }

    pub fn variable(&self, slot: Slot, name: &str) -> Option<&Value> {
        self.slot(slot).and_then(|map| map.get(name))
    }

    pub fn contains(&self, slot: Slot, name: &str) -> bool {
        self.variable(slot, name).is_some()
    }

    /// Resolves a selector as Dify does: nested object keys, or one attribute of a file.
    /// Lists are not indexable; anything missing is `None`.
    pub fn get(&self, selector: &Selector) -> Option<Value> {
        let value = self.variable(selector.slot, &selector.name)?;
        if selector.path.is_empty() {
            return Some(value.clone());
        }
        if let Value::File(file) = value {
            return file.attribute(&selector.path[0]);
        }
        let mut current = value;
        for key in selector.path.iter() {
            match current {
                Value::Object(map) => current = map.get(&**key)?,
                _ => return None,
            }
        }
        Some(current.clone())
    }

    pub fn set(&mut self, slot: Slot, name: Arc<str>, value: Value) {
        let Some(index) = self.index(slot) else {
            return;
        };
        let map = self.slots[index].get_or_insert_with(|| Arc::new(Map::default()));
        Arc::make_mut(map).insert(name, value);
    }

    /// Stores a node's outputs; an empty slot takes the map as is (no copy).
    pub fn store_outputs(&mut self, slot: Slot, outputs: &Arc<Map>) {
        let Some(index) = self.index(slot) else {
            return;
        };
        match &mut self.slots[index] {
            entry @ None => *entry = Some(outputs.clone()),
            Some(existing) => {
                let existing = Arc::make_mut(existing);
                for (key, value) in outputs.iter() {
                    existing.insert(key.clone(), value.clone());
                }
            }
        }
    }

    pub fn clear(&mut self, slot: Slot) {
        if let Some(index) = self.index(slot) {
            self.slots[index] = None;
        }
    }

    pub fn declare(&mut self, slot: Slot, name: Arc<str>, seg_type: SegType) {
        let declared = self.declared.get_or_insert_with(Default::default);
        Arc::make_mut(declared).insert((slot, name), seg_type);
    }

    pub fn declared_type(&self, slot: Slot, name: &str) -> Option<SegType> {
        let declared = self.declared.as_ref()?;
        declared.get(&(slot, Arc::from(name))).copied()
    }

    /// Every variable of a slot, for `get_by_prefix`-style reads (e.g. the conversation
    /// variables at the end of a run).
    pub fn entries(&self, slot: Slot) -> impl Iterator<Item = (&Arc<str>, &Value)> {
        self.slot(slot).into_iter().flat_map(|map| map.iter())
    }

    /// Dify's `flatten`: every variable as `node.name`, with one node's names unprefixed.
    pub fn flatten(&self, unprefixed: Slot, node_ids: &[Arc<str>], keys: &NamespacedKeys) -> Map {
        let mut out = map_with_capacity(self.slots.iter().flatten().map(|map| map.len()).sum());
        let base = self.node_count as usize;
        // Dify's pool keeps insertion order (system variables first, then env, conversation,
        // then inputs); that is the order of the namespaces followed by nodes here.
        for offset in 0..NAMESPACES {
            let Some(map) = &self.slots[base + offset] else {
                continue;
            };
            for (name, value) in map.iter() {
                out.insert(keys.key(offset, name), value.clone());
            }
        }
        for (index, map) in self.slots[..base].iter().enumerate() {
            let Some(map) = map else { continue };
            let slot = Slot::Node(index as u32);
            for (name, value) in map.iter() {
                let key = if slot == unprefixed {
                    name.clone()
                } else {
                    Arc::from(format!("{}.{name}", node_ids.get(index).map_or("", |id| &**id)))
                };
                out.insert(key, value.clone());
            }
        }
        out
    }
}

/// The namespace prefixes of [`Pool::flatten`], in slot order.
const NAMESPACE_PREFIXES: [&str; NAMESPACES] = ["sys", "env", "conversation", "rag", "userinput"];

/// `namespace.name` keys made once per plan, so flattening the pool at every run's start
/// does not format and allocate them again. Names not known in advance are formatted.
#[derive(Debug, Default)]
pub struct NamespacedKeys {
    keys: [HashMap<Arc<str>, Arc<str>>; NAMESPACES],
}

impl NamespacedKeys {
    /// Keys for the given `(namespace slot, name)` pairs.
    pub fn new<'a>(names: impl IntoIterator<Item = (Slot, &'a str)>) -> Self {
        let mut keys: [HashMap<Arc<str>, Arc<str>>; NAMESPACES] = Default::default();
        for (slot, name) in names {
            if let Some(offset) = slot.namespace_offset() {
                keys[offset].insert(Arc::from(name), Arc::from(format!("{}.{name}", NAMESPACE_PREFIXES[offset])));
            }
        }
        Self { keys }
    }

    /// `namespace.name` for a variable of a namespace slot.
    pub fn of(&self, slot: Slot, name: &str) -> Arc<str> {
        match slot.namespace_offset() {
            Some(offset) => self.key(offset, name),
            None => Arc::from(name),
        }
    }

    fn key(&self, offset: usize, name: &str) -> Arc<str> {
        match self.keys[offset].get(name) {
            Some(key) => key.clone(),
            None => Arc::from(format!("{}.{name}", NAMESPACE_PREFIXES[offset])),
        }
    }
}

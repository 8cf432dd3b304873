//! `{{#node.var#}}` text templates compiled against a plan (Dify's `convert_template`).

use std::sync::Arc;

use flowgate_dsl::template::{self, TemplatePart};

use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector, Slot};
use crate::value::Value;

#[derive(Debug, Clone)]
enum Part {
    Text(Arc<str>),
    /// A reference; when it does not resolve, Dify renders its bare path (`node.var`).
    Variable {
        selector: Selector,
        literal: Arc<str>,
        braced: bool,
    },
}

/// A compiled template. Rendering looks values up in a pool; nothing is parsed at run time.
#[derive(Debug, Clone, Default)]
pub struct TextTemplate {
    parts: Vec<Part>,
}

/// How a resolved value is written: `.text` (HTTP, conditions, prompts) or `.markdown`
/// (answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    Text,
    Markdown,
}

impl TextTemplate {
    pub fn compile(source: &str, resolver: &SelectorResolver<'_>) -> Self {
        let parts = template::parse(source)
            .into_iter()
            .map(|part| match part {
                TemplatePart::Text(text) => {
                    // Dify also looks up literal text that contains a dot ("sys.query" written
                    // without braces resolves); only texts whose head names a slot can.
                    match text.split_once('.') {
                        Some((head, _)) if resolver.slot_of(head) != Slot::Missing => Part::Variable {
                            selector: resolver.selector(&text.split('.').map(str::to_owned).collect::<Vec<_>>()),
                            literal: Arc::from(text.as_str()),
                            braced: false,
                        },
                        _ => Part::Text(Arc::from(text)),
                    }
                }
                TemplatePart::Variable { path, selector } => {
                    Part::Variable { selector: resolver.selector(&selector), literal: Arc::from(path), braced: true }
                }
            })
            .collect();
        Self { parts }
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The rendered text when it does not depend on any variable.
    pub fn constant(&self) -> Option<Arc<str>> {
        match self.parts.as_slice() {
            [] => Some(Arc::from("")),
            [Part::Text(text)] => Some(text.clone()),
            _ => None,
        }
    }

    pub fn render(&self, pool: &Pool, mode: Render) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Variable { selector, literal, .. } => match pool.get(selector) {
                    Some(value) => match (&value, mode) {
                        (Value::Str(text), _) => out.push_str(text),
                        (_, Render::Text) => out.push_str(&value.to_text()),
                        (_, Render::Markdown) => out.push_str(&value.to_markdown()),
                    },
                    None => out.push_str(literal),
                },
            }
        }
        out
    }

    /// The values the template resolves to, in order (answers collect files from them).
    pub fn resolved_values(&self, pool: &Pool) -> Vec<Value> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Variable { selector, .. } => pool.get(selector),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Selectors referenced with `{{#...#}}` (literal dotted text excluded).
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        self.parts.iter().filter_map(|part| match part {
            Part::Variable { selector, braced: true, .. } => Some(selector),
            _ => None,
        })
    }
}

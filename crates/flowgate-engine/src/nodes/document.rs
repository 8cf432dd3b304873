//! Document extractor: text out of uploaded files, by extension (or MIME type when the file
//! has no extension), as Dify does for text, markdown, HTML, code, CSV, JSON, YAML and DOCX.

use std::io::Read;
use std::sync::Arc;

use flowgate_dsl::nodes::DocumentExtractorData;

use super::{Capability, Exec, NodeCtx, NodeResult};
use crate::plan::SelectorResolver;
use crate::pool::Selector;
use crate::ports::FilePort;
use crate::value::{File, Value, map_of};

const PLAIN_TEXT_EXTENSIONS: &[&str] = &[
    ".txt",
    ".markdown",
    ".md",
    ".mdx",
    ".html",
    ".htm",
    ".xml",
    ".c",
    ".h",
    ".cpp",
    ".hpp",
    ".cc",
    ".cxx",
    ".c++",
    ".py",
    ".js",
    ".ts",
    ".jsx",
    ".tsx",
    ".java",
    ".php",
    ".rb",
    ".go",
    ".rs",
    ".swift",
    ".kt",
    ".scala",
    ".sh",
    ".bash",
    ".bat",
    ".ps1",
    ".sql",
    ".r",
    ".m",
    ".pl",
    ".lua",
    ".vim",
    ".asm",
    ".s",
    ".css",
    ".scss",
    ".less",
    ".sass",
    ".ini",
    ".cfg",
    ".conf",
    ".toml",
    ".env",
    ".log",
    ".vtt",
];
const PLAIN_TEXT_MIME_TYPES: &[&str] = &["text/plain", "text/html", "text/htm", "text/markdown", "text/xml"];

#[derive(Debug)]
pub struct DocumentExtractorNode {
    variable: Selector,
}

impl DocumentExtractorNode {
    pub fn compile(data: &DocumentExtractorData, resolver: &SelectorResolver<'_>) -> Self {
        Self { variable: resolver.selector(&data.variable_selector) }
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let shown = self.variable.display();
        let Some(variable) = ctx.pool.get(&self.variable) else {
            return Exec::Done(NodeResult::failed(format!("File variable not found for selector: {shown}"), "WorkflowNodeError"));
        };
        let (files, is_list) = match &variable {
            Value::File(file) => (vec![(**file).clone()], false),
            Value::Array(items) if items.iter().all(|item| matches!(item, Value::File(_))) => {
                (items.iter().filter_map(|item| if let Value::File(file) = item { Some((**file).clone()) } else { None }).collect(), true)
            }
            value if !value.truthy() => (Vec::new(), true),
            _ => {
                return Exec::Done(NodeResult::failed(format!("Variable {shown} is not an ArrayFileSegment"), "WorkflowNodeError"));
            }
        };
        let inputs =
            map_of([("variable_selector", Value::array(self.variable.parts().iter().map(|part| Value::str(part.as_str())).collect()))]);
        let process_data = map_of([("documents", Value::array(files.iter().cloned().map(|file| Value::File(Arc::new(file))).collect()))]);
        if files.is_empty() {
            return Exec::Done(
                NodeResult::succeeded(map_of([("text", Value::array(Vec::new()))])).with_inputs(inputs).with_process_data(process_data),
            );
        }
        let Some(port) = ctx.ports.files.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Files).with_inputs(inputs));
        };
        Exec::Pending(Box::pin(async move {
            let mut texts = Vec::with_capacity(files.len());
            for file in &files {
                match extract_file(port.as_ref(), file).await {
                    Ok(text) => texts.push(Value::from(text)),
                    Err(error) => {
                        return NodeResult::failed(error, "DocumentExtractorError").with_inputs(inputs).with_process_data(process_data);
                    }
                }
            }
            let text = if is_list { Value::array(texts) } else { texts.into_iter().next().unwrap_or_default() };
            NodeResult::succeeded(map_of([("text", text)])).with_inputs(inputs).with_process_data(process_data)
        }))
    }
}

async fn extract_file(port: &dyn FilePort, file: &File) -> Result<String, String> {
    let content = port.read(file).await.map_err(|error| format!("Error downloading file: {}", error.message))?;
    extract_text(file.extension.as_deref(), file.mime_type.as_deref(), &content)
}

/// The text Dify extracts from a file: chosen by extension (`.csv`), else by MIME type.
pub fn extract_text(extension: Option<&str>, mime_type: Option<&str>, content: &[u8]) -> Result<String, String> {
    if let Some(extension) = extension.filter(|extension| !extension.is_empty()) {
        let extension = extension.to_ascii_lowercase();
        return extract_by_extension(&extension, content).unwrap_or_else(|| Err(format!("Unsupported Extension Type: {extension}")));
    }
    if let Some(mime_type) = mime_type.filter(|mime| !mime.is_empty()) {
        return extract_by_mime(mime_type, content).unwrap_or_else(|| Err(format!("Unsupported MIME type: {mime_type}")));
    }
    Err("Unable to determine file type: MIME type or file extension is missing".into())
}

fn extract_by_extension(extension: &str, content: &[u8]) -> Option<Result<String, String>> {
    Some(match extension {
        extension if PLAIN_TEXT_EXTENSIONS.contains(&extension) => Ok(decode(content)),
        ".json" => json_text(content),
        // Dify re-dumps YAML through PyYAML; the original text is returned here (same data,
        // original formatting and comments).
        ".yaml" | ".yml" => Ok(decode(content)),
        ".csv" => csv_text(content),
        ".docx" => docx_text(content),
        ".pdf" | ".doc" | ".xls" | ".xlsx" | ".ppt" | ".pptx" | ".epub" | ".odt" | ".eml" | ".msg" | ".properties" => {
            Err(format!("not supported yet: extracting text from {extension} files"))
        }
        _ => return None,
    })
}

fn extract_by_mime(mime: &str, content: &[u8]) -> Option<Result<String, String>> {
    Some(match mime {
        mime if PLAIN_TEXT_MIME_TYPES.contains(&mime) || mime == "text/vtt" => Ok(decode(content)),
        "application/json" => json_text(content),
        "application/x-yaml" | "text/yaml" => Ok(decode(content)),
        "text/csv" => csv_text(content),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => docx_text(content),
        "application/pdf"
        | "application/msword"
        | "application/vnd.ms-excel"
        | "application/vnd.ms-powerpoint"
        | "application/epub+zip" => Err(format!("not supported yet: extracting text from {mime} files")),
        _ => return None,
    })
}

/// Text as Dify decodes it: UTF-8 when the bytes are UTF-8 (a byte-order mark is kept, as
/// Python's `utf_8` codec keeps it), else Windows-1252, the single-byte encoding Dify's
/// charset detection settles on for Western text; undefined bytes are dropped.
fn decode(content: &[u8]) -> String {
    match std::str::from_utf8(content) {
        Ok(text) => text.to_owned(),
        Err(_) => content.iter().filter_map(|&byte| windows_1252(byte)).collect(),
    }
}

fn windows_1252(byte: u8) -> Option<char> {
    const HIGH: [Option<char>; 32] = [
        Some('€'),
        None,
        Some('‚'),
        Some('ƒ'),
        Some('„'),
        Some('…'),
        Some('†'),
        Some('‡'),
        Some('ˆ'),
        Some('‰'),
        Some('Š'),
        Some('‹'),
        Some('Œ'),
        None,
        Some('Ž'),
        None,
        None,
        Some('‘'),
        Some('’'),
        Some('“'),
        Some('”'),
        Some('•'),
        Some('–'),
        Some('—'),
        Some('˜'),
        Some('™'),
        Some('š'),
        Some('›'),
        Some('œ'),
        None,
        Some('ž'),
        Some('Ÿ'),
    ];
    match byte {
        0x80..=0x9f => HIGH[usize::from(byte - 0x80)],
        _ => Some(char::from(byte)),
    }
}

fn json_text(content: &[u8]) -> Result<String, String> {
    let value = crate::pyfmt::json_loads(&decode(content)).map_err(|error| format!("Failed to decode or parse JSON file: {error}"))?;
    Ok(crate::pyfmt::json_dumps(&Value::from(value), Some(2)))
}

/// A CSV file as a markdown table, the header row first.
fn csv_text(content: &[u8]) -> Result<String, String> {
    let text = decode(content);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|record| record.map(|record| record.iter().map(str::to_owned).collect()))
        .collect::<Result<_, _>>()
        .map_err(|error| format!("Failed to extract text from CSV: {error}"))?;
    let Some(header) = rows.first() else {
        return Ok(String::new());
    };
    let cell = |cell: &String| cell.replace('\n', " ").replace('\r', "");
    let mut out = format!("| {} |\n", header.iter().map(cell).collect::<Vec<_>>().join(" | "));
    out.push_str(&format!("| {} |\n", header.iter().map(|column| "-".repeat(column.chars().count())).collect::<Vec<_>>().join(" | ")));
    for row in &rows[1..] {
        out.push_str(&format!("| {} |\n", row.iter().map(cell).collect::<Vec<_>>().join(" | ")));
    }
    Ok(out)
}

/// The largest `word/document.xml` read (a DOCX is a zip; this bounds a zip bomb).
const MAX_DOCX_XML_BYTES: u64 = 64 * 1024 * 1024;

/// A DOCX's body as python-docx reads it (Dify's reader): each top-level paragraph's text, and
/// each table with content as a markdown table, joined by newlines.
fn docx_text(content: &[u8]) -> Result<String, String> {
    let fail = |error: String| format!("Failed to extract text from DOCX: {error}");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(content)).map_err(|error| match error {
        // Python's zipfile wording, which Dify reports.
        zip::result::ZipError::InvalidArchive(_) => fail("File is not a zip file".into()),
        other => fail(other.to_string()),
    })?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|error| fail(error.to_string()))?
        .take(MAX_DOCX_XML_BYTES)
        .read_to_string(&mut xml)
        .map_err(|error| fail(error.to_string()))?;
    let root = xml_tree(&xml).map_err(fail)?;
    let Some(body) = root.child("body") else {
        return Ok(String::new());
    };
    let mut parts = Vec::new();
    for block in body.elements() {
        match block.name.as_str() {
            "p" => parts.push(paragraph_text(block)),
            "tbl" => parts.extend(table_markdown(block)),
            _ => {}
        }
    }
    Ok(parts.join("\n"))
}

/// `Paragraph.text`: its runs and hyperlinked runs, in order.
fn paragraph_text(paragraph: &XmlElement) -> String {
    let mut text = String::new();
    for child in paragraph.elements() {
        match child.name.as_str() {
            "r" => run_text(child, &mut text),
            "hyperlink" => child.elements().filter(|run| run.name == "r").for_each(|run| run_text(run, &mut text)),
            _ => {}
        }
    }
    text
}

/// `Run.text`: text, tabs and line breaks (page and column breaks print nothing).
fn run_text(run: &XmlElement, out: &mut String) {
    for child in run.elements() {
        match child.name.as_str() {
            "t" => out.push_str(&child.text()),
            "tab" | "ptab" => out.push('\t'),
            "cr" => out.push('\n'),
            "br" if matches!(child.attribute("type"), None | Some("textWrapping")) => out.push('\n'),
            "noBreakHyphen" => out.push('-'),
            _ => {}
        }
    }
}

/// A table as python-docx sees it: a cell spanning columns repeats in each, a vertically
/// merged cell repeats the text of the cell it continues. Tables without text are skipped.
fn table_markdown(table: &XmlElement) -> Option<String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut previous: Vec<(usize, String)> = Vec::new();
    for row in table.elements().filter(|element| element.name == "tr") {
        let mut offset = row
            .child("trPr")
            .and_then(|properties| properties.child("gridBefore"))
            .and_then(|before| before.attribute("val"))
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(0);
        let mut cells = Vec::new();
        let mut placed = Vec::new();
        for cell in row.elements().filter(|element| element.name == "tc") {
            let properties = cell.child("tcPr");
            let span = properties
                .and_then(|properties| properties.child("gridSpan"))
                .and_then(|span| span.attribute("val"))
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let continues = properties
                .and_then(|properties| properties.child("vMerge"))
                .is_some_and(|merge| matches!(merge.attribute("val"), None | Some("continue")));
            let text = if continues {
                previous.iter().find(|(start, _)| *start == offset).map(|(_, text)| text.clone()).unwrap_or_default()
            } else {
                cell.elements().filter(|element| element.name == "p").map(paragraph_text).collect::<Vec<_>>().join("\n")
            };
            for _ in 0..span {
                cells.push(text.clone());
            }
            placed.push((offset, text));
            offset += span;
        }
        previous = placed;
        rows.push(cells);
    }
    if !rows.iter().flatten().any(|cell| !cell.trim().is_empty()) {
        return None;
    }
    let line = |cells: &[String]| format!("| {} |\n", cells.iter().map(|cell| cell.replace('\n', "<br>")).collect::<Vec<_>>().join(" | "));
    let header = rows.first()?;
    let mut markdown = line(header);
    markdown.push_str(&format!("| {} |\n", vec!["---"; header.len()].join(" | ")));
    for row in &rows[1..] {
        markdown.push_str(&line(row));
    }
    Some(markdown)
}

/// Just enough of an XML tree for WordprocessingML: elements by local name, their attributes
/// by local name, and text.
#[derive(Debug, Default)]
struct XmlElement {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<XmlNode>,
}

#[derive(Debug)]
enum XmlNode {
    Element(XmlElement),
    Text(String),
}

impl XmlElement {
    fn elements(&self) -> impl Iterator<Item = &XmlElement> {
        self.children.iter().filter_map(|child| match child {
            XmlNode::Element(element) => Some(element),
            XmlNode::Text(_) => None,
        })
    }

    fn child(&self, name: &str) -> Option<&XmlElement> {
        self.elements().find(|element| element.name == name)
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        self.children
            .iter()
            .map(|child| match child {
                XmlNode::Text(text) => text.clone(),
                XmlNode::Element(element) => element.text(),
            })
            .collect()
    }
}

fn local_name(name: &[u8]) -> String {
    let local = name.rsplit(|byte| *byte == b':').next().unwrap_or(name);
    String::from_utf8_lossy(local).into_owned()
}

fn xml_tree(xml: &str) -> Result<XmlElement, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack = vec![XmlElement::default()];
    let open = |tag: &quick_xml::events::BytesStart<'_>| -> Result<XmlElement, String> {
        let mut attributes = Vec::new();
        for attribute in tag.attributes() {
            let attribute = attribute.map_err(|error| error.to_string())?;
            let value = attribute.unescape_value().map_err(|error| error.to_string())?;
            attributes.push((local_name(attribute.key.as_ref()), value.into_owned()));
        }
        Ok(XmlElement { name: local_name(tag.name().as_ref()), attributes, children: Vec::new() })
    };
    let push_text = |stack: &mut Vec<XmlElement>, text: String| {
        if let Some(parent) = stack.last_mut() {
            parent.children.push(XmlNode::Text(text));
        }
    };
    loop {
        match reader.read_event().map_err(|error| error.to_string())? {
            Event::Start(tag) => {
                if stack.len() > 256 {
                    return Err("the document nests too deeply".into());
                }
                stack.push(open(&tag)?);
            }
            Event::Empty(tag) => {
                let element = open(&tag)?;
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(XmlNode::Element(element));
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("unbalanced XML")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(XmlNode::Element(element)),
                    None => return Err("unbalanced XML".into()),
                }
            }
            Event::Text(text) => {
                let decoded = text.decode().map_err(|error| error.to_string())?;
                push_text(&mut stack, quick_xml::escape::unescape(&decoded).map_err(|error| error.to_string())?.into_owned());
            }
            Event::CData(data) => push_text(&mut stack, String::from_utf8_lossy(&data).into_owned()),
            Event::GeneralRef(reference) => {
                let name = reference.decode().map_err(|error| error.to_string())?;
                let resolved = match name.as_ref() {
                    "amp" => "&".to_owned(),
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "quot" => "\"".to_owned(),
                    "apos" => "'".to_owned(),
                    other => match other
                        .strip_prefix("#x")
                        .map(|hex| u32::from_str_radix(hex, 16))
                        .or_else(|| other.strip_prefix('#').map(str::parse))
                    {
                        Some(Ok(code)) => char::from_u32(code).map(String::from).unwrap_or_default(),
                        _ => String::new(),
                    },
                };
                push_text(&mut stack, resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    // The synthetic root holds the document element.
    let root = stack.into_iter().next().ok_or("empty XML")?;
    root.children
        .into_iter()
        .find_map(|child| match child {
            XmlNode::Element(element) => Some(element),
            XmlNode::Text(_) => None,
        })
        .ok_or_else(|| "no document element".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture document against what graphon extracts from it
    /// (`tests/conformance/documents.py` writes the expectations).
    #[test]
    fn extraction_matches_graphon() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance");
        let expected: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(root.join("expected/documents.json")).unwrap()).unwrap();
        assert!(expected.len() >= 15);
        let mut differences = Vec::new();
        for (name, want) in &expected {
            let content = std::fs::read(root.join("documents").join(name)).unwrap();
            let extension = name.rfind('.').map(|dot| &name[dot..]);
            let got = extract_text(extension, None, &content);
            let same =
                match (&got, want.get("text").and_then(serde_json::Value::as_str), want.get("error").and_then(serde_json::Value::as_str)) {
                    (Ok(text), Some(expected), _) if name.ends_with(".yaml") => yaml_data(text) == yaml_data(expected),
                    (Ok(text), Some(expected), _) => text == expected,
                    (Err(error), None, Some(expected)) => error == expected,
                    _ => false,
                };
            if !same {
                differences.push(format!("{name}:\n  graphon:  {want}\n  flowgate: {got:?}"));
            }
        }
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }

    /// YAML documents as data: flowgate keeps the file's text where Dify re-dumps it.
    fn yaml_data(text: &str) -> Vec<serde_json::Value> {
        serde_saphyr::from_multiple::<serde_json::Value>(text).unwrap()
    }

    #[test]
    fn unknown_and_unsupported_types_are_named() {
        assert_eq!(extract_text(Some(".exe"), None, b"").unwrap_err(), "Unsupported Extension Type: .exe");
        assert_eq!(extract_text(None, Some("image/png"), b"").unwrap_err(), "Unsupported MIME type: image/png");
        assert_eq!(extract_text(None, None, b"").unwrap_err(), "Unable to determine file type: MIME type or file extension is missing");
        assert!(extract_text(Some(".PDF"), None, b"").unwrap_err().starts_with("not supported yet: extracting text from .pdf files"));
        assert_eq!(extract_text(None, Some("text/csv"), b"a,b\n1,2\n").unwrap(), "| a | b |\n| - | - |\n| 1 | 2 |\n");
    }
}

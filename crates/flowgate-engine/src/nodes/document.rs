//! Document extractor: text out of uploaded files, by extension (or MIME type when the file
//! has no extension), as Dify does for text, markdown, HTML, code, CSV, JSON, YAML and DOCX.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;

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
    if let Some(extension) = file.extension.as_deref().filter(|extension| !extension.is_empty()) {
        let extension = extension.to_ascii_lowercase();
        return extract_by_extension(&extension, &content).unwrap_or_else(|| Err(format!("Unsupported Extension Type: {extension}")));
    }
    if let Some(mime_type) = file.mime_type.as_deref().filter(|mime| !mime.is_empty()) {
        return extract_by_mime(mime_type, &content).unwrap_or_else(|| Err(format!("Unsupported MIME type: {mime_type}")));
    }
    Err("Unable to determine file type: MIME type or file extension is missing".into())
}

fn extract_by_extension(extension: &str, content: &Bytes) -> Option<Result<String, String>> {
    Some(match extension {
        extension if PLAIN_TEXT_EXTENSIONS.contains(&extension) => Ok(decode(content)),
        ".json" => json_text(content),
        ".yaml" | ".yml" => Ok(decode(content)),
        ".csv" => csv_text(content),
        ".docx" => docx_text(content),
        ".pdf" | ".doc" | ".xls" | ".xlsx" | ".ppt" | ".pptx" | ".epub" | ".odt" | ".eml" | ".msg" | ".properties" => {
            Err(format!("not supported yet: extracting text from {extension} files"))
        }
        _ => return None,
    })
}

fn extract_by_mime(mime: &str, content: &Bytes) -> Option<Result<String, String>> {
    Some(match mime {
        mime if PLAIN_TEXT_MIME_TYPES.contains(&mime) || mime == "text/vtt" => Ok(decode(content)),
        "application/json" => json_text(content),
        "application/x-yaml" | "text/yaml" => Ok(decode(content)),
        "text/csv" => csv_text(content),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => docx_text(content),
        _ => return None,
    })
}

/// UTF-8 with undecodable bytes dropped (Dify decodes with `errors="ignore"`).
fn decode(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    text.trim_start_matches('\u{feff}').replace('\u{fffd}', "")
}

fn json_text(content: &[u8]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(&decode(content))
        .map_err(|error| format!("Failed to decode or parse JSON file: {}", crate::condition::json_error_message(&error)))?;
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

/// Paragraph text of a DOCX (`word/document.xml`), one paragraph per line; tables become
/// markdown rows.
fn docx_text(content: &[u8]) -> Result<String, String> {
    let fail = |error: String| format!("Failed to extract text from DOCX: {error}");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(content)).map_err(|error| fail(error.to_string()))?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|error| fail(error.to_string()))?
        .take(64 * 1024 * 1024)
        .read_to_string(&mut xml)
        .map_err(|error| fail(error.to_string()))?;
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut lines = Vec::new();
    let mut paragraph = String::new();
    let mut row: Vec<String> = Vec::new();
    let mut in_text = false;
    let mut table_depth = 0usize;
    loop {
        match reader.read_event().map_err(|error| fail(error.to_string()))? {
            quick_xml::events::Event::Start(tag) => match tag.local_name().as_ref() {
                b"t" => in_text = true,
                b"tbl" => table_depth += 1,
                b"tr" => row.clear(),
                _ => {}
            },
            quick_xml::events::Event::Empty(tag) => match tag.local_name().as_ref() {
                b"tab" => paragraph.push('\t'),
                b"br" => paragraph.push('\n'),
                _ => {}
            },
            quick_xml::events::Event::Text(text) if in_text => {
                let decoded = text.decode().map_err(|error| fail(error.to_string()))?;
                paragraph.push_str(&quick_xml::escape::unescape(&decoded).map_err(|error| fail(error.to_string()))?);
            }
            quick_xml::events::Event::GeneralRef(reference) if in_text => {
                let name = reference.decode().map_err(|error| fail(error.to_string()))?;
                let resolved = match name.as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                };
                paragraph.push_str(resolved);
            }
            quick_xml::events::Event::End(tag) => match tag.local_name().as_ref() {
                b"t" => in_text = false,
                b"p" => {
                    let text = std::mem::take(&mut paragraph);
                    if table_depth > 0 {
                        if let Some(cell) = row.last_mut() {
                            if !cell.is_empty() {
                                cell.push(' ');
                            }
                            cell.push_str(&text);
                        } else {
                            row.push(text);
                        }
                    } else {
                        lines.push(text);
                    }
                }
                b"tc" if table_depth > 0 => row.push(String::new()),
                b"tr" if table_depth > 0 => {
                    row.pop();
                    lines.push(format!("| {} |", row.join(" | ")));
                }
                b"tbl" => table_depth = table_depth.saturating_sub(1),
                _ => {}
            },
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_becomes_a_markdown_table() {
        assert_eq!(
            csv_text(b"name,age\nAda,36\n\"Line\nbreak\",1\n").unwrap(),
            "| name | age |\n| ---- | --- |\n| Ada | 36 |\n| Line break | 1 |\n"
        );
    }

    #[test]
    fn json_is_pretty_printed_like_python() {
        assert_eq!(json_text(br#"{"a":[1,2],"b":"\u00e9"}"#).unwrap(), "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"é\"\n}");
    }

    #[test]
    fn unknown_extensions_are_refused() {
        assert!(extract_by_extension(".exe", &Bytes::new()).is_none());
        assert!(matches!(extract_by_extension(".pdf", &Bytes::new()), Some(Err(message)) if message.contains("not supported yet")));
    }
}

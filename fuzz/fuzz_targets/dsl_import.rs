//! Any bytes through the whole import path: decode, typed read, validation, export, and plan
//! compilation of what validates. Nothing may panic, hang or blow the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(document) = flowgate_dsl::Document::load(&text) else { return };
    let diagnostics = document.diagnostics();
    let _ = document.export_yaml();
    if !diagnostics.iter().any(|diagnostic| diagnostic.is_error()) {
        let _ = flowgate_engine::Plan::compile(&document);
    }
});

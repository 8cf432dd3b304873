//! Any bytes as a models file (`flowgate serve --models`): it loads or is refused with
//! problems that name their line; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = flowgate_models::config::GatewayConfig::parse(&text, &|name| (name == "KEY").then(|| "sk-fuzz".to_owned()));
});

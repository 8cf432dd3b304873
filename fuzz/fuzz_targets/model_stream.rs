//! Any bytes as an upstream's streamed answer, in each provider's dialect, split into reads
//! where the input has 0xFF (so frames straddle reads): the parser may refuse it with an
//! error, never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&dialect, rest)) = data.split_first() else { return };
    let chunks = rest.split(|&byte| byte == 0xFF).map(bytes::Bytes::copy_from_slice).collect();
    let _ = flowgate_models::parse_chunks(dialect, chunks);
});

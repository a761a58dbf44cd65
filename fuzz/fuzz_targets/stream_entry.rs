//! A stream entry as Redis returns it: see `logpipeline_core::fuzz::stream_entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logpipeline_core::fuzz::stream_entry(data));

//! A `POST /api/log` body: see `logpipeline_core::fuzz::log_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logpipeline_core::fuzz::log_body(data));

//! The `logs` array of a `POST /api/logs/batch` body: see `logpipeline_core::fuzz::batch_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logpipeline_core::fuzz::batch_body(data));

//! An OTLP/protobuf logs export, as `POST /v1/logs` and `LogsService/Export` receive it:
//! see `logpipeline_core::fuzz::otlp_logs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logpipeline_core::fuzz::otlp_logs(data));

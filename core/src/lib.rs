//! What the LogPipeline api and worker share: the log record and its rules, the stream
//! codec, the schema, configuration, and the process plumbing (telemetry, shutdown).

pub mod chunk;
pub mod codec;
pub mod config;
pub mod connection;
pub mod db;
pub mod field;
pub mod fuzz;
pub mod generations;
pub mod indexes;
pub mod metrics;
pub mod net;
pub mod numeric;
pub mod origin;
pub mod otlp;
pub mod partitions;
pub mod record;
pub mod retry;
pub mod seed;
pub mod shutdown;
pub mod storage;
pub mod stream;
pub mod telemetry;
pub mod tenant;

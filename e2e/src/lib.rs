//! Test harness and tools for LogPipeline's end-to-end tests.
//!
//! Tests start real servers — Redis, PostgreSQL, the LogPipeline binaries — on free ports
//! in temporary directories, and every server stops when its handle is dropped or the
//! test process exits.

pub mod devices;
pub mod kube;
pub mod load;
pub mod monitoring;
pub mod node;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod services;
pub mod stack;

//! LogPipeline's gRPC protocol, generated from `proto/` at build time (never edited by
//! hand): the `logpipeline.v1.LogService` messages, its client and its server.

/// `logpipeline.v1`: system B's calls, `WriteLog` and `BatchWriteLogs`.
pub mod v1 {
    tonic::include_proto!("logpipeline.v1");
}

/// The encoded `FileDescriptorSet` of every proto here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/logpipeline_descriptors.bin"));

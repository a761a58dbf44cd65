//! What the LogPipeline api and worker share.

//! LogPipeline on a real one-node Kubernetes cluster (see `logpipeline_local::node`): the
//! images built here, the chart installed with helm, the sample applied as written (with
//! the test's API key in its keys Secret), and then API keys through the Ingress,
//! devices sending with their key, lag scaling, the autoscaler and a rolling change,
//! each with real pods under real load; and a second pipeline with sharded streams on a
//! Redis Cluster in pods.
//!
//! The tests run one at a time on one shared cluster and one shared pipeline; each
//! prints what it measured.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod chart;
mod images;
mod ingress;
mod redis_cluster;
mod rolling;
mod scaling;
mod support;
mod teardown;

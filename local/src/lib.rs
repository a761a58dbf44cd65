//! LogPipeline and what it needs, run on this machine: Redis, PostgreSQL and the api and
//! worker binaries as child processes on free ports in temporary directories, and a real
//! one-node Kubernetes (etcd, the control plane, a kubelet with containerd, the add-ons).
//!
//! The `logpipeline` command (`dev`, `bench`, `cluster`) and the end-to-end tests both
//! start what they need through it. Every server stops when its handle is dropped, and
//! what a killed process left behind is swept by the next start.

pub mod auth;
pub mod kube;
pub mod node;
pub mod packages;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod services;

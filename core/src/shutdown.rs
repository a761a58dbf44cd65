//! Waiting for the signal to stop.

use tracing::{info, warn};

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => info!(signal = "SIGTERM", "shutting down"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => info!(signal = "SIGINT", "shutting down"),
            Err(error) => warn!(%error, "cannot listen for Ctrl-C"),
        },
    }
}

//! Wires the operator together: metrics server, leader election, controller, shutdown.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::controller::{self, Context};
use crate::metrics::Metrics;
use crate::server;
use crate::{Error, Result};

/// Runs the operator until SIGTERM or Ctrl-C, or until it loses the leader Lease.
///
/// Every replica serves metrics and health; only the one holding the Lease reconciles.
/// On shutdown the leader finishes the reconciles in flight and releases the Lease, so
/// the next replica takes over at once instead of waiting for it to expire.
pub async fn run(config: Config) -> Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let listener = TcpListener::bind(config.metrics_listen).await?;
    info!(address = %listener.local_addr()?, "serving metrics and health");
    let server = tokio::spawn(
        axum::serve(listener, server::app(metrics.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let identity = config.identity();
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&identity)
        .with_field_manager(format!("{}-lease", crate::render::MANAGER))
        .with_duration(config.lease_duration_secs)
        .with_grace((config.lease_duration_secs / 3).max(1))
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(%identity, lease = %config.lease_name, namespace = %config.lease_namespace, "waiting for the leader lease");
    let mut leading = false;
    while !leading {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    break;
                }
                leading = *leader.borrow_and_update();
            }
            () = shutdown.cancelled() => break,
        }
    }

    let mut lost = false;
    if leading {
        info!(%identity, "leading: reconciling LogPipelines");
        metrics.leader.set(1);
        let stop = shutdown.child_token();
        let mut still_leader = leader.clone();
        let loss = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while still_leader.changed().await.is_ok() {
                    if !*still_leader.borrow_and_update() {
                        break;
                    }
                }
                stop.cancel();
            })
        };
        let ctx = Context::new(client, metrics.clone(), identity, config.redis_timeout());
        controller::run(
            ctx,
            config.watch_namespace.as_deref(),
            stop.cancelled_owned(),
        )
        .await;
        lost = !shutdown.is_cancelled();
        loss.abort();
        // The aborted task ends with a cancellation error, which says nothing.
        let _ = loss.await;
        metrics.leader.set(0);
    }

    // Closing the channel makes the lease task release the Lease and end.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the leader lease"),
        Ok(Err(error)) => warn!(%error, "could not release the leader lease"),
        Err(error) => warn!(%error, "leader election task failed"),
    }
    shutdown.cancel();
    match server.await {
        Ok(result) => result?,
        Err(error) => warn!(%error, "metrics server task failed"),
    }
    if lost {
        return Err(Error::LostLeadership);
    }
    info!("stopped");
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C: shutting down"),
        () = terminate => info!("SIGTERM: shutting down"),
    }
    token.cancel();
}

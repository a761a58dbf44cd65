//! The servers: HTTP/1.1 for the REST api and HTTP/2 for gRPC. Both accept connections
//! within the same limits, serve a router on them, and drain them on shutdown.
//!
//! Limits that keep one client from exhausting the api, as nginx's `limit_conn` and
//! `client_header_timeout` did for the seed:
//! - a connection must send each request's headers within the header-read timeout, which
//!   also closes keep-alive connections idle that long (slowloris and idle hoarding); an
//!   HTTP/2 connection must answer keep-alive pings within it, and may carry at most
//!   [`MAX_STREAMS_PER_CONNECTION`] calls at once;
//! - at most so many connections at once, and at most so many from one address (not
//!   counting trusted proxies, behind which many clients share an address); a connection
//!   over a limit is closed on arrival.
//!
//! A connection that ends after an answer (a 413 to a body still arriving, say) ends with
//! a lingering close, as nginx's: the api stops sending, then reads and discards what the
//! client still sends for a bounded time. Closing at once, with the client's bytes unread,
//! would make the kernel reset the connection, and the client would never see the answer.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::error::Result;
use crate::limits::RateLimits;
use crate::metrics::Metrics;

/// How long to wait after `accept` fails (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A lingering close waits at most this long for each read (nginx's `lingering_timeout`)…
const LINGER_READ: Duration = Duration::from_secs(5);

/// …and at most this long in all (nginx's `lingering_time`).
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// Calls at once on one HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How often an HTTP/2 connection is pinged to tell a live client from a dead one.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the REST api.
    Http1,
    /// HTTP/2 without TLS (h2c, prior knowledge): gRPC.
    Http2,
}

/// The connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers, from the connection's start or the
    /// end of its previous request.
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address that is not a trusted proxy.
    pub max_connections_per_address: usize,
}

/// A server's connections and what it serves on them.
pub struct Server {
    /// Where connections arrive.
    pub listener: TcpListener,
    /// What it speaks.
    pub protocol: Protocol,
    /// What it serves.
    pub app: Router,
    /// The connection limits.
    pub limits: ConnectionLimits,
}

/// Serves `server.app` until `stop` completes; then stops accepting connections, lets
/// in-flight requests finish and closes idle connections, waiting at most `drain`.
pub async fn serve(
    server: Server,
    rate_limits: RateLimits,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> Result<()> {
    let Server {
        listener,
        protocol,
        app,
        limits,
    } = server;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let draining = CancellationToken::new();
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddress::new(limits.max_connections_per_address);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            metrics.connection_refused("total");
            continue;
        };
        let slot = if rate_limits.is_trusted_proxy(peer.ip()) {
            None
        } else {
            match per_address.take(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    metrics.connection_refused("per_address");
                    continue;
                }
            }
        };
        // Small answers go out at once rather than waiting for more to coalesce.
        let _ = stream.set_nodelay(true);
        let service = {
            let app = app.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                Box::pin(app.clone().oneshot(request.map(Body::new)))
            })
        };
        let draining = draining.clone();
        let metrics = metrics.clone();
        metrics.connections_open(1);
        let io = TokioIo::new(stream);
        match protocol {
            Protocol::Http1 => {
                let mut connection = http1.serve_connection(io, service);
                tokio::spawn(async move {
                    let drain = draining.cancelled();
                    tokio::pin!(drain);
                    let mut told = false;
                    let served = poll_fn(|cx| {
                        if !told && drain.as_mut().poll(cx).is_ready() {
                            told = true;
                            Pin::new(&mut connection).graceful_shutdown();
                        }
                        connection.poll_without_shutdown(cx)
                    })
                    .await;
                    // An error is the client's (a reset, a timeout): close at once.
                    if served.is_ok() {
                        linger(connection.into_parts().io.into_inner()).await;
                    }
                    metrics.connections_open(-1);
                    drop((permit, slot));
                });
            }
            Protocol::Http2 => {
                let connection = http2.serve_connection(io, service);
                tokio::spawn(async move {
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = draining.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                    metrics.connections_open(-1);
                    drop((permit, slot));
                });
            }
        }
    }
    drop(listener);
    info!(?drain, "draining connections");
    draining.cancel();
    let everyone = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, total.acquire_many(everyone))
        .await
        .is_err()
    {
        warn!(?drain, "in-flight requests did not finish in time; exiting");
    }
    info!("stopped");
    Ok(())
}

/// Closes a connection the way nginx's lingering close does: stops sending, then reads
/// and discards until the client closes too, or a read waits [`LINGER_READ`], or
/// [`LINGER_TOTAL`] has passed.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = vec![0; 16 * 1024];
    let _ = tokio::time::timeout(LINGER_TOTAL, async {
        while let Ok(Ok(read)) = tokio::time::timeout(LINGER_READ, stream.read(&mut discard)).await
        {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}

/// Open connections per address.
#[derive(Clone)]
struct PerAddress {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One connection of an address, given back when dropped.
struct Slot {
    owner: PerAddress,
    address: IpAddr,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    fn take(&self, address: IpAddr) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_slots_back() {
        let limits = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limits.take(a).unwrap();
        let _second = limits.take(a).unwrap();
        assert!(limits.take(a).is_none());
        assert!(limits.take(b).is_some());
        drop(first);
        assert!(limits.take(a).is_some());
    }
}

//! Listening for HTTP connections.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and queues before the server accepts them (capped by
/// `net.core.somaxconn`). Tokio's default, 128, is too short for a fleet that connects
/// at once: the kernel drops the SYNs beyond it, and each dropped device waits a whole
/// second for its retransmission.
pub const BACKLOG: u32 = 4096;

/// A listener on `address` with a [`BACKLOG`]-deep accept queue.
pub fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use super::*;

    /// More connections than tokio's default backlog all complete while the server is
    /// busy and accepts none. Without the deeper queue the ones beyond 128 lose their SYN
    /// and cannot connect before its retransmission, a second later.
    #[tokio::test]
    async fn a_burst_of_connections_is_queued_not_dropped() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..600 {
            connects.spawn(timeout(
                Duration::from_millis(900),
                TcpStream::connect(address),
            ));
        }
        // The streams stay open until all are counted.
        let streams = connects.join_all().await;
        let connected = streams
            .iter()
            .filter(|stream| matches!(stream, Ok(Ok(_))))
            .count();
        assert_eq!(connected, 600);
    }
}

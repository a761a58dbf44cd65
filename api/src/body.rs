//! Reading request bodies within bounds, as nginx's `client_body_timeout` and
//! `client_max_body_size` and Envoy's request timeouts bound them:
//!
//! - **time**: a body must arrive at an average rate of at least `min_bytes_per_sec`
//!   after a grace every body gets; slower, the request is answered 408 and its
//!   connection closed. A client that feeds a body a byte a second holds its connection
//!   and its memory for the grace, not for ever;
//! - **size**: at most `max_bytes` decoded, refused with 413 before it is read whole
//!   when the declared length says so; a gzip body may grow at most `max_gzip_ratio`
//!   times its declared size when decoded;
//! - **memory across requests**: every body's bytes beyond its first 64 KiB come out of
//!   one budget for the whole api. A body that finds no room within half a second is
//!   answered 503 with `Retry-After`, so a flood of large bodies cannot take more memory
//!   than the budget, while small requests (the devices' logs) never wait for it.
//!
//! A body is read once into one buffer, sized from its declared length, and its share
//! of the budget goes back when the last handle to its bytes is dropped. A large body
//! of declared length is read into memory mapped for it alone, which goes back to the
//! system when it is dropped, rather than into the allocator, which may keep freed pages
//! a while: the budget bounds the memory the api holds, not what it held a moment ago.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body_util::BodyExt;
use memmap2::{Mmap, MmapMut, MmapOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// The first bytes of every body, which the budget does not count.
pub const FREE_BYTES: usize = 64 * 1024;
/// How long a body waits for room in the budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_millis(500);
/// The budget is counted in units of this many bytes (a semaphore counts in `u32`s).
const UNIT: usize = 1024;

/// The bounds every body is read within.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body, after decoding.
    pub max_bytes: usize,
    /// Time every body has on top of what the minimum rate allows.
    pub grace: Duration,
    /// The average rate a body must keep.
    pub min_bytes_per_sec: u64,
    /// Most times a gzip body may grow when decoded.
    pub max_gzip_ratio: u64,
    /// Bytes of bodies held at once, beyond each body's first [`FREE_BYTES`].
    pub budget_bytes: usize,
    budget: Arc<Semaphore>,
}

impl BodyLimits {
    /// Bounds with a budget of `budget_bytes`.
    pub fn new(
        max_bytes: usize,
        grace: Duration,
        min_bytes_per_sec: u64,
        max_gzip_ratio: u64,
        budget_bytes: usize,
    ) -> Self {
        let units = (budget_bytes / UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            max_bytes,
            grace,
            min_bytes_per_sec: min_bytes_per_sec.max(1),
            max_gzip_ratio: max_gzip_ratio.max(1),
            budget_bytes,
            budget: Arc::new(Semaphore::new(units)),
        }
    }

    /// Bytes of the budget in use now.
    pub fn bytes_in_flight(&self) -> usize {
        let free = self.budget.available_permits();
        (self.budget_bytes / UNIT)
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(free)
            * UNIT
    }

    /// Reads `body`, declared `declared` bytes long (the `Content-Length`, if any), of
    /// which `compressed` were sent gzip-encoded (the length on the wire, for a gzip
    /// body), within the bounds.
    pub async fn read(
        &self,
        mut body: Body,
        declared: Option<u64>,
        compressed: Option<u64>,
    ) -> Result<Bytes> {
        let mut cap = self.max_bytes;
        if let Some(compressed) = compressed {
            let ratio_cap = compressed.saturating_mul(self.max_gzip_ratio);
            cap = cap.min(
                usize::try_from(ratio_cap)
                    .unwrap_or(usize::MAX)
                    .max(FREE_BYTES),
            );
        }
        let too_large = || Error::PayloadTooLarge { limit: cap };
        if declared.is_some_and(|length| length > cap as u64) {
            return Err(too_large());
        }
        let mut buffer = Buffer::for_length(declared.map(|length| length as usize))?;
        let mut held: Option<OwnedSemaphorePermit> = None;
        let started = Instant::now();
        loop {
            let allowed = self.grace
                + Duration::from_secs_f64(buffer.len() as f64 / self.min_bytes_per_sec as f64);
            let left = allowed
                .checked_sub(started.elapsed())
                .ok_or_else(|| self.timeout())?;
            let frame = match tokio::time::timeout(left, body.frame()).await {
                Err(_) => return Err(self.timeout()),
                Ok(None) => break,
                Ok(Some(frame)) => frame.map_err(|_| Error::UnreadableBody)?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let length = buffer.len() + data.len();
            if length > cap {
                return Err(too_large());
            }
            let counted = length.saturating_sub(FREE_BYTES).div_ceil(UNIT);
            let already = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
            if counted > already {
                let more = u32::try_from(counted - already).unwrap_or(u32::MAX);
                let permit =
                    tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(more))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .ok_or(Error::BodiesInFlight {
                            budget_bytes: self.budget_bytes,
                        })?;
                match &mut held {
                    Some(held) => held.merge(permit),
                    None => held = Some(permit),
                }
            }
            buffer.extend(&data)?;
        }
        buffer.into_bytes(held)
    }

    fn timeout(&self) -> Error {
        Error::RequestTimeout {
            min_bytes_per_sec: self.min_bytes_per_sec,
            grace_secs: self.grace.as_secs(),
        }
    }
}

/// Where a body is read to.
enum Buffer {
    /// A small body, or one of unknown length.
    Heap(BytesMut),
    /// A large body of declared length: memory mapped for it alone.
    Mapped { map: MmapMut, length: usize },
}

impl Buffer {
    /// A buffer for a body of `declared` length, if known.
    fn for_length(declared: Option<usize>) -> Result<Self> {
        Ok(match declared {
            Some(length) if length > FREE_BYTES => Self::Mapped {
                map: MmapOptions::new()
                    .len(length)
                    .map_anon()
                    .map_err(|error| Error::Internal(format!("mapping a body: {error}")))?,
                length: 0,
            },
            Some(length) => Self::Heap(BytesMut::with_capacity(length)),
            None => Self::Heap(BytesMut::with_capacity(FREE_BYTES)),
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Heap(bytes) => bytes.len(),
            Self::Mapped { length, .. } => *length,
        }
    }

    fn extend(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Self::Heap(bytes) => bytes.extend_from_slice(data),
            Self::Mapped { map, length } => {
                let end = *length + data.len();
                // The server stops a body at its declared length; more is not a body.
                let slot = map.get_mut(*length..end).ok_or(Error::UnreadableBody)?;
                slot.copy_from_slice(data);
                *length = end;
            }
        }
        Ok(())
    }

    /// The bytes read, holding `permit` (their share of the budget) as long as they live.
    fn into_bytes(self, permit: Option<OwnedSemaphorePermit>) -> Result<Bytes> {
        Ok(match (self, permit) {
            (Self::Heap(bytes), None) => bytes.freeze(),
            (Self::Heap(bytes), Some(permit)) => Bytes::from_owner(Held {
                bytes: bytes.freeze(),
                _permit: permit,
            }),
            (Self::Mapped { map, length }, permit) => {
                let map = map
                    .make_read_only()
                    .map_err(|error| Error::Internal(format!("sealing a body: {error}")))?;
                Bytes::from_owner(HeldMap {
                    map,
                    length,
                    _permit: permit,
                })
            }
        })
    }
}

/// A body's bytes with their share of the budget, given back when they are dropped.
struct Held {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A body read into its own mapping, unmapped (and its share of the budget given back)
/// when dropped.
struct HeldMap {
    map: Mmap,
    length: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for HeldMap {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.length]
    }
}

/// The default budget: a quarter of the memory limit of the api's cgroup (a container's
/// limit), or 512 MiB without one.
pub fn default_budget_bytes() -> usize {
    const WITHOUT_LIMIT: usize = 512 * 1024 * 1024;
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    // cgroup v2, then v1 (whose "no limit" is a number near 2^63).
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .filter(|limit| *limit < 1 << 50);
    limit.map_or(WITHOUT_LIMIT, |limit| {
        usize::try_from(limit / 4).unwrap_or(WITHOUT_LIMIT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget_bytes: usize) -> BodyLimits {
        BodyLimits::new(1 << 20, Duration::from_millis(200), 1024, 10, budget_bytes)
    }

    #[tokio::test]
    async fn a_body_is_read_whole() {
        let bytes = limits(1 << 20)
            .read(Body::from("hello"), Some(5), None)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let error = limits(1 << 20)
            .read(Body::from("x"), Some(2 << 20), None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::PayloadTooLarge { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_gzip_body_may_grow_only_so_much() {
        let body = vec![b'a'; FREE_BYTES + 1];
        let error = limits(1 << 20)
            .read(Body::from(body), None, Some(100))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::PayloadTooLarge { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_body_that_trickles_times_out() {
        let (mut sender, body) = tokio::io::duplex(16);
        let trickle = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..100 {
                if sender.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let stream = tokio_util::io::ReaderStream::new(body);
        let started = Instant::now();
        let error = limits(1 << 20)
            .read(Body::from_stream(stream), Some(100), None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::RequestTimeout { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        trickle.abort();
    }

    #[tokio::test]
    async fn large_bodies_share_the_budget_and_give_it_back() {
        let limits = limits(FREE_BYTES);
        let size = FREE_BYTES + 48 * 1024;
        let first = limits
            .read(Body::from(vec![b'a'; size]), Some(size as u64), None)
            .await
            .unwrap();
        assert_eq!(limits.bytes_in_flight(), 48 * 1024);
        let error = limits
            .read(Body::from(vec![b'b'; size]), Some(size as u64), None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::BodiesInFlight { .. }), "{error:?}");
        // Small bodies never wait for the budget.
        assert!(limits.read(Body::from("small"), None, None).await.is_ok());
        drop(first);
        assert_eq!(limits.bytes_in_flight(), 0);
        assert!(
            limits
                .read(Body::from(vec![b'c'; size]), Some(size as u64), None)
                .await
                .is_ok()
        );
    }
}

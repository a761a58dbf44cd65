//! Request-rate limits per API key and per client address: token buckets (GCRA, from
//! `governor`), answered with 429 and `Retry-After`.
//!
//! The client address is the connection's peer, unless the peer is a trusted proxy (an
//! Ingress controller): then it is the last address in `X-Forwarded-For` that is not a
//! trusted proxy itself, which a client cannot forge past the proxies it went through.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::error::{Error, Result};

/// A sustained rate and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second.
    pub per_second: NonZeroU32,
    /// Requests that may arrive at once.
    pub burst: NonZeroU32,
}

impl RateLimit {
    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// The limits in force; cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    per_key: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpNet>,
}

impl RateLimits {
    /// Limits of `per_key` per API key and `per_address` per client address (none where
    /// `None`), with the addresses of `trusted_proxies` resolved through
    /// `X-Forwarded-For`.
    pub fn new(
        per_key: Option<RateLimit>,
        per_address: Option<RateLimit>,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_key: per_key.map(|limit| RateLimiter::keyed(limit.quota())),
                per_address: per_address.map(|limit| RateLimiter::keyed(limit.quota())),
                trusted_proxies,
            }),
        }
    }

    /// Whether `address` is a trusted proxy's.
    pub fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.inner
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }

    /// Counts `request` against its client address's limit.
    pub fn check_address(&self, request: &Request) -> Result<()> {
        let Some(address) = self.client_address(request) else {
            return Ok(());
        };
        self.check_ip(address)
    }

    /// Counts a request from `address`, a connection's peer, against its limit (gRPC,
    /// whose clients connect without an HTTP proxy in between).
    pub fn check_ip(&self, address: IpAddr) -> Result<()> {
        let Some(limiter) = &self.inner.per_address else {
            return Ok(());
        };
        limiter
            .check_key(&address)
            .map_err(|not_until| rate_limited("address", not_until))
    }

    /// Counts a request against the limit of the key `key`.
    pub fn check_key(&self, key: &Arc<str>) -> Result<()> {
        let Some(limiter) = &self.inner.per_key else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| rate_limited("key", not_until))
    }

    /// Forgets the buckets of keys and addresses that are full again, so that their
    /// memory does not grow with every address ever seen.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.inner.per_key {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.inner.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The client's address: the peer's, or through trusted proxies the last untrusted
    /// address they forwarded. None in-process, where there is no connection.
    pub fn client_address(&self, request: &Request) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()?
            .0
            .ip();
        if !self.is_trusted_proxy(peer) {
            return Some(peer);
        }
        let forwarded = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) => {
                    client = address;
                    if !self.is_trusted_proxy(address) {
                        break;
                    }
                }
                // What a client wrote before the first trusted proxy: not an address.
                Err(_) => break,
            }
        }
        Some(client)
    }
}

fn rate_limited(
    limit: &'static str,
    not_until: governor::NotUntil<governor::clock::QuantaInstant>,
) -> Error {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Error::RateLimited {
        limit,
        retry_after_secs: whole_seconds_up(wait),
    }
}

/// `wait` in whole seconds, rounded up, at least 1 (`Retry-After` has no fractions).
fn whole_seconds_up(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn from(peer: &str, forwarded: Option<&str>) -> Request {
        let mut request = Request::new(Body::empty());
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 40000)));
        if let Some(forwarded) = forwarded {
            request
                .headers_mut()
                .insert("x-forwarded-for", forwarded.parse().unwrap());
        }
        request
    }

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let limits = RateLimits::new(Some(limit(1, 3)), None, vec![]);
        let key: Arc<str> = "acme/k".into();
        let other: Arc<str> = "acme/other".into();
        for _ in 0..3 {
            limits.check_key(&key).unwrap();
        }
        match limits.check_key(&key) {
            Err(Error::RateLimited {
                limit: "key",
                retry_after_secs: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
        limits.check_key(&other).unwrap();
    }

    #[test]
    fn addresses_behind_trusted_proxies_come_from_x_forwarded_for() {
        let limits = RateLimits::new(None, None, vec!["10.0.0.0/8".parse().unwrap()]);
        let address = |peer, forwarded| {
            limits
                .client_address(&from(peer, forwarded))
                .unwrap()
                .to_string()
        };
        assert_eq!(address("192.0.2.1", Some("198.51.100.7")), "192.0.2.1");
        assert_eq!(address("10.1.2.3", Some("198.51.100.7")), "198.51.100.7");
        assert_eq!(
            address("10.1.2.3", Some("203.0.113.9, 198.51.100.7, 10.9.9.9")),
            "198.51.100.7",
            "the last hop before the trusted ones, whatever the client wrote first"
        );
        assert_eq!(address("10.1.2.3", Some("nonsense")), "10.1.2.3");
        assert_eq!(address("10.1.2.3", None), "10.1.2.3");
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let limits = RateLimits::new(None, Some(limit(1, 1)), vec![]);
        limits.check_address(&from("192.0.2.1", None)).unwrap();
        assert!(limits.check_address(&from("192.0.2.1", None)).is_err());
        limits.check_address(&from("192.0.2.2", None)).unwrap();
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds_up(Duration::ZERO), 1);
    }
}

//! A connection to Redis: one server, or a Redis Cluster through the redis crate's
//! cluster client, which follows the cluster's slots, redirections and failovers.
//!
//! Both kinds answer every command the pipeline sends. On a cluster, a script or a
//! pipeline must keep to one slot: the stream's shards and the keys that go with them
//! carry hash tags for that (see [`crate::stream`]), and the few calls that touch keys
//! of several slots ask [`Redis::is_cluster`] and send one command per key.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::{ConfigError, RedisArgs};

/// Where Redis is, and how to open connections to it.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server (with replicas, perhaps, that it feeds).
    Single(redis::Client),
    /// A Redis Cluster, known by one or more of its nodes.
    Cluster(Vec<redis::ConnectionInfo>),
}

impl RedisTarget {
    /// The target `args` name.
    pub fn from_args(args: &RedisArgs) -> Result<Self, ConfigError> {
        if !args.redis_cluster {
            let client = redis::Client::open(args.connection_info()?)
                .map_err(|error| ConfigError(format!("REDIS_URL is invalid: {error}")))?;
            return Ok(Self::Single(client));
        }
        let url = args.redis_url.as_deref().ok_or_else(|| {
            ConfigError("a Redis Cluster needs REDIS_URL, naming one or more of its nodes".into())
        })?;
        let nodes = url
            .split(',')
            .map(|node| {
                redis::IntoConnectionInfo::into_connection_info(node.trim()).map_err(|error| {
                    ConfigError(format!("REDIS_URL names a node that is invalid: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Cluster(nodes))
    }

    /// Whether it is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A new connection, whose commands fail after `response_timeout` without an answer
    /// (reads that block must allow for their block time). It reconnects by itself.
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<Redis> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_within(response_timeout)))
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
                Ok(Redis::Single(manager))
            }
            Self::Cluster(nodes) => {
                let client: ClusterClient = ClusterClientBuilder::new(nodes.clone())
                    .response_timeout(response_timeout)
                    .connection_timeout(connect_within(response_timeout))
                    .build()?;
                Ok(Redis::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// How long opening a connection may take: as long as a command, at most 5 s.
fn connect_within(response_timeout: Duration) -> Duration {
    response_timeout.min(Duration::from_secs(5))
}

/// A connection to Redis, cheap to clone: clones share it, as a multiplexed connection.
#[derive(Clone)]
pub enum Redis {
    /// To one server.
    Single(ConnectionManager),
    /// To a Redis Cluster.
    Cluster(ClusterConnection),
}

impl Redis {
    /// Whether it is to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Sends `cmd`, which names no key, to the server holding `key`: the master of its
    /// slot on a cluster. `WAIT` must go there, on the connection the writes went on.
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Self::Single(manager) => cmd.query_async(manager).await,
            Self::Cluster(cluster) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = cluster.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, cluster: bool) -> RedisArgs {
        RedisArgs {
            redis_url: url.map(str::to_owned),
            redis_host: None,
            redis_port: None,
            redis_cluster: cluster,
        }
    }

    #[test]
    fn a_cluster_is_known_by_one_or_more_nodes_of_redis_url() {
        let target = RedisTarget::from_args(&args(Some("redis://a:7000, redis://b:7001"), true));
        match target.unwrap() {
            RedisTarget::Cluster(nodes) => {
                let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                assert_eq!(addrs, ["a:7000", "b:7001"]);
            }
            RedisTarget::Single(_) => panic!("a single server"),
        }
        assert!(
            !RedisTarget::from_args(&args(Some("redis://a:7000"), false))
                .unwrap()
                .is_cluster()
        );
        let refused = RedisTarget::from_args(&args(None, true)).unwrap_err();
        assert!(refused.0.contains("REDIS_URL"), "{refused}");
        let refused =
            RedisTarget::from_args(&args(Some("redis://a:7000,nonsense"), true)).unwrap_err();
        assert!(refused.0.contains("invalid"), "{refused}");
    }
}

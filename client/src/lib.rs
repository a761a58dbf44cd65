//! An async client for LogPipeline, with system B's calls: [`Client::write_log`] and
//! [`Client::batch_write_logs`] over gRPC or HTTP, and a background [`Batcher`].
//!
//! Every call carries an idempotency key, the same on each of its retries: a retry of a
//! request whose first attempt reached the api (its answer lost to a timeout or a
//! dropped connection) is stored once, and its answer says `duplicate`. Retries back off
//! exponentially and wait at least as long as the server asks (`Retry-After`,
//! `google.rpc.RetryInfo`).
//!
//! ```no_run
//! use logpipeline_client::{Client, Level, Log};
//!
//! # async fn run() -> Result<(), logpipeline_client::Error> {
//! // GRPC_SERVER_HOST / GRPC_SERVER_PORT, as system B's client reads them (localhost:50051).
//! let client = Client::from_env()?.build()?;
//! let written = client
//!     .write_log(Log::new("user logged in").service("auth").field("user_id", "u-7"))
//!     .await?;
//! println!("stored as {}", written.log_id);
//!
//! let batch = client
//!     .batch_write_logs(vec![
//!         Log::new("cache miss").service("catalog").level(Level::Debug),
//!         Log::new("payment declined").service("checkout").level(Level::Warning),
//!     ])
//!     .await?;
//! assert_eq!(batch.success_count, 2);
//! # Ok(()) }
//! ```

mod batcher;
mod error;
mod log;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use logpipeline_proto::v1::BatchWriteLogsRequest;
use logpipeline_proto::v1::log_service_client::LogServiceClient;
use serde::Deserialize;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

pub use batcher::{Batcher, BatcherSettings, Report};
pub use error::{Error, Result};
pub use log::{Level, Log};

/// The header and metadata key that carries an idempotency key over HTTP.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Where a [`Client`] sends.
#[derive(Debug, Clone)]
enum Target {
    /// A gRPC endpoint, `http://host:50051`.
    Grpc(String),
    /// The api's HTTP base URL, `http://host:8000`.
    Http(String),
}

/// How a [`Client`] is set up: its target, API key, timeout and retries.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    target: Target,
    api_key: Option<String>,
    timeout: Duration,
    retries: usize,
    min_delay: Duration,
    max_delay: Duration,
}

impl ClientBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            api_key: None,
            timeout: Duration::from_secs(10),
            retries: 5,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }

    /// The API key every request carries (`Authorization: Bearer …`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// How long one attempt may take before it counts as lost (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a call is tried again after an error that may pass (5), waiting
    /// from `min_delay` (100 ms) doubling up to `max_delay` (10 s), with jitter, and at
    /// least what the server asks.
    pub fn retries(mut self, retries: usize, min_delay: Duration, max_delay: Duration) -> Self {
        self.retries = retries;
        self.min_delay = min_delay;
        self.max_delay = max_delay;
        self
    }

    /// The client. It connects lazily: building never waits for the server.
    pub fn build(self) -> Result<Client> {
        let authorization = self
            .api_key
            .as_ref()
            .map(|key| format!("Bearer {key}"))
            .map(|value| {
                value
                    .parse::<tonic::metadata::MetadataValue<_>>()
                    .map_err(|_| Error::Config("the API key must be visible ASCII".into()))
            })
            .transpose()?;
        let transport = match &self.target {
            Target::Grpc(url) => {
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(|error| Error::Config(format!("gRPC endpoint {url:?}: {error}")))?
                    .timeout(self.timeout)
                    .connect_timeout(self.timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                let client = LogServiceClient::new(channel)
                    .send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip);
                Transport::Grpc {
                    client,
                    authorization,
                }
            }
            Target::Http(url) => {
                let base = reqwest::Url::parse(url)
                    .map_err(|error| Error::Config(format!("HTTP URL {url:?}: {error}")))?;
                let http = reqwest::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|error| Error::Config(error.to_string()))?;
                Transport::Http {
                    http,
                    base,
                    api_key: self.api_key.clone(),
                }
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries)
            .with_jitter();
        Ok(Client { transport, backoff })
    }
}

/// What the api answered for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The log's stable id.
    pub log_id: String,
    /// True when an earlier attempt of the same call had been accepted: the log is
    /// stored once, under this id.
    pub duplicate: bool,
}

/// What the api answered for one entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EntryResult {
    /// True: the entry was accepted.
    pub success: bool,
    /// Its stable id; empty when refused.
    pub log_id: String,
    /// Why it was refused, naming the field; empty on success.
    pub error_message: String,
}

/// What the api answered for a batch: the entries that follow the rules are accepted,
/// the others are reported in `results`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchWritten {
    /// Entries sent.
    pub total_count: usize,
    /// Entries accepted.
    pub success_count: usize,
    /// Entries refused.
    pub error_count: usize,
    /// One result per entry, in order.
    pub results: Vec<EntryResult>,
    /// True when an earlier attempt of the same call had been accepted.
    pub duplicate: bool,
}

/// A LogPipeline client. Cheap to clone; clones share their connections.
#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    backoff: ExponentialBuilder,
}

#[derive(Debug, Clone)]
enum Transport {
    Grpc {
        client: LogServiceClient<Channel>,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
    Http {
        http: reqwest::Client,
        base: reqwest::Url,
        api_key: Option<String>,
    },
}

/// The answer of `POST /api/v1/logs/write`.
#[derive(Deserialize)]
struct HttpWritten {
    log_id: String,
    duplicate: bool,
}

/// The answer of `POST /api/v1/logs/batch`.
#[derive(Deserialize)]
struct HttpBatchWritten {
    total_count: usize,
    success_count: usize,
    error_count: usize,
    results: Vec<EntryResult>,
    duplicate: bool,
}

impl Client {
    /// A client of the gRPC service at `url`, e.g. `http://logpipeline:50051`.
    pub fn grpc(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(Target::Grpc(url.into()))
    }

    /// A client of the api's `/api/v1` HTTP front at `url`, e.g. `http://logpipeline:8000`.
    pub fn http(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(Target::Http(url.into()))
    }

    /// A gRPC client configured as system B's client was: `GRPC_SERVER_HOST`
    /// (`localhost`) and `GRPC_SERVER_PORT` (`50051`), plus `LOGPIPELINE_API_KEY` when set.
    pub fn from_env() -> Result<ClientBuilder> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ClientBuilder> {
        let host = var("GRPC_SERVER_HOST").unwrap_or_else(|| "localhost".into());
        let port = var("GRPC_SERVER_PORT").unwrap_or_else(|| "50051".into());
        let port: u16 = port.parse().map_err(|_| {
            Error::Config(format!(
                "GRPC_SERVER_PORT must be a port number, got {port:?}"
            ))
        })?;
        let builder = Self::grpc(format!("http://{host}:{port}"));
        Ok(match var("LOGPIPELINE_API_KEY") {
            Some(key) => builder.api_key(key),
            None => builder,
        })
    }

    /// Sends one log. Refused logs (a field breaking a rule) give [`Error::Refused`]
    /// naming the field; errors that may pass are retried first.
    pub async fn write_log(&self, log: Log) -> Result<Written> {
        let key = uuid::Uuid::new_v4().to_string();
        self.retrying(|| self.write_once(&log, &key)).await
    }

    /// Sends up to 1000 logs in one request. The entries that follow the rules are
    /// accepted; the others are reported in the answer's `results`.
    pub async fn batch_write_logs(&self, logs: Vec<Log>) -> Result<BatchWritten> {
        let key = uuid::Uuid::new_v4().to_string();
        self.batch_with_key(&logs, &key).await
    }

    /// Sends `logs` with idempotency key `key`, retrying as the builder says.
    pub(crate) async fn batch_with_key(&self, logs: &[Log], key: &str) -> Result<BatchWritten> {
        self.retrying(|| self.batch_once(logs, key)).await
    }

    async fn retrying<T, F>(&self, attempt: impl FnMut() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        attempt
            .retry(self.backoff)
            .when(Error::is_retryable)
            .adjust(|error, delay| {
                delay.map(|delay| error.retry_after().map_or(delay, |asked| asked.max(delay)))
            })
            .notify(|error, delay| tracing::debug!(%error, ?delay, "retrying"))
            .await
    }

    async fn write_once(&self, log: &Log, key: &str) -> Result<Written> {
        match &self.transport {
            Transport::Grpc {
                client,
                authorization,
            } => {
                let mut message = log.to_grpc();
                message.idempotency_key = key.to_owned();
                let request = grpc_request(message, authorization.as_ref());
                let answer = client
                    .clone()
                    .write_log(request)
                    .await
                    .map_err(|status| Error::from_status(&status))?
                    .into_inner();
                if !answer.success {
                    return Err(Error::Refused {
                        code: "InvalidArgument".into(),
                        message: answer.error_message,
                    });
                }
                Ok(Written {
                    log_id: answer.log_id,
                    duplicate: answer.duplicate,
                })
            }
            Transport::Http {
                http,
                base,
                api_key,
            } => {
                let answer: HttpWritten = post(
                    http,
                    base,
                    api_key.as_deref(),
                    "api/v1/logs/write",
                    &log.to_json(),
                    key,
                )
                .await?;
                Ok(Written {
                    log_id: answer.log_id,
                    duplicate: answer.duplicate,
                })
            }
        }
    }

    async fn batch_once(&self, logs: &[Log], key: &str) -> Result<BatchWritten> {
        match &self.transport {
            Transport::Grpc {
                client,
                authorization,
            } => {
                let message = BatchWriteLogsRequest {
                    entries: logs.iter().map(Log::to_grpc).collect(),
                    idempotency_key: key.to_owned(),
                };
                let answer = client
                    .clone()
                    .batch_write_logs(grpc_request(message, authorization.as_ref()))
                    .await
                    .map_err(|status| Error::from_status(&status))?
                    .into_inner();
                let count = |count: i32| usize::try_from(count).unwrap_or_default();
                Ok(BatchWritten {
                    total_count: count(answer.total_count),
                    success_count: count(answer.success_count),
                    error_count: count(answer.error_count),
                    results: answer
                        .results
                        .into_iter()
                        .map(|result| EntryResult {
                            success: result.success,
                            log_id: result.log_id,
                            error_message: result.error_message,
                        })
                        .collect(),
                    duplicate: answer.duplicate,
                })
            }
            Transport::Http {
                http,
                base,
                api_key,
            } => {
                let body = serde_json::json!({
                    "log_entries": logs.iter().map(Log::to_json).collect::<Vec<_>>(),
                });
                let answer: HttpBatchWritten = post(
                    http,
                    base,
                    api_key.as_deref(),
                    "api/v1/logs/batch",
                    &body,
                    key,
                )
                .await?;
                Ok(BatchWritten {
                    total_count: answer.total_count,
                    success_count: answer.success_count,
                    error_count: answer.error_count,
                    results: answer.results,
                    duplicate: answer.duplicate,
                })
            }
        }
    }
}

/// Posts `body` to `path` of the api at `base` with idempotency key `key`.
async fn post<T: for<'de> Deserialize<'de>>(
    http: &reqwest::Client,
    base: &reqwest::Url,
    api_key: Option<&str>,
    path: &str,
    body: &serde_json::Value,
    key: &str,
) -> Result<T> {
    let url = base
        .join(path)
        .map_err(|error| Error::Config(format!("{base}{path}: {error}")))?;
    let mut request = http.post(url).json(body).header(IDEMPOTENCY_HEADER, key);
    if let Some(api_key) = api_key {
        request = request.bearer_auth(api_key);
    }
    let response = request
        .send()
        .await
        .map_err(|error| Error::from_transport(&error))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let text = response
        .text()
        .await
        .map_err(|error| Error::from_transport(&error))?;
    if !status.is_success() {
        return Err(Error::from_http(status, retry_after, &text));
    }
    serde_json::from_str(&text).map_err(|error| Error::Unavailable {
        code: status.as_u16().to_string(),
        message: format!("the answer is not what the api sends: {error}"),
        retry_after: None,
    })
}

/// A gRPC request of `message` with the API key's `authorization` metadata.
fn grpc_request<T>(
    message: T,
    authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_clients_settings_name_the_server() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        let builder = Client::from_vars(vars(&[])).unwrap();
        assert!(matches!(&builder.target, Target::Grpc(url) if url == "http://localhost:50051"));
        let builder = Client::from_vars(vars(&[
            ("GRPC_SERVER_HOST", "logs.internal"),
            ("GRPC_SERVER_PORT", "6000"),
            ("LOGPIPELINE_API_KEY", "lpk_1"),
        ]))
        .unwrap();
        assert!(matches!(&builder.target, Target::Grpc(url) if url == "http://logs.internal:6000"));
        assert_eq!(builder.api_key.as_deref(), Some("lpk_1"));
        let error = Client::from_vars(vars(&[("GRPC_SERVER_PORT", "http")])).unwrap_err();
        assert!(error.to_string().contains("GRPC_SERVER_PORT"), "{error}");
    }
}

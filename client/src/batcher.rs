//! A background batching handle: logs go into a bounded buffer and leave in batches, by
//! size or by time, and a shutdown sends what is left.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Client, Error, Log};

/// How a [`Batcher`] groups and buffers logs.
#[derive(Debug, Clone)]
pub struct BatcherSettings {
    /// Logs per request, at most 1000 (100).
    pub batch_size: usize,
    /// How long a log waits for its batch to fill before it is sent anyway (1 s).
    pub interval: Duration,
    /// Logs the buffer holds before [`Batcher::send`] waits (10,000).
    pub capacity: usize,
}

impl Default for BatcherSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            interval: Duration::from_secs(1),
            capacity: 10_000,
        }
    }
}

/// What a [`Batcher`] did, once it has stopped.
#[derive(Debug, Default)]
pub struct Report {
    /// Logs the api accepted.
    pub accepted: u64,
    /// Logs the api refused for what they are, with why (naming the field).
    pub refused: Vec<(Log, String)>,
}

enum Command {
    Log(Log),
    Flush(oneshot::Sender<()>),
}

/// Sends logs in the background, in batches of `batch_size` or every `interval`,
/// through a [`Client`] and its retries. A batch that meets an error that may pass
/// (the api restarting, a full stream, a rate limit) is sent again, with the same
/// idempotency key, until it is accepted: nothing given to the batcher is lost, and
/// nothing is stored twice. [`Batcher::shutdown`] sends what the buffer holds.
///
/// ```no_run
/// use logpipeline_client::{Batcher, BatcherSettings, Client, Log};
///
/// # async fn run() -> Result<(), logpipeline_client::Error> {
/// let client = Client::http("http://localhost:8000").api_key("lpk_…").build()?;
/// let batcher = Batcher::spawn(client, BatcherSettings::default());
/// for n in 0..10_000 {
///     batcher.send(Log::new(format!("tick {n}")).service("clock")).await;
/// }
/// let report = batcher.shutdown().await;
/// assert_eq!(report.accepted, 10_000);
/// # Ok(()) }
/// ```
pub struct Batcher {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<Report>,
}

impl Batcher {
    /// Starts the background task on the current tokio runtime.
    pub fn spawn(client: Client, settings: BatcherSettings) -> Self {
        let (commands, receiver) = mpsc::channel(settings.capacity.max(1));
        let task = tokio::spawn(run(client, settings, receiver));
        Self { commands, task }
    }

    /// Queues `log`, waiting while the buffer is full.
    pub async fn send(&self, log: Log) {
        // The task only ends after the handle's shutdown, which consumes the handle.
        let _ = self.commands.send(Command::Log(log)).await;
    }

    /// Returns once every log queued before the call has been accepted or refused.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Sends what the buffer holds, stops the task and reports.
    pub async fn shutdown(self) -> Report {
        drop(self.commands);
        self.task.await.unwrap_or_default()
    }
}

async fn run(
    client: Client,
    settings: BatcherSettings,
    mut commands: mpsc::Receiver<Command>,
) -> Report {
    let batch_size = settings.batch_size.clamp(1, 1000);
    let mut report = Report::default();
    let mut batch = Vec::with_capacity(batch_size);
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Log(log)) => {
                    batch.push(log);
                    if batch.len() >= batch_size {
                        send(&client, &mut batch, &mut report).await;
                        tick.reset();
                    }
                }
                Some(Command::Flush(done)) => {
                    send(&client, &mut batch, &mut report).await;
                    let _ = done.send(());
                }
                None => break,
            },
            _ = tick.tick() => send(&client, &mut batch, &mut report).await,
        }
    }
    send(&client, &mut batch, &mut report).await;
    report
}

/// Sends `batch` until the api has answered for every log in it, and empties it.
async fn send(client: &Client, batch: &mut Vec<Log>, report: &mut Report) {
    if batch.is_empty() {
        return;
    }
    let logs = std::mem::take(batch);
    let key = uuid::Uuid::new_v4().to_string();
    let mut delay = Duration::from_millis(100);
    loop {
        match client.batch_with_key(&logs, &key).await {
            Ok(written) => {
                report.accepted += written.success_count as u64;
                for (log, result) in logs.into_iter().zip(written.results) {
                    if !result.success {
                        report.refused.push((log, result.error_message));
                    }
                }
                return;
            }
            Err(error @ Error::Refused { .. }) | Err(error @ Error::Config(_)) => {
                let why = error.to_string();
                report
                    .refused
                    .extend(logs.into_iter().map(|log| (log, why.clone())));
                return;
            }
            Err(error) => {
                let wait = error.retry_after().map_or(delay, |asked| asked.max(delay));
                tracing::warn!(%error, ?wait, logs = logs.len(), "batch not accepted yet; sending it again");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

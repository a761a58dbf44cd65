//! Live tail during a benchmark run (`--tail-subscribers N`): subscribers of
//! `GET /api/logs/tail` that time every log they receive from its acceptance to its
//! arrival. A log's `created_at` is the api's clock when it accepted the log, and the
//! api runs on this machine, so the figure is accept to subscriber, with the subscriber's
//! own reading of the event included.

use anyhow::{Result, bail};
use clap::ValueEnum;
use clap::builder::PossibleValue;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::logs::{Connection, SseReader, request};

/// What each subscriber asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TailFilter {
    /// One device each (`device_id`), subscriber `i` the load's device `i mod 100`:
    /// people watching a device.
    Device,
    /// Every device's `ERROR` logs (a fifth of the load) each.
    Errors,
    /// Every log each.
    All,
}

impl TailFilter {
    fn params(self, subscriber: u32) -> Vec<(String, String)> {
        match self {
            Self::Device => vec![(
                "device_id".into(),
                format!("device-{:03}", subscriber % 100),
            )],
            Self::Errors => vec![("level".into(), "ERROR".into())],
            Self::All => Vec::new(),
        }
    }
}

/// What the subscribers saw, together.
#[derive(Debug, Clone, Serialize)]
pub struct TailFigures {
    /// Subscribers.
    pub subscribers: u32,
    /// Their filter.
    pub filter: TailFilter,
    /// Logs delivered to them, together.
    pub delivered: u64,
    /// Logs they were told they missed (they fell behind the ring), together.
    pub missed: u64,
    /// Accept to subscriber, ms.
    pub p50_ms: f64,
    /// Accept to subscriber, ms.
    pub p99_ms: f64,
    /// Accept to subscriber, ms.
    pub max_ms: f64,
}

impl TailFigures {
    /// One line for the run's output.
    pub fn render(&self) -> String {
        format!(
            "tail: {} subscribers ({}), {} logs delivered, {} missed; accept to subscriber p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.subscribers,
            self.filter
                .to_possible_value()
                .as_ref()
                .map_or("", PossibleValue::get_name),
            self.delivered,
            self.missed,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// One subscriber's tally.
struct Tally {
    latency: Histogram<u64>,
    delivered: u64,
    missed: u64,
}

/// The part of a log event a subscriber reads.
#[derive(Deserialize)]
struct Delivered {
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Subscribers, connected and reading.
pub struct TailWatch {
    subscribers: u32,
    filter: TailFilter,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<Tally>>,
}

impl TailWatch {
    /// Connects `subscribers` to the api at `url`, each sending `api_key`; returns once
    /// every one is subscribed.
    pub async fn start(
        url: &str,
        api_key: Option<&str>,
        subscribers: u32,
        filter: TailFilter,
    ) -> Result<Self> {
        let client = crate::http_client()?;
        let connection = Connection {
            url: url.to_owned(),
            api_key: api_key.map(str::to_owned),
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for subscriber in 0..subscribers {
            let answer = request(
                &client,
                &connection,
                reqwest::Method::GET,
                "/api/logs/tail",
                &filter.params(subscriber),
            )?
            .send()
            .await?;
            if !answer.status().is_success() {
                bail!(
                    "subscriber {subscriber} was refused: {} {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                );
            }
            tasks.spawn(read(SseReader::new(answer), stopped.clone()));
        }
        Ok(Self {
            subscribers,
            filter,
            stop,
            tasks,
        })
    }

    /// Stops the subscribers and adds up what they saw.
    pub async fn finish(mut self) -> Result<TailFigures> {
        self.stop.send_replace(true);
        let mut latency = Histogram::<u64>::new(3)?;
        let (mut delivered, mut missed) = (0, 0);
        while let Some(tally) = self.tasks.join_next().await {
            let tally = tally??;
            latency.add(&tally.latency)?;
            delivered += tally.delivered;
            missed += tally.missed;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Ok(TailFigures {
            subscribers: self.subscribers,
            filter: self.filter,
            delivered,
            missed,
            p50_ms: ms(latency.value_at_quantile(0.5)),
            p99_ms: ms(latency.value_at_quantile(0.99)),
            max_ms: ms(latency.max()),
        })
    }
}

/// Reads one subscriber's events until told to stop.
async fn read(mut events: SseReader, mut stopped: watch::Receiver<bool>) -> Result<Tally> {
    let mut tally = Tally {
        latency: Histogram::new(3)?,
        delivered: 0,
        missed: 0,
    };
    loop {
        let event = tokio::select! {
            event = events.next() => event?,
            _ = stopped.wait_for(|stop| *stop) => return Ok(tally),
        };
        let Some((name, data)) = event else {
            bail!("the api ended a tail during the run");
        };
        match name.as_str() {
            "log" => {
                let log: Delivered = serde_json::from_str(&data)?;
                let took = OffsetDateTime::now_utc() - log.created_at;
                let micros = u64::try_from(took.whole_microseconds()).unwrap_or(0);
                tally.latency.record(micros)?;
                tally.delivered += 1;
            }
            "missed" => tally.missed += data.trim().parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
}

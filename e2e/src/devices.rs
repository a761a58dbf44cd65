//! Simulated devices that send logs to the api, the way the seed's stress test did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use serde::Deserialize;
use serde_json::{Value, json};

/// How a fleet of devices sends its logs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Marks every log (`log_data.run`), to find them again.
    pub run: String,
    /// Devices sending at once, each one request at a time.
    pub devices: usize,
    /// Logs each device sends one per request, to `POST /api/log`.
    pub single_logs_per_device: usize,
    /// Requests each device sends to `POST /api/logs/batch`.
    pub batches_per_device: usize,
    /// Logs per batch request.
    pub batch_size: usize,
}

impl Plan {
    /// Logs the plan sends in all.
    pub fn total_logs(&self) -> usize {
        self.devices * (self.single_logs_per_device + self.batches_per_device * self.batch_size)
    }
}

/// What the api answered.
#[derive(Debug, Default)]
pub struct Sent {
    /// The ids of every accepted log.
    pub message_ids: Vec<String>,
    /// Requests sent.
    pub requests: usize,
}

#[derive(Deserialize)]
struct Accepted {
    message_id: Option<String>,
    message_ids: Option<Vec<String>>,
}

/// The log a device sends as its `seq`-th.
pub fn log(run: &str, device: usize, seq: usize) -> Value {
    const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
    json!({
        "device_id": format!("device-{device:03}"),
        "log_level": LEVELS[seq % LEVELS.len()],
        "message": format!("{run} device-{device:03} log {seq}"),
        "log_data": {"run": run, "device": device, "seq": seq},
    })
}

/// Sends the plan's logs with one task per device; fails on the first answer that is
/// not 200.
pub async fn send(client: &reqwest::Client, base_url: &str, plan: &Plan) -> Result<Sent> {
    let devices = (0..plan.devices).map(|device| send_as(client, base_url, plan, device));
    let mut sent = Sent::default();
    for device in try_join_all(devices).await? {
        sent.message_ids.extend(device.message_ids);
        sent.requests += device.requests;
    }
    Ok(sent)
}

async fn send_as(
    client: &reqwest::Client,
    base_url: &str,
    plan: &Plan,
    device: usize,
) -> Result<Sent> {
    let mut sent = Sent::default();
    let mut seq = 0;
    // Alternate single logs and batches, so both endpoints are busy throughout.
    let (mut singles, mut batches) = (plan.single_logs_per_device, plan.batches_per_device);
    while singles > 0 || batches > 0 {
        let (path, body, count) = if singles >= batches * plan.batch_size.max(1) && singles > 0 {
            singles -= 1;
            ("/api/log", log(&plan.run, device, seq), 1)
        } else {
            batches -= 1;
            let logs: Vec<Value> = (seq..seq + plan.batch_size)
                .map(|s| log(&plan.run, device, s))
                .collect();
            ("/api/logs/batch", json!({ "logs": logs }), plan.batch_size)
        };
        seq += count;
        let response = client
            .post(format!("{base_url}{path}"))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let accepted: Accepted = response.json().await?;
        match (accepted.message_id, accepted.message_ids) {
            (Some(id), _) => sent.message_ids.push(id),
            (_, Some(ids)) => sent.message_ids.extend(ids),
            _ => None.context("the answer has no message ids")?,
        }
        sent.requests += 1;
    }
    Ok(sent)
}

/// How sending until told to stop went.
#[derive(Debug, Default)]
pub struct Continuous {
    /// The ids of every accepted log.
    pub message_ids: Vec<String>,
    /// Requests answered 200.
    pub accepted: usize,
    /// Answers other than 200, by status; 503s were retried after their Retry-After.
    pub refused: BTreeMap<u16, usize>,
    /// Requests that got no answer (a connection failed, a timeout), with the error.
    /// They are not retried: whether they landed is unknown.
    pub failed: Vec<String>,
}

/// What a test shares with devices that send in the background: when to stop, and how
/// many requests were answered 200 so far, so that the test waits for progress rather
/// than for a time.
#[derive(Debug, Default)]
pub struct Flow {
    stop: AtomicBool,
    accepted: AtomicUsize,
}

impl Flow {
    /// Tells the devices to stop after their request in flight.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the devices were told to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Requests answered 200 so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Sends logs of run `run` as `devices` devices at once, `logs_per_request` logs per
/// request (1 to `POST /api/log`, more to `/api/logs/batch`), each device pausing
/// `pause` after each answer, until `flow` is stopped. A 503 is a refusal: the same logs
/// are sent again after the answer's Retry-After, until `flow` is stopped.
pub async fn send_until(
    client: &reqwest::Client,
    base_url: &str,
    run: &str,
    devices: usize,
    logs_per_request: usize,
    pause: Duration,
    flow: &Flow,
) -> Continuous {
    let device = |device: usize| async move {
        let mut sent = Continuous::default();
        let mut seq = 0;
        while !flow.stopped() {
            let (path, body) = if logs_per_request == 1 {
                ("/api/log", log(run, device, seq))
            } else {
                let logs: Vec<Value> = (seq..seq + logs_per_request)
                    .map(|s| log(run, device, s))
                    .collect();
                ("/api/logs/batch", json!({ "logs": logs }))
            };
            loop {
                let answer = client
                    .post(format!("{base_url}{path}"))
                    .json(&body)
                    .send()
                    .await;
                let response = match answer {
                    Ok(response) => response,
                    Err(error) => {
                        sent.failed.push(format!("{path}: {error:?}"));
                        break;
                    }
                };
                let status = response.status().as_u16();
                if status == 200 {
                    match response.json::<Accepted>().await {
                        Ok(Accepted {
                            message_id: Some(id),
                            ..
                        }) => sent.message_ids.push(id),
                        Ok(Accepted {
                            message_ids: Some(ids),
                            ..
                        }) => sent.message_ids.extend(ids),
                        Ok(_) => sent.failed.push(format!("{path}: an answer without ids")),
                        Err(error) => sent.failed.push(format!("{path}: {error:?}")),
                    }
                    sent.accepted += 1;
                    flow.accepted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                *sent.refused.entry(status).or_default() += 1;
                if status != 503 || flow.stopped() {
                    break;
                }
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
            }
            seq += logs_per_request;
            tokio::time::sleep(pause).await;
        }
        sent
    };
    let mut all = Continuous::default();
    for sent in futures::future::join_all((0..devices).map(device)).await {
        all.message_ids.extend(sent.message_ids);
        all.accepted += sent.accepted;
        for (status, count) in sent.refused {
            *all.refused.entry(status).or_default() += count;
        }
        all.failed.extend(sent.failed);
    }
    all
}

/// What PostgreSQL holds of a run's logs, against the ids the api accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Logs accepted (ids the api answered).
    pub accepted: usize,
    /// Rows of the run.
    pub rows: usize,
    /// Rows whose `message_id` another row of the run has too.
    pub duplicate_ids: usize,
    /// Rows whose message another row of the run has too (the same log stored twice).
    pub duplicate_messages: usize,
    /// Accepted ids with no row.
    pub missing: usize,
    /// Rows whose id was never accepted.
    pub unexpected: usize,
}

impl Stored {
    /// Every accepted log is stored, once, and nothing else.
    pub fn exactly_once(&self) -> bool {
        self.rows == self.accepted
            && self.duplicate_ids == 0
            && self.duplicate_messages == 0
            && self.missing == 0
            && self.unexpected == 0
    }
}

/// Compares the stored logs of run `run` (`log_data.run`), rows and chunks, with the
/// `accepted` ids.
pub async fn stored(pool: &sqlx::PgPool, run: &str, accepted: &[String]) -> Result<Stored> {
    use std::collections::HashSet;
    let rows = crate::stored::of_run(pool, run).await?;
    let ids: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let messages: HashSet<&str> = rows.iter().map(|(_, message)| message.as_str()).collect();
    let accepted_ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    Ok(Stored {
        accepted: accepted.len(),
        rows: rows.len(),
        duplicate_ids: rows.len() - ids.len(),
        duplicate_messages: rows.len() - messages.len(),
        missing: accepted_ids.difference(&ids).count(),
        unexpected: ids.difference(&accepted_ids).count(),
    })
}

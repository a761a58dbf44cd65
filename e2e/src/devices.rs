//! Simulated devices that send logs to the api, the way the seed's stress test did.

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

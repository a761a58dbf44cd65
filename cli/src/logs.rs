//! `logpipeline logs search|tail|send`: finding, following and sending logs through a
//! LogPipeline api, for people (a line per log) and for `jq` (`--json`, a JSON line per
//! log). The api's URL and key come from flags or `LOGPIPELINE_URL` and
//! `LOGPIPELINE_API_KEY`.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};

/// Where the api is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The api's base URL.
    #[arg(long, env = "LOGPIPELINE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key (sent as `Authorization: Bearer <key>`); none for an api without
    /// authentication.
    #[arg(long, env = "LOGPIPELINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The filters search and tail share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Only this device's logs.
    #[arg(long)]
    pub device: Option<String>,
    /// Only this service's logs.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this trace's logs.
    #[arg(long)]
    pub trace: Option<String>,
    /// Only these levels (repeatable, or comma-separated).
    #[arg(long)]
    pub level: Vec<String>,
    /// Print each log as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Words and "quoted phrases" the message must all hold.
    pub query: Vec<String>,
}

impl Filters {
    fn params(&self) -> Vec<(String, String)> {
        let mut params = Vec::new();
        let mut add = |name: &str, value: &str| params.push((name.to_owned(), value.to_owned()));
        if let Some(device) = &self.device {
            add("device_id", device);
        }
        if let Some(service) = &self.service {
            add("service_name", service);
        }
        if let Some(trace) = &self.trace {
            add("trace_id", trace);
        }
        for level in &self.level {
            add("level", level);
        }
        if !self.query.is_empty() {
            add("q", &self.query.join(" "));
        }
        params
    }
}

/// `logs` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Logs {
    /// Searches the tenant's logs (`GET /api/logs`), newest first.
    Search {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
        /// A field of log_data: `path=value`, or `path=>N`, `>=N`, `<N`, `<=N`
        /// (repeatable), e.g. `--data firmware=2.4.1 --data motor.rpm=>=1200`.
        #[arg(long = "data", value_name = "PATH=VALUE")]
        fields: Vec<String>,
        /// From this time (RFC 3339); default an hour before `--until`.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339); default now.
        #[arg(long)]
        until: Option<String>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
        /// At most this many logs, over as many pages as it takes.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Follows the tenant's logs live as they are accepted (`GET /api/logs/tail`), until
    /// Ctrl-C.
    Tail {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
    },
    /// Sends a log, or with `--stdin` one log per line of standard input (JSON objects
    /// as the api takes them), in batches.
    Send {
        #[command(flatten)]
        connection: Connection,
        /// The device.
        #[arg(long, required_unless_present = "stdin")]
        device: Option<String>,
        /// The level.
        #[arg(long, default_value = "INFO")]
        level: String,
        /// The service that writes it.
        #[arg(long)]
        service: Option<String>,
        /// log_data, as a JSON object.
        #[arg(long, value_parser = parse_object)]
        data: Option<Value>,
        /// Read JSON logs from standard input, one per line.
        #[arg(long, conflicts_with_all = ["device", "service", "data", "message"])]
        stdin: bool,
        /// The message.
        #[arg(required_unless_present = "stdin")]
        message: Option<String>,
    },
}

fn parse_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("log_data must be a JSON object".to_owned()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// Runs a `logs` command; what it prints goes to `out`.
pub async fn run(command: Logs, out: &mut impl Write) -> Result<()> {
    match command {
        Logs::Search {
            connection,
            filters,
            fields,
            since,
            until,
            oldest_first,
            limit,
        } => {
            let mut params = filters.params();
            for field in &fields {
                let (path, value) = field
                    .split_once('=')
                    .with_context(|| format!("--data {field}: expected PATH=VALUE"))?;
                params.push((format!("data.{path}"), value.to_owned()));
            }
            params.extend(since.map(|since| ("since".to_owned(), since)));
            params.extend(until.map(|until| ("until".to_owned(), until)));
            if oldest_first {
                params.push(("order".to_owned(), "oldest".to_owned()));
            }
            search(&connection, params, limit, filters.json, out).await
        }
        Logs::Tail {
            connection,
            filters,
        } => tail(&connection, filters.params(), filters.json, out).await,
        Logs::Send {
            connection,
            device,
            level,
            service,
            data,
            stdin,
            message,
        } => {
            let logs = if stdin {
                let mut logs = Vec::new();
                for (number, line) in std::io::stdin().lock().lines().enumerate() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    logs.push(
                        serde_json::from_str::<Value>(&line)
                            .with_context(|| format!("line {}: not JSON", number + 1))?,
                    );
                }
                logs
            } else {
                let mut log = json!({
                    "device_id": device,
                    "log_level": level,
                    "message": message,
                });
                if let Some(service) = service {
                    log["service_name"] = json!(service);
                }
                if let Some(data) = data {
                    log["log_data"] = data;
                }
                vec![log]
            };
            send(&connection, &logs, out).await
        }
    }
}

pub(crate) fn request(
    client: &reqwest::Client,
    connection: &Connection,
    method: reqwest::Method,
    path: &str,
    params: &[(String, String)],
) -> Result<reqwest::RequestBuilder> {
    let mut url = reqwest::Url::parse(&format!("{}{path}", connection.url.trim_end_matches('/')))
        .with_context(|| format!("--url {}", connection.url))?;
    if !params.is_empty() {
        url.query_pairs_mut().extend_pairs(params);
    }
    let request = client.request(method, url);
    Ok(match &connection.api_key {
        Some(key) => request.bearer_auth(key),
        None => request,
    })
}

/// The api's error answer as an error.
async fn refused(answer: reqwest::Response) -> anyhow::Error {
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    match body["detail"].as_str() {
        Some(detail) => anyhow::anyhow!("{status}: {detail}"),
        None => anyhow::anyhow!("{status}"),
    }
}

async fn search(
    connection: &Connection,
    mut params: Vec<(String, String)>,
    limit: usize,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let client = crate::http_client()?;
    let mut printed = 0;
    params.push(("limit".to_owned(), limit.clamp(1, 1000).to_string()));
    loop {
        let answer = request(
            &client,
            connection,
            reqwest::Method::GET,
            "/api/logs",
            &params,
        )?
        .send()
        .await
        .with_context(|| format!("asking {}", connection.url))?;
        if !answer.status().is_success() {
            return Err(refused(answer).await);
        }
        let page: Value = answer.json().await?;
        for log in page["data"].as_array().into_iter().flatten() {
            if printed == limit {
                return Ok(());
            }
            print_log(log, json, out)?;
            printed += 1;
        }
        match page["next"].as_str() {
            Some(next) if printed < limit => {
                params.retain(|(name, _)| name != "cursor");
                params.push(("cursor".to_owned(), next.to_owned()));
            }
            _ => return Ok(()),
        }
    }
}

async fn tail(
    connection: &Connection,
    params: Vec<(String, String)>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let client = crate::http_client()?;
    let answer = request(
        &client,
        connection,
        reqwest::Method::GET,
        "/api/logs/tail",
        &params,
    )?
    .send()
    .await
    .with_context(|| format!("asking {}", connection.url))?;
    if !answer.status().is_success() {
        return Err(refused(answer).await);
    }
    let mut events = SseReader::new(answer);
    while let Some((event, data)) = events.next().await? {
        match event.as_str() {
            "log" => print_log(&serde_json::from_str(&data)?, json, out)?,
            "missed" => {
                eprintln!("logpipeline: {data} logs went by unread (the tail fell behind)")
            }
            _ => {}
        }
        out.flush()?;
    }
    bail!("the api ended the tail (shutting down?)")
}

/// The events of a Server-Sent Events answer, one at a time.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    /// Bytes read and not yet split into events: a chunk may end inside a character.
    buffer: Vec<u8>,
}

impl SseReader {
    /// Reads the events of `answer`.
    pub fn new(answer: reqwest::Response) -> Self {
        Self {
            body: Box::pin(answer.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next event's name and data, keep-alives skipped, or None when the answer
    /// ends.
    pub async fn next(&mut self) -> Result<Option<(String, String)>> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let (event, data) = sse_event(&block);
                // A keep-alive is a comment alone: no event.
                if !event.is_empty() || !data.is_empty() {
                    return Ok(Some((event.to_owned(), data)));
                }
                continue;
            }
            match self.body.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }
}

/// The event name and data of one Server-Sent Events block.
fn sse_event(block: &str) -> (&str, String) {
    let mut event = "";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim();
        } else if let Some(text) = line.strip_prefix("data:") {
            data.push_str(text.strip_prefix(' ').unwrap_or(text));
        }
    }
    (event, data)
}

async fn send(connection: &Connection, logs: &[Value], out: &mut impl Write) -> Result<()> {
    let client = crate::http_client()?;
    for batch in logs.chunks(500) {
        let answer = request(
            &client,
            connection,
            reqwest::Method::POST,
            "/api/logs/batch",
            &[],
        )?
        .json(&json!({ "logs": batch }))
        .send()
        .await
        .with_context(|| format!("sending to {}", connection.url))?;
        if !answer.status().is_success() {
            return Err(refused(answer).await);
        }
        let accepted: Value = answer.json().await?;
        for id in accepted["message_ids"].as_array().into_iter().flatten() {
            writeln!(out, "{}", id.as_str().unwrap_or_default())?;
        }
    }
    Ok(())
}

/// One log as a line: time, level, device (and service), message, log_data; or as JSON.
fn print_log(log: &Value, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        writeln!(out, "{log}")?;
        return Ok(());
    }
    let text = |name: &str| log[name].as_str().unwrap_or("-").to_owned();
    let mut source = text("device_id");
    if let Some(service) = log["service_name"].as_str() {
        source = format!("{source}/{service}");
    }
    let data = match &log["log_data"] {
        Value::Null => String::new(),
        data => format!(" {data}"),
    };
    writeln!(
        out,
        "{} {:<8} {source}  {}{data}",
        text("created_at"),
        text("log_level"),
        text("message")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_prints_as_one_line_or_as_json() {
        let log = json!({
            "created_at": "2026-12-06T02:00:00Z", "log_level": "ERROR", "device_id": "pump-7",
            "service_name": "pumpd", "message": "pressure high", "log_data": {"bar": 9},
        });
        let mut out = Vec::new();
        print_log(&log, false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-06T02:00:00Z ERROR    pump-7/pumpd  pressure high {\"bar\":9}\n"
        );
        let mut out = Vec::new();
        print_log(&log, true, &mut out).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            log,
            "one JSON line"
        );
    }

    #[test]
    fn sse_blocks_give_their_event_and_data() {
        assert_eq!(
            sse_event("event: missed\ndata: 12\n\n"),
            ("missed", "12".to_owned())
        );
        assert_eq!(sse_event(": keep-alive\n\n").0, "");
    }

    #[test]
    fn filters_become_the_apis_parameters() {
        let filters = Filters {
            device: Some("pump-7".into()),
            level: vec!["ERROR".into()],
            query: vec!["pressure".into(), "\"valve 3\"".into()],
            ..Filters::default()
        };
        assert_eq!(
            filters.params(),
            [
                ("device_id".to_owned(), "pump-7".to_owned()),
                ("level".to_owned(), "ERROR".to_owned()),
                ("q".to_owned(), "pressure \"valve 3\"".to_owned()),
            ]
        );
    }
}

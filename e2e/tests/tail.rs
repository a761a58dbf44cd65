//! Live tail (`GET /api/logs/tail`, Server-Sent Events) on a real stack: a subscriber
//! gets exactly its tenant's logs that match its filter, in the order they were
//! accepted, with the ids the api answered; one that does not read is told how many logs
//! it missed, and holds up nobody; past the subscriber limit, 10,000 at once get a 429
//! and leave the api healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use futures::StreamExt;
use logpipeline::logs::SseReader;
use logpipeline_e2e::stack::Stack;
use logpipeline_local::auth::ApiKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The events of one subscription.
struct Subscription(SseReader);

impl Subscription {
    async fn open(client: &reqwest::Client, url: &str, key: &ApiKey) -> Self {
        let answer = client
            .get(url)
            .header("x-api-key", &key.secret)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["content-type"], "text/event-stream");
        Self(SseReader::new(answer))
    }

    /// The next event other than a keep-alive: (event, data).
    async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(Duration::from_secs(60), self.0.next())
            .await
            .expect("no event within 60 s")
            .unwrap()
            .expect("the stream ended")
    }

    /// The next `log` event's log.
    async fn next_log(&mut self) -> Value {
        let (event, data) = self.next().await;
        assert_eq!(event, "log", "{data}");
        serde_json::from_str(&data).unwrap()
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn of(stack: &Stack) -> Self {
        Self {
            client: logpipeline_e2e::http_client(|builder| builder).unwrap(),
            base: stack.api_url().unwrap(),
        }
    }

    async fn assert_healthy(&self) {
        let health = self
            .client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }

    /// Posts `logs` as one batch with `key`; the ids answered.
    async fn send(&self, key: &ApiKey, logs: &[Value]) -> Vec<String> {
        let answer = self
            .client
            .post(format!("{}/api/logs/batch", self.base))
            .header("x-api-key", &key.secret)
            .json(&json!({ "logs": logs }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        body["message_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }
}

fn log(device: &str, level: &str, message: &str) -> Value {
    json!({"device_id": device, "log_level": level, "message": message, "log_data": {"m": message}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_their_tenants_matching_logs_live_and_a_slow_one_is_told_what_it_missed() {
    let acme = ApiKey::new("acme", "console", &["write", "read"]);
    let globex = ApiKey::new("globex", "console", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&acme, &globex])
        .start()
        .unwrap();
    let api = Api::of(&stack);
    let tail = format!("{}/api/logs/tail", api.base);
    let mut pump7 = Subscription::open(
        &api.client,
        &format!("{tail}?device_id=pump-7&level=ERROR,CRITICAL"),
        &acme,
    )
    .await;
    let mut globex_all = Subscription::open(&api.client, &tail, &globex).await;
    // Subscribes and never reads until the end.
    let mut sleeper = Subscription::open(&api.client, &tail, &acme).await;

    // Acme's pumps and globex's, mixed, sent once the subscriptions' answers began:
    // pump-7's errors reach its subscriber, all of them and in order, with the ids the api
    // answered; globex's subscriber sees only globex's.
    let mut expected = Vec::new();
    let mut globex_expected = Vec::new();
    for batch in 0..20 {
        let logs: Vec<Value> = (0..10)
            .map(|n| {
                let device = if n % 2 == 0 { "pump-7" } else { "pump-8" };
                let level = ["ERROR", "INFO", "CRITICAL"][n % 3];
                log(device, level, &format!("batch {batch} log {n}"))
            })
            .collect();
        let ids = api.send(&acme, &logs).await;
        for (log, id) in logs.iter().zip(ids) {
            if log["device_id"] == "pump-7" && log["log_level"] != "INFO" {
                expected.push((id, log["message"].clone()));
            }
        }
        let ids = api
            .send(
                &globex,
                &[log("pump-7", "ERROR", &format!("globex {batch}"))],
            )
            .await;
        globex_expected.push(ids[0].clone());
    }
    for (id, message) in &expected {
        let got = pump7.next_log().await;
        assert_eq!((&got["message_id"], &got["message"]), (&json!(id), message));
        assert_eq!(got["device_id"], "pump-7");
        assert_eq!(got["log_data"]["m"], *message);
    }
    for id in &globex_expected {
        let got = globex_all.next_log().await;
        assert_eq!(got["message_id"], id.as_str(), "{got}");
        assert!(
            got["message"].as_str().unwrap().starts_with("globex"),
            "{got}"
        );
    }
    println!(
        "{} logs of pump-7 and {} of globex arrived live, in order",
        expected.len(),
        globex_expected.len()
    );

    // 40,000 more logs go by while the sleeper reads nothing: more than the ring holds.
    let many: Vec<Value> = (0..500)
        .map(|n| log("pump-1", "INFO", &format!("flood {n}")))
        .collect();
    for _ in 0..80 {
        api.send(&acme, &many).await;
    }
    let last = api
        .send(&acme, &[log("pump-7", "ERROR", "after the flood")])
        .await;
    // The reading subscriber was not held up by the sleeper.
    assert_eq!(pump7.next_log().await["message_id"], last[0].as_str());
    let mut missed = 0;
    let mut events = 0;
    while missed == 0 {
        let (event, data) = sleeper.next().await;
        events += 1;
        if event == "missed" {
            missed = data.parse::<u64>().unwrap();
        }
    }
    println!("the sleeper read {events} events, then was told it missed {missed} logs");
    assert!(missed > 0);
    api.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribers_at_once_get_the_limit_and_429s_and_the_api_stays_healthy() {
    // Each held subscription is a socket here and one in the api (which inherits the
    // limit): raise this process's soft limit of open files to its hard one.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4096,
        "1,000 subscriptions need more open files than the hard limit of {hard}"
    );
    let key = ApiKey::new("acme", "console", &["write", "read"]);
    // 10,000 subscribers stand for many clients: the per-address connection limit,
    // which would close most of them from this one address first, is lifted.
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&key])
        .api_env("LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS", 20_000)
        .api_env("LOGPIPELINE_MAX_CONNECTIONS", 20_000)
        .start()
        .unwrap();
    let api = Api::of(&stack);
    let tail = format!("{}/api/logs/tail?device_id=pump-7", api.base);

    let answers: Vec<reqwest::Response> = futures::stream::iter(0..10_000)
        .map(|_| {
            api.client
                .get(&tail)
                .header("x-api-key", &key.secret)
                .send()
        })
        .buffer_unordered(256)
        .map(Result::unwrap)
        .collect()
        .await;
    let (mut held, refused): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|answer| answer.status() == StatusCode::OK);
    assert_eq!(held.len(), 1000, "the default limit holds");
    assert_eq!(refused.len(), 9000);
    for answer in refused {
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "tail_full", "{body}");
    }

    // The api goes on: it answers, accepts, and the held subscribers get their logs.
    api.assert_healthy().await;
    let mut first = Subscription(SseReader::new(held.remove(0)));
    let mut last = Subscription(SseReader::new(held.pop().unwrap()));
    let marker = api.send(&key, &[log("pump-7", "ERROR", "marker")]).await;
    assert_eq!(first.next_log().await["message_id"], marker[0].as_str());
    assert_eq!(last.next_log().await["message_id"], marker[0].as_str());

    // Once they go, others may subscribe: the api lets go of a subscription when its
    // client does (noticed at its next write, which a log sent makes).
    drop((held, first, last));
    let mut subscribed = false;
    for round in 0..600 {
        api.send(&key, &[log("pump-7", "INFO", &format!("closing {round}"))])
            .await;
        let answer = api
            .client
            .get(&tail)
            .header("x-api-key", &key.secret)
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::OK {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(subscribed, "no subscription was let go");
}

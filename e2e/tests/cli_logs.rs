//! `logpipeline logs send|search|tail` against a real stack with API keys: what the
//! command sends is what it finds and what it follows, with the key from the
//! environment.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use logpipeline_e2e::stack::{Stack, wait_for_count};
use logpipeline_local::auth::ApiKey;
use logpipeline_local::services::binaries_dir;
use serde_json::Value;

/// `logpipeline logs <args>` for `stack` with `key`, `stdin` on its standard input;
/// what it printed, or the failure with its standard error.
fn logs(base: &str, key: &ApiKey, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(binaries_dir().unwrap().join("logpipeline"))
        .arg("logs")
        .args(args)
        .env("LOGPIPELINE_URL", base)
        .env("LOGPIPELINE_API_KEY", &key.secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "logpipeline logs {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_sends_finds_and_follows_logs_with_the_key_of_the_environment() {
    let key = ApiKey::new("acme", "operator", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&key])
        .start()
        .unwrap();
    let base = stack.api_url().unwrap();

    let one = logs(
        &base,
        &key,
        &[
            "send",
            "--device",
            "pump-7",
            "--level",
            "ERROR",
            "--data",
            r#"{"bar": 9}"#,
            "pressure high on valve 3",
        ],
        "",
    );
    let lines = "{\"device_id\":\"pump-8\",\"log_level\":\"INFO\",\"message\":\"pressure normal\",\"log_data\":{\"bar\":2}}\n\
                 {\"device_id\":\"pump-8\",\"log_level\":\"WARNING\",\"message\":\"valve 3 sticky\"}\n";
    let more = logs(&base, &key, &["send", "--stdin"], lines);
    let ids: Vec<&str> = one.lines().chain(more.lines()).collect();
    assert_eq!(ids.len(), 3, "{one}{more}");
    let pool = stack.pool().await.unwrap();
    wait_for_count(
        &pool,
        "select count(*) from logs",
        3,
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    let found = logs(&base, &key, &["search", "--json", "pressure"], "");
    let found: Vec<Value> = found
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let found_ids: Vec<&str> = found
        .iter()
        .map(|log| log["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(found_ids, [ids[1], ids[0]], "newest first");
    let numeric = logs(&base, &key, &["search", "--data", "bar=>=5"], "");
    assert_eq!(numeric.lines().count(), 1, "{numeric}");
    assert!(
        numeric.contains(" ERROR    pump-7  pressure high on valve 3 {\"bar\":9}"),
        "{numeric}"
    );
    let phrase = logs(
        &base,
        &key,
        &["search", "--oldest-first", "\"valve 3\""],
        "",
    );
    assert_eq!(phrase.lines().count(), 2, "{phrase}");
    assert!(
        phrase.lines().next().unwrap().contains("pump-7"),
        "{phrase}"
    );

    // Follows pump-9's logs: sent until the first arrives (the tail starts from now).
    let mut tail = Command::new(binaries_dir().unwrap().join("logpipeline"))
        .args(["logs", "tail", "--json", "--device", "pump-9"])
        .env("LOGPIPELINE_URL", &base)
        .env("LOGPIPELINE_API_KEY", &key.secret)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (lines, followed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = None;
    for round in 0..600 {
        let sent = logs(
            &base,
            &key,
            &["send", "--device", "pump-9", &format!("live {round}")],
            "",
        );
        logs(
            &base,
            &key,
            &["send", "--device", "pump-1", "not followed"],
            "",
        );
        if let Ok(line) = followed.recv_timeout(Duration::from_millis(100)) {
            seen = Some((sent, line));
            break;
        }
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
    let (_, line) = seen.expect("the tail printed nothing");
    let log: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["device_id"], "pump-9", "{line}");
    assert!(
        log["message"].as_str().unwrap().starts_with("live "),
        "{line}"
    );
}

//! The log explorer at `/ui`, in a real Chromium against a real stack: it asks for a key,
//! shows exactly what the API returns for a search, expands a log, zooms by dragging on
//! the histogram, follows new logs live, shows the API's own error for a bad query, shows
//! hostile logs as text without running any of them, and shows a tenant only its own.
//! Each main state is saved as a screenshot in `target/explorer-screenshots`, and no browser
//! process outlives its test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use logpipeline_e2e::browser::Browser;
use logpipeline_e2e::stack::{Stack, wait_for_count, wait_for_schema};
use logpipeline_local::auth::ApiKey;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What a row of the results shows: time (its title), level, source, message.
const ROWS: &str = "[...document.querySelectorAll('#results .row')].map((row) => [
    row.querySelector('.toggle').title, row.querySelector('.level').textContent,
    row.querySelector('.source').textContent, row.querySelector('.message').textContent])";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, key: &ApiKey, path: &str) -> Value {
        let answer = self
            .client
            .get(format!("{}{path}", self.base))
            .header("x-api-key", &key.secret)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        answer.json().await.unwrap()
    }

    async fn send(&self, key: &ApiKey, logs: Vec<Value>) {
        let answer = self
            .client
            .post(format!("{}/api/logs/batch", self.base))
            .header("x-api-key", &key.secret)
            .json(&json!({ "logs": logs }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }

    /// The rows the explorer should show for search `query`: what the API returns, as
    /// the explorer writes them.
    async fn expected_rows(&self, key: &ApiKey, query: &str) -> Value {
        let page = self.get(key, &format!("/api/logs?{query}&limit=200")).await;
        let rows: Vec<Value> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|log| {
                let mut source = log["device_id"].as_str().unwrap().to_owned();
                if let Some(service) = log["service_name"].as_str() {
                    source = format!("{source} · {service}");
                }
                json!([
                    log["created_at"],
                    log["log_level"],
                    source,
                    log["message"].as_str().unwrap_or_default()
                ])
            })
            .collect();
        Value::Array(rows)
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Acme's logs to explore: levels, devices, services, messages and fields of every kind.
fn acme_logs(round: usize) -> Vec<Value> {
    let messages = [
        "pressure high on valve 3",
        "valve 7 closed",
        "temperature nominal",
        "Überdruck im Ventil 3",
        "motor stopped",
    ];
    let levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
    (0..40)
        .map(|i| {
            let n = round * 40 + i;
            json!({
                "device_id": format!("pump-{}", n % 4),
                "log_level": levels[n % levels.len()],
                "message": messages[n % messages.len()],
                "service_name": if n.is_multiple_of(3) { Some("checkout") } else { None },
                "trace_id": format!("trace-{}", n % 7),
                "log_data": {"n": n, "firmware": if n.is_multiple_of(2) { "2.4.1" } else { "2.5.0" },
                             "motor": {"rpm": 800 + n}},
            })
        })
        .collect()
}

/// Signs the browser in with `key` through the explorer's dialog.
async fn sign_in(browser: &Browser, key: &ApiKey) {
    browser
        .until(
            "document.getElementById('key-dialog').open",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let field = browser.client.find(Locator::Id("key")).await.unwrap();
    field.send_keys(&key.secret).await.unwrap();
    browser
        .client
        .find(Locator::Css("#key-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the results show a search's outcome, then returns the rows.
async fn rows_once_shown(browser: &Browser) -> Value {
    browser
        .until(
            "/logs · \\d+ ms|live/.test(document.getElementById('status').textContent)",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    browser.eval(ROWS).await.unwrap()
}

/// Runs a new search for `query` through the query box.
async fn search_for(browser: &Browser, query: &str) {
    browser
        .eval("document.getElementById('status').textContent = ''")
        .await
        .unwrap();
    let field = browser.client.find(Locator::Id("q")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(query).await.unwrap();
    browser
        .client
        .find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_searches_expands_zooms_and_follows_as_the_api_answers() {
    let acme = ApiKey::new("acme", "console", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&acme])
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let api = Api {
        client: logpipeline_e2e::http_client(|builder| builder).unwrap(),
        base: stack.api_url().unwrap(),
    };
    for round in 0..3 {
        api.send(&acme, acme_logs(round)).await;
    }
    wait_for_count(
        &pool,
        "select count(*) from logs",
        120,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let range = format!(
        "since={}&until={}",
        encode(&rfc3339(now - time::Duration::minutes(10))),
        encode(&rfc3339(now + time::Duration::minutes(10)))
    );
    let browser = Browser::start().await.unwrap();
    let base = stack.api_url().unwrap();

    // The page asks for a key, then shows the range's logs, newest first, as the API.
    browser
        .client
        .goto(&format!("{base}/ui?range=custom&{range}"))
        .await
        .unwrap();
    browser
        .until(
            "document.getElementById('key-dialog').open",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    browser.screenshot("1-asks-for-a-key").await.unwrap();
    sign_in(&browser, &acme).await;
    let shown = rows_once_shown(&browser).await;
    assert_eq!(shown, api.expected_rows(&acme, &range).await);
    assert_eq!(shown.as_array().unwrap().len(), 120);
    browser.screenshot("2-search").await.unwrap();

    // The query box takes words and data. filters, as the API does.
    search_for(&browser, "valve data.firmware=2.4.1").await;
    let shown = rows_once_shown(&browser).await;
    let wanted = api
        .expected_rows(&acme, &format!("{range}&q=valve&data.firmware=2.4.1"))
        .await;
    assert_eq!(shown, wanted);
    assert!(!wanted.as_array().unwrap().is_empty());

    // A row expands to its log_data, trace and ids.
    let first = api
        .get(
            &acme,
            &format!("/api/logs?{range}&q=valve&data.firmware=2.4.1&limit=1"),
        )
        .await["data"][0]
        .clone();
    browser
        .client
        .find(Locator::Css("#results .row .toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .until(
            "document.querySelector('#results .details pre') !== null",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let data = browser
        .eval("document.querySelector('#results .details pre').textContent")
        .await
        .unwrap();
    let data: Value = serde_json::from_str(data.as_str().unwrap()).unwrap();
    assert_eq!(data, first["log_data"]);
    let details = browser
        .eval("document.querySelector('#results .details dl').textContent")
        .await
        .unwrap();
    let details = details.as_str().unwrap();
    for field in ["trace_id", "message_id"] {
        assert!(
            details.contains(first[field].as_str().unwrap()),
            "{details}"
        );
    }
    browser.screenshot("3-a-log-expanded").await.unwrap();

    // Clicking a device filters by it.
    browser
        .client
        .find(Locator::Css("#results .row .source .chip"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .until(
            "location.search.includes('device=')",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let shown = rows_once_shown(&browser).await;
    let device = first["device_id"].as_str().unwrap();
    assert_eq!(
        shown,
        api.expected_rows(
            &acme,
            &format!("{range}&q=valve&data.firmware=2.4.1&device_id={device}")
        )
        .await
    );

    // Dragging across the histogram narrows the range, and the results with it.
    browser
        .client
        .goto(&format!("{base}/ui?range=custom&{range}"))
        .await
        .unwrap();
    rows_once_shown(&browser).await;
    let chart = browser.client.find(Locator::Id("chart")).await.unwrap();
    let width = browser
        .eval("document.getElementById('chart').clientWidth")
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: chart,
            duration: None,
            x: -width * 0.1,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(200)),
            x: width * 0.2,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.client.perform_actions(drag).await.unwrap();
    browser
        .until(
            &format!(
                "!location.search.includes('{}')",
                encode(&rfc3339(now - time::Duration::minutes(10)))
            ),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let zoomed = browser.eval("location.search").await.unwrap();
    let params: Vec<(String, String)> =
        serde_html_form::from_str(zoomed.as_str().unwrap().trim_start_matches('?')).unwrap();
    let bound = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| OffsetDateTime::parse(value, &Rfc3339).unwrap())
            .unwrap()
    };
    let (since, until) = (bound("since"), bound("until"));
    assert!(
        since > now - time::Duration::minutes(10) && until < now + time::Duration::minutes(10),
        "{since} – {until}"
    );
    let shown = rows_once_shown(&browser).await;
    let narrowed = format!(
        "since={}&until={}",
        encode(&rfc3339(since)),
        encode(&rfc3339(until))
    );
    assert_eq!(shown, api.expected_rows(&acme, &narrowed).await);
    browser.screenshot("4-zoomed-by-dragging").await.unwrap();

    // A bad query shows the API's own words.
    search_for(&browser, "data.motor.rpm=>fast").await;
    browser
        .until(
            "!document.getElementById('error').hidden",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let error = browser
        .eval("document.getElementById('error').textContent")
        .await
        .unwrap();
    assert!(
        error.as_str().unwrap().contains("422")
            && error.as_str().unwrap().contains("compares with a number"),
        "{error}"
    );
    browser.screenshot("5-a-bad-query").await.unwrap();

    // Live: a log sent once the page follows appears, newest first, without a reload.
    browser
        .client
        .goto(&format!("{base}/ui?range=15m&live=1"))
        .await
        .unwrap();
    browser
        .until(
            "document.body.dataset.live === 'following'",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    // The keyboard reaches the query box with "/".
    browser
        .client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("/")
        .await
        .unwrap();
    assert_eq!(
        browser.eval("document.activeElement.id").await.unwrap(),
        "q"
    );
    let sent = Instant::now();
    api.send(
        &acme,
        vec![json!({"device_id": "pump-live", "log_level": "ERROR", "message": "sent while live"})],
    )
    .await;
    browser
        .until(
            "document.querySelector('#results .row .message')?.textContent === 'sent while live'",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    println!(
        "a log sent while live showed in the page {} ms after it was sent",
        sent.elapsed().as_millis()
    );
    browser.screenshot("6-live").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_shows_hostile_logs_as_text_and_each_tenant_only_its_own() {
    let acme = ApiKey::new("acme", "console", &["write", "read"]);
    let globex = ApiKey::new("globex", "console", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&acme, &globex])
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let api = Api {
        client: logpipeline_e2e::http_client(|builder| builder).unwrap(),
        base: stack.api_url().unwrap(),
    };
    // Markup and script wherever a device may put it.
    let hostile = vec![
        json!({"device_id": "<svg onload=window.__pwned=1>", "log_level": "ERROR",
               "message": "<img src=x onerror=\"window.__pwned=2\">",
               "service_name": "<iframe src=javascript:window.__pwned=3>",
               "trace_id": "\"><img/src=x/onerror=window.__pwned=4>",
               "log_data": {"<b onmouseover=window.__pwned=5>k</b>": "<img src=x onerror=window.__pwned=6>",
                            "link": "javascript:window.__pwned=7"}}),
        json!({"device_id": "pump-1", "log_level": "INFO",
               "message": "<script>window.__pwned=8</script>plain text"}),
    ];
    api.send(&acme, hostile).await;
    api.send(
        &globex,
        vec![json!({"device_id": "pump-1", "log_level": "WARNING", "message": "globex's own log"})],
    )
    .await;
    wait_for_count(
        &pool,
        "select count(*) from logs",
        3,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let range = format!(
        "since={}&until={}",
        encode(&rfc3339(now - time::Duration::minutes(10))),
        encode(&rfc3339(now + time::Duration::minutes(10)))
    );
    let browser = Browser::start().await.unwrap();
    let base = stack.api_url().unwrap();
    browser
        .client
        .goto(&format!("{base}/ui?range=custom&{range}"))
        .await
        .unwrap();
    sign_in(&browser, &acme).await;
    let shown = rows_once_shown(&browser).await;
    assert_eq!(shown, api.expected_rows(&acme, &range).await);
    // Every row expanded, every field shown: nothing ran, nothing became markup.
    browser
        .eval("[...document.querySelectorAll('#results .toggle')].forEach((toggle) => toggle.click())")
        .await
        .unwrap();
    browser
        .until(
            "document.querySelectorAll('#results .details').length === 2",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        browser.eval("window.__pwned === undefined").await.unwrap(),
        true
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#results img, #results svg, #results iframe, #results script, #results b').length")
            .await
            .unwrap(),
        0
    );
    let text = browser
        .eval("document.getElementById('results').textContent")
        .await
        .unwrap();
    let text = text.as_str().unwrap();
    for literal in [
        "<img src=x onerror=\"window.__pwned=2\">",
        "<svg onload=window.__pwned=1>",
        "<iframe src=javascript:window.__pwned=3>",
        "\"><img/src=x/onerror=window.__pwned=4>",
        "<b onmouseover=window.__pwned=5>k</b>",
        "<script>window.__pwned=8</script>plain text",
    ] {
        assert!(
            text.contains(literal),
            "{literal} is not shown as text in: {text}"
        );
    }
    browser.screenshot("7-hostile-logs-as-text").await.unwrap();

    // Another tenant's key sees its own log, and nothing of acme's.
    browser
        .client
        .find(Locator::Id("forget"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .eval("document.getElementById('status').textContent = ''")
        .await
        .unwrap();
    sign_in(&browser, &globex).await;
    let shown = rows_once_shown(&browser).await;
    assert_eq!(shown, api.expected_rows(&globex, &range).await);
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(shown[0][3], "globex's own log");
    browser.screenshot("8-another-tenant").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_browser_leaves_no_process_behind() {
    let browser = Browser::start().await.unwrap();
    browser.client.goto("about:blank").await.unwrap();
    let processes = logpipeline_local::process::descendants_of(browser.driver_pid());
    assert!(
        !processes.is_empty(),
        "chromedriver started no browser process"
    );
    drop(browser);
    // A killed process is gone from /proc once its parent (or init) has reaped it.
    logpipeline_local::process::wait_until(
        "every browser process is gone",
        Duration::from_secs(60),
        || {
            Ok(processes
                .iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()))
        },
    )
    .unwrap();
}

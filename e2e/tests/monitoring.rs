//! The dashboards and alert rules LogPipeline ships (`monitoring/`), checked the way an
//! operator relies on them: promtool's unit tests, the dashboard lint rules, the
//! generated copies, and a real Prometheus scraping a live api, worker and operator while
//! the test drives load and faults: every panel's query returns data with the labels its
//! legend names, and each fault takes its alert through pending to firing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::prometheus::{PrometheusServer, Sample, Target, promtool};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_schema};
use logpipeline_e2e::{monitoring, operator};
use logpipeline_local::kube::{self, KubeCluster, Operator, OperatorOptions, repo_root};
use logpipeline_local::services::{Env, WorkerProcess, http_get, metric_value};
use redis::AsyncCommands;
use serde_json::{Value, json};

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo_root().join("monitoring/alerts");
    promtool(&dir, &["check", "rules", "logpipeline.rules.yaml"]).unwrap();
    let printed = promtool(&dir, &["test", "rules", "logpipeline.rules.test.yaml"]).unwrap();
    println!("{printed}");
}

#[test]
fn the_dashboards_pass_the_lint_rules() {
    let dashboards = xtask::monitoring::dashboards(&repo_root()).unwrap();
    assert!(dashboards.len() >= 2, "{dashboards:?}");
    for (name, json) in dashboards {
        let dashboard: Value = serde_json::from_str(&json).unwrap();
        let problems = monitoring::lint(&dashboard);
        assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
    }
}

/// The log panels' SQL, with Grafana's macros expanded as its PostgreSQL data source
/// expands them, on a real pipeline's database: the "Recent errors" panel shows exactly
/// the newest ERROR and CRITICAL logs of the time range, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_panels_sql_finds_the_recent_errors_in_postgresql() {
    let stack = Stack::builder().api().workers(1).start().unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let levels = ["INFO", "ERROR", "WARNING", "CRITICAL", "DEBUG"];
    let logs: Vec<Value> = (0..150)
        .map(|n| {
            json!({"device_id": format!("pump-{}", n % 7), "log_level": levels[n % levels.len()],
                   "message": format!("panel log {n}"), "log_data": {"n": n}})
        })
        .collect();
    for batch in logs.chunks(10) {
        let answer = client
            .post(format!("{url}/api/logs/batch"))
            .json(&json!({ "logs": batch }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let pool = stack.pool().await.unwrap();
    logpipeline_e2e::stack::wait_for_count(
        &pool,
        "select count(*) from logs",
        150,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let format = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (format(now - time::Duration::HOUR), format(now));
    let mut checked = 0;
    for (name, json) in xtask::monitoring::dashboards(&repo_root()).unwrap() {
        let dashboard: Value = serde_json::from_str(&json).unwrap();
        for (title, sql) in monitoring::sql_targets(&dashboard) {
            let expanded = monitoring::expand_sql_macros(&sql, &from, &to);
            let rows: Vec<(time::OffsetDateTime, String, String, String, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(expanded.clone()))
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|error| panic!("{name} {title:?}: {error}\n{expanded}"));
            // 60 of the 150 logs are errors or critical: every one, newest first.
            let messages: Vec<&str> = rows.iter().map(|row| row.4.as_str()).collect();
            let mut expected: Vec<String> = (0..150)
                .filter(|n| matches!(levels[n % levels.len()], "ERROR" | "CRITICAL"))
                .map(|n| format!("panel log {n}"))
                .collect();
            expected.reverse();
            assert_eq!(messages, expected, "{name} {title:?}");
            assert!(rows.windows(2).all(|pair| pair[0].0 >= pair[1].0));
            assert!(
                rows.iter()
                    .all(|row| row.1 == "default" && row.2.starts_with("pump-"))
            );
            // The hour before holds none of them.
            let earlier =
                monitoring::expand_sql_macros(&sql, &format(now - time::Duration::HOUR * 2), &from);
            let none: Vec<(time::OffsetDateTime,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select time from ({earlier}) panel"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(none.is_empty(), "{name} {title:?}: {none:?}");
            println!("{name} {title:?}: {} rows", rows.len());
            checked += 1;
        }
    }
    assert_eq!(checked, 1, "the overview's recent errors");
}

/// Every alert state Prometheus has shown, by alert name, as a poller saw them.
#[derive(Clone, Default)]
struct SeenAlerts(Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>);

impl SeenAlerts {
    /// Polls Prometheus' alerts four times a second until the test ends.
    fn watch(prometheus: &PrometheusServer) -> Self {
        let seen = Self::default();
        let recorder = seen.clone();
        let url = prometheus.url();
        tokio::spawn(async move {
            let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
            loop {
                let answer = client.get(format!("{url}/api/v1/alerts")).send().await;
                if let Ok(response) = answer
                    && let Ok(body) = response.json::<Value>().await
                {
                    let mut seen = recorder.0.lock().unwrap();
                    for alert in body["data"]["alerts"].as_array().into_iter().flatten() {
                        let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
                        let state = alert["state"].as_str().unwrap_or_default();
                        seen.entry(name.to_owned())
                            .or_default()
                            .insert(state.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        seen
    }

    /// Waits until `alert` has been pending and then firing.
    async fn wait_for(&self, alert: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            let states = self
                .0
                .lock()
                .unwrap()
                .get(alert)
                .cloned()
                .unwrap_or_default();
            if states.contains("pending") && states.contains("firing") {
                println!(
                    "{alert}: pending, then firing, {:.0?} after its fault",
                    started.elapsed()
                );
                return;
            }
            if started.elapsed() > timeout {
                let seen = format!("{:?}", self.0.lock().unwrap());
                panic!("{alert} did not go pending then firing within {timeout:?}; seen: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The shipped rule file with every `for:` shortened to a few seconds, so a test sees
/// each alert go pending and then firing without waiting minutes; expressions and
/// thresholds are the shipped ones.
fn quick_rules(dir: &std::path::Path) -> PathBuf {
    let rules = std::fs::read_to_string(repo_root().join(xtask::monitoring::RULES)).unwrap();
    let mut rules: Value = serde_yaml::from_str(&rules).unwrap();
    for group in rules["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            if rule.get("alert").is_some() {
                rule["for"] = json!("3s");
            }
        }
    }
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rules).unwrap()).unwrap();
    path
}

/// A LogPipeline for the operator to watch, pointing at the stack's Redis.
fn pipeline_objects(cluster: &KubeCluster, ns: &str, redis_url: &str, database_url: &str) {
    for (name, url) in [("redis", redis_url), ("postgres", database_url)] {
        operator::secret(cluster, ns, name, url).unwrap();
    }
    let pipeline = json!({
        "apiVersion": "logpipeline.io/v1alpha1",
        "kind": "LogPipeline",
        "metadata": {"name": "logs"},
        "spec": {
            "redisSecretRef": {"name": "redis"},
            "databaseSecretRef": {"name": "postgres"},
            // What is watched here is the operator, not the api's clients.
            "auth": {"enabled": false},
            "api": {"image": "logpipeline-api:0.1.0", "replicas": 1},
            "worker": {"image": "logpipeline-worker:0.1.0", "blockMs": 500, "lagPollSecs": 1,
                       "minReplicas": 1, "maxReplicas": 4, "lagTargetPerReplica": 1000},
        },
    });
    cluster
        .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &pipeline.to_string())
        .unwrap();
}

/// A ServiceAccount that may run the operator's leader election and read pipelines and
/// Secrets, but not write what it renders: every reconcile fails.
fn crippled_operator_kubeconfig(cluster: &KubeCluster, ns: &str) -> PathBuf {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "crippled"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "crippled"},
         "rules": [
            {"apiGroups": ["logpipeline.io"], "resources": ["logpipelines"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["logpipeline.io"], "resources": ["logpipelines/status"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "crippled"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "crippled"},
         "subjects": [{"kind": "ServiceAccount", "name": "crippled", "namespace": ns}]},
    ]});
    cluster
        .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &objects.to_string())
        .unwrap();
    cluster.service_account_kubeconfig(ns, "crippled").unwrap()
}

/// Waits until `expr` returns something in `prometheus`, and returns it; fails after a
/// minute and a half with the last answer and the state of the scrape targets.
async fn wait_for_data(
    prometheus: &PrometheusServer,
    client: &reqwest::Client,
    expr: &str,
) -> Vec<Sample> {
    let started = Instant::now();
    loop {
        let last = match prometheus.query(client, expr).await {
            Ok(samples) if !samples.is_empty() => return samples,
            Ok(_) => "no data".to_owned(),
            Err(error) => format!("{error:#}"),
        };
        if started.elapsed() > Duration::from_secs(90) {
            panic!(
                "`{expr}` returned nothing for 90 s; last answer: {last}\n{}",
                prometheus.diagnosis(client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Healthy traffic of run `run`: both ingest endpoints, bad requests, queries answered
/// from the database and then from the cache, statistics.
async fn healthy_traffic(client: &reqwest::Client, url: &str, run: &str) {
    let plan = Plan {
        run: run.into(),
        devices: 10,
        single_logs_per_device: 100,
        batches_per_device: 20,
        batch_size: 5,
    };
    devices::send(client, url, &plan).await.unwrap();
    for body in ["{", "[1]"] {
        let _ = client
            .post(format!("{url}/api/log"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
    }
    for _ in 0..3 {
        client
            .get(format!("{url}/api/logs/device-000"))
            .send()
            .await
            .unwrap();
        client.get(format!("{url}/api/stats")).send().await.unwrap();
    }
}

/// Replaces the dashboards' variables as Grafana would for this stack.
fn substitute(expr: &str) -> String {
    expr.replace("${namespace}", "e2e")
        .replace("$namespace", "e2e")
        .replace("${pipeline}", "logs")
        .replace("$pipeline", "logs")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "10m")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_shows_data_and_each_fault_fires_its_alert() {
    // The stack, with a small stream capacity (backpressure comes quickly), two
    // deliveries before a dead letter, and idle entries claimed only after ten minutes.
    let mut stack = Stack::builder()
        .own_postgres()
        .api()
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 3000)
        .start()
        .unwrap();
    let mut redis = stack.redis().await.unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    sqlx::raw_sql(
        "create function refuse_by_device() returns trigger language plpgsql as $$
         begin
             if new.device_id like 'refused-%' then
                 raise exception 'refused for the test' using errcode = substr(new.device_id, 9);
             end if;
             return new;
         end $$;
         create trigger refuse_by_device before insert on logs
             for each row execute function refuse_by_device()",
    )
    .execute(&pool)
    .await
    .unwrap();

    // A consumer that died ten minutes ago holding an entry: the oldest pending entry.
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let ghost_log = json!([devices::log("ghost", 0, 0)]).to_string();
    let _: String = redis
        .xadd(
            "logs:stream",
            format!("{}-0", now_ms - 600_000),
            &[("v", "1"), ("t", "0"), ("logs", ghost_log.as_str())],
        )
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "log_workers",
            "ghost",
            "COUNT",
            "1",
            "STREAMS",
            "logs:stream",
            ">",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();

    let worker_port = logpipeline_local::process::free_port().unwrap();
    let worker_env = Env::from([
        ("LOGPIPELINE_MAX_DELIVERIES".into(), "2".into()),
        ("LOGPIPELINE_CLAIM_IDLE_MS".into(), "600000".into()),
        ("LOGPIPELINE_BLOCK_MS".into(), "500".into()),
        ("LOGPIPELINE_CONSUMER_NAME".into(), "worker".into()),
    ]);
    let redis_url = stack.redis.url();
    let database_url = stack.database_url().to_owned();
    let start_worker =
        || WorkerProcess::start_on(worker_port, &redis_url, &database_url, &worker_env).unwrap();
    let mut worker = start_worker();

    // The operator, watching a LogPipeline that points at the stack.
    let cluster = kube::shared().unwrap();
    let ns = "e2e";
    cluster.create_namespace(ns).unwrap();
    pipeline_objects(cluster, ns, &redis_url, &database_url);
    let mut options = OperatorOptions::new(ns);
    let mut operator = Operator::start(cluster, &options).unwrap();
    let operator_port = operator.metrics_port();

    // Prometheus, scraping all three with the labels a PodMonitor gives them.
    let target = |component: &str, port: u16, honor_labels: bool| {
        let namespace = if component == "operator" {
            "logpipeline-system"
        } else {
            ns
        };
        Target {
            job: format!("logpipeline-{component}"),
            address: format!("127.0.0.1:{port}"),
            labels: BTreeMap::from([
                ("namespace".into(), namespace.into()),
                ("pipeline".into(), "logs".into()),
                ("component".into(), component.into()),
                ("pod".into(), format!("{component}-0")),
            ]),
            honor_labels,
        }
    };
    let api_port = stack.api.as_ref().unwrap().port();
    let rules_dir = tempfile::tempdir().unwrap();
    let prometheus = PrometheusServer::start(
        &[
            target("api", api_port, false),
            target("worker", worker_port, false),
            target("operator", operator_port, true),
        ],
        &[quick_rules(rules_dir.path())],
    )
    .unwrap();
    let seen = SeenAlerts::watch(&prometheus);
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();

    // Healthy traffic: both endpoints, bad requests, queries answered from the database
    // and then from the cache, statistics.
    healthy_traffic(&client, &url, "monitoring").await;

    // The ghost's entry has been pending for ten minutes.
    seen.wait_for("LogPipelinePendingTooOld", Duration::from_secs(60))
        .await;

    // A poison entry: refused by PostgreSQL twice, then dead-lettered.
    let mut poison = devices::log("monitoring-poison", 0, 0);
    poison["device_id"] = "refused-XX000".into();
    client
        .post(format!("{url}/api/log"))
        .json(&poison)
        .send()
        .await
        .unwrap();
    seen.wait_for("LogPipelineDeadLetters", Duration::from_secs(60))
        .await;

    // PostgreSQL stops while devices keep sending: the worker retries, the backlog grows
    // until the stream is full and the api answers 503.
    stack.postgres.as_mut().unwrap().stop().unwrap();
    let flow = devices::Flow::default();
    let sending = devices::send_until(
        &client,
        &url,
        "monitoring-outage",
        20,
        1,
        Duration::ZERO,
        &flow,
    );
    let waiting = async {
        seen.wait_for("LogPipelinePostgresUnavailable", Duration::from_secs(90))
            .await;
        seen.wait_for("LogPipelineLagGrowing", Duration::from_secs(90))
            .await;
        seen.wait_for("LogPipelineBackpressure", Duration::from_secs(90))
            .await;
        flow.stop();
    };
    let (sent, ()) = tokio::join!(sending, waiting);
    assert!(
        sent.refused.get(&503).is_some_and(|count| *count > 0),
        "{:?}",
        sent.refused
    );
    stack.postgres.as_mut().unwrap().start_again().unwrap();

    // The worker stops: no consumer reads while an entry waits (the ghost's). It comes
    // back, twice, each start seen by Prometheus.
    worker.terminate(Duration::from_secs(30)).unwrap();
    seen.wait_for("LogPipelineNoLiveConsumer", Duration::from_secs(90))
        .await;
    for restarts in 1..=2 {
        if restarts == 2 {
            // process_start_time_seconds counts whole seconds, from the boot time that
            // /proc/stat gives in whole seconds too, so it may read up to a second early:
            // a worker started less than two seconds after the one before may look like
            // the same process.
            let metrics = http_get(worker_port, "/metrics").unwrap();
            let started = metric_value(&metrics, "process_start_time_seconds").unwrap();
            eventually(
                "two seconds since the worker started",
                Duration::from_secs(5),
                || async {
                    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
                    Ok(now.as_secs_f64() >= started + 2.0)
                },
            )
            .await
            .unwrap();
            worker.terminate(Duration::from_secs(30)).unwrap();
        }
        worker = start_worker();
        let changes = format!(
            r#"changes(process_start_time_seconds{{component="worker"}}[10m]) >= {restarts}"#
        );
        wait_for_data(&prometheus, &client, &changes).await;
    }
    seen.wait_for("LogPipelineRestarting", Duration::from_secs(90))
        .await;

    // The pipeline's Redis Secret goes: the operator marks it Degraded.
    cluster
        .kubectl(&["delete", "secret", "redis", "-n", ns])
        .unwrap();
    seen.wait_for("LogPipelineDegraded", Duration::from_secs(90))
        .await;
    operator::secret(cluster, ns, "redis", &redis_url).unwrap();

    // An operator that may not write what it renders fails every reconcile.
    operator.stop().unwrap();
    options.kubeconfig = Some(crippled_operator_kubeconfig(cluster, ns));
    let mut crippled = Operator::start_on(cluster, &options, operator_port).unwrap();
    seen.wait_for(
        "LogPipelineOperatorReconcileErrors",
        Duration::from_secs(120),
    )
    .await;
    // And without any operator, nothing reconciles.
    crippled.stop().unwrap();
    seen.wait_for("LogPipelineOperatorDown", Duration::from_secs(60))
        .await;
    options.kubeconfig = None;
    let _operator = Operator::start_on(cluster, &options, operator_port).unwrap();
    wait_for_data(
        &prometheus,
        &client,
        r#"logpipeline_operator_stream_consumers_active{namespace="e2e"}"#,
    )
    .await;

    // Redis stops while devices send: the api cannot accept logs and answers 503
    // queue_unavailable, an ingest error.
    stack.redis.stop().unwrap();
    let flow = devices::Flow::default();
    let sending = devices::send_until(
        &client,
        &url,
        "monitoring-redis-down",
        100,
        1,
        Duration::ZERO,
        &flow,
    );
    let waiting = async {
        seen.wait_for("LogPipelineRedisUnavailable", Duration::from_secs(90))
            .await;
        seen.wait_for("LogPipelineIngestErrors", Duration::from_secs(90))
            .await;
        flow.stop();
    };
    tokio::join!(sending, waiting);
    stack.redis.start_again().unwrap();
    worker.process().ensure_running().unwrap();

    // Healthy traffic again, so that rates over the last minute have data after the
    // outages; then every panel's queries return data, with every label their legends
    // name.
    healthy_traffic(&client, &url, "monitoring-after").await;
    let (mut checked, mut expressions) = (0, 0);
    for (dashboard, json) in xtask::monitoring::dashboards(&repo_root()).unwrap() {
        let dashboard_json: Value = serde_json::from_str(&json).unwrap();
        expressions += count_expressions(&dashboard_json);
        for (title, expr, legend) in monitoring::targets(&dashboard_json) {
            let query = substitute(&expr);
            let samples = wait_for_data(&prometheus, &client, &query).await;
            for label in monitoring::legend_labels(&legend) {
                assert!(
                    samples
                        .iter()
                        .all(|sample| sample.metric.contains_key(&label)),
                    "{dashboard} / {title}: `{query}` has no `{label}` label for its legend {legend:?}: {samples:?}"
                );
            }
            checked += 1;
        }
    }
    println!("{checked} panel queries return data with their legends' labels");
    // Every expression anywhere in the dashboards was among them, and there are some.
    assert_eq!(checked, expressions);
    assert!(checked >= 20, "only {checked} panel queries were found");
    println!("alerts seen: {:?}", seen.0.lock().unwrap());
}

/// The `expr` strings anywhere in `value`, found without knowing the dashboard's layout.
fn count_expressions(value: &Value) -> usize {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(_) if key == "expr" => 1,
                value => count_expressions(value),
            })
            .sum(),
        Value::Array(items) => items.iter().map(count_expressions).sum(),
        _ => 0,
    }
}

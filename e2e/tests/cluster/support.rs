//! What the cluster tests share: the cluster, one pipeline installed the way a user
//! installs it, a way to look inside its Redis and PostgreSQL, and timelines.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use logpipeline_core::codec;
use logpipeline_core::tenant::Tenant;
use logpipeline_e2e::devices::{self, Flow};
use logpipeline_e2e::runs::wait_for_run;
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::kube::repo_root;
use logpipeline_local::node::{self, INGRESS_HTTPS_PORT, NodeCluster};
use logpipeline_local::process::wait_until;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;

/// The namespace of the operator (as the README installs it) and of the pipeline.
pub const OPERATOR_NS: &str = "logpipeline-system";
pub const NS: &str = "logs";
/// The sample pipeline's name and Ingress host.
pub const PIPELINE: &str = "logs";
pub const HOST: &str = "logs.example.com";
/// The API keys Secret the sample names.
pub const KEYS_SECRET: &str = "logpipeline-api-keys";

/// The shared cluster; a test that cannot have it fails with the reason.
pub fn cluster() -> &'static NodeCluster {
    node::shared().unwrap_or_else(|error| panic!("{error:#}"))
}

/// What a test starts with: its turn (the tests share one pipeline and two CPUs, and
/// each measures load, so they run one at a time), the cluster, and the pipeline.
pub fn start() -> (
    MutexGuard<'static, ()>,
    &'static NodeCluster,
    &'static Pipeline,
) {
    let turn = turn();
    (turn, cluster(), pipeline())
}

/// A test's turn alone.
pub fn turn() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sample pipeline of `manifests/sample/`, installed as the README says: the chart
/// (operator, CRD, RBAC) with helm, then the manifests as written with kubectl, beside
/// a Redis and a PostgreSQL that answer to the names the sample uses.
pub struct Pipeline {
    /// From `kubectl apply` of the sample to the LogPipeline's Ready condition.
    pub apply_to_ready: Duration,
    /// What `kubectl get lp` printed then.
    pub table_at_ready: String,
    /// `redis://<node>:<port>` and `postgres://…@<node>:<port>/logpipeline`, from here.
    pub redis_url: String,
    pub database_url: String,
    /// `https://logs.example.com:30443`, which `devices` resolves to the node.
    pub base_url: String,
    /// The API key of the devices (tenant `acme`, scopes write and read), the one key
    /// in the sample's keys Secret at first.
    pub key: ApiKey,
    /// A client that trusts the Ingress's certificate, finds the host on the node and
    /// sends `key` with every request.
    pub devices: reqwest::Client,
    /// The same client without a key.
    pub anonymous: reqwest::Client,
}

/// Runs the lines `logpipeline cluster` printed for a user to run next, as printed, in
/// a login shell of their own somewhere else than the repository, with the system's
/// `PATH`: they check the node and install the chart, as the README's user does.
fn run_next_steps(cluster: &NodeCluster) -> Result<()> {
    let steps = cluster.next_steps()?;
    anyhow::ensure!(
        steps.iter().any(|line| line.starts_with("helm install")),
        "the printed lines install the chart: {steps:?}"
    );
    let elsewhere = tempfile::tempdir()?;
    let output = std::process::Command::new("/bin/bash")
        .arg("-euc")
        .arg(steps.join("\n"))
        .current_dir(elsewhere.path())
        .env_clear()
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the printed lines {steps:?} failed: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let node = &cluster.info().node_name;
    anyhow::ensure!(
        printed.contains(node.as_str()) && printed.contains("STATUS: deployed"),
        "`kubectl get nodes` shows the node and helm deploys the chart: {printed}"
    );
    Ok(())
}

/// The pipeline, installed on first use.
pub fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<std::result::Result<Pipeline, String>> = OnceLock::new();
    PIPELINE
        .get_or_init(|| Pipeline::install(cluster()).map_err(|error| format!("{error:#}")))
        .as_ref()
        .unwrap_or_else(|error| panic!("installing the sample pipeline failed: {error}"))
}

impl Pipeline {
    fn install(cluster: &NodeCluster) -> Result<Self> {
        run_next_steps(cluster)?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/logpipelines.logpipeline.io",
        ])?;
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            OPERATOR_NS,
            "deployment/logpipeline-operator",
            "--timeout=300s",
        ])?;

        cluster.create_namespace(NS)?;
        let services = repo_root().join("local/k8s/fixtures/services.yaml");
        cluster.kubectl(&["apply", "-n", NS, "-f", &services.to_string_lossy()])?;
        for service in ["deployment/redis", "deployment/postgres"] {
            cluster.kubectl(&["rollout", "status", "-n", NS, service, "--timeout=180s"])?;
        }
        let ca = tls_secret(cluster)?;

        // The Ingress controller's namespace is admitted to the api by the pipeline's
        // NetworkPolicy, as docs/kubernetes.md says to do (this node's bridge network
        // does not enforce NetworkPolicies, a production one does).
        cluster.kubectl(&[
            "label",
            "namespace",
            "traefik",
            "logpipeline.io/api-access=true",
            "--overwrite",
        ])?;

        let sample = repo_root().join("manifests/sample");
        let applied = Instant::now();
        cluster.kubectl(&["apply", "-n", NS, "-f", &sample.to_string_lossy()])?;
        // The sample's key is a placeholder: the devices' key replaces it, as a user's would.
        let key = ApiKey::new("acme", "devices", &["write", "read"]);
        keys_secret(cluster, &[&key])?;
        wait_for_condition(
            cluster,
            (NS, PIPELINE),
            ("Ready", "True"),
            Duration::from_secs(300),
        )?;
        let apply_to_ready = applied.elapsed();
        let table_at_ready = cluster.kubectl(&["get", "lp", "-n", NS])?;

        let node_ip = cluster.info().node_ip;
        let redis_url = format!("redis://{node_ip}:{}", node_port(cluster, "redis")?);
        let database_url = format!(
            "postgres://logpipeline:change-me@{node_ip}:{}/logpipeline",
            node_port(cluster, "postgres")?
        );
        let certificate = reqwest::Certificate::from_pem(ca.as_bytes())?;
        let client = |key: Option<&ApiKey>| {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(key) = key {
                let mut bearer = reqwest::header::HeaderValue::from_str(&key.bearer())?;
                bearer.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, bearer);
            }
            logpipeline_e2e::http_client(|builder| {
                builder
                    .tls_certs_only([certificate.clone()])
                    .resolve(HOST, SocketAddr::from((node_ip, INGRESS_HTTPS_PORT)))
                    .timeout(Duration::from_secs(30))
                    .default_headers(headers)
            })
        };
        let devices = client(Some(&key))?;
        let anonymous = client(None)?;
        let base_url = format!("https://{HOST}:{INGRESS_HTTPS_PORT}");
        // The ingress controller routes the host once it has seen the Ingress, its
        // Service's endpoints and the TLS Secret; the api pods know the devices' key
        // once the kubelet has the Secret's latest version in their mount.
        let runtime = tokio::runtime::Runtime::new()?;
        let stats = format!("{base_url}/api/stats");
        let mut last = String::new();
        wait_until(
            "the Ingress routes to the api, which knows the devices' key",
            Duration::from_secs(180),
            || {
                let answer = runtime.block_on(async { devices.get(&stats).send().await });
                last = format!("{answer:?}");
                Ok(answer.is_ok_and(|response| response.status() == 200))
            },
        )
        .with_context(|| format!("last answer: {last}"))?;
        Ok(Self {
            apply_to_ready,
            table_at_ready,
            redis_url,
            database_url,
            base_url,
            key,
            devices,
            anonymous,
        })
    }

    /// A small pool on the pipeline's database.
    pub async fn pool(&self) -> Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await?)
    }

    /// A connection to the pipeline's Redis.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

/// Replaces the keys file of the sample's keys Secret with one listing `keys`.
pub fn keys_secret(cluster: &NodeCluster, keys: &[&ApiKey]) -> Result<()> {
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": KEYS_SECRET},
        "type": "Opaque",
        "stringData": {"keys.yaml": keys_file(keys)},
    });
    cluster.kubectl_stdin(&["apply", "-n", NS, "-f", "-"], &secret.to_string())?;
    Ok(())
}

/// Makes a CA and a certificate for the Ingress host, stores the certificate as the
/// Secret the sample names (as cert-manager would), and returns the CA's PEM.
fn tls_secret(cluster: &NodeCluster) -> Result<String> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "logpipeline-e2e-ingress-ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![HOST.to_owned()])?.signed_by(&key, &ca)?;
    let dir = cluster.dir();
    let (cert_path, key_path) = (dir.join("ingress.crt"), dir.join("ingress.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    cluster.kubectl(&[
        "create",
        "secret",
        "tls",
        "logs-example-com-tls",
        "-n",
        NS,
        &format!("--cert={}", cert_path.display()),
        &format!("--key={}", key_path.display()),
    ])?;
    Ok(ca.pem())
}

/// The node port of Service `name` in the pipeline's namespace.
fn node_port(cluster: &NodeCluster, name: &str) -> Result<u16> {
    let service = cluster.get_json(&["-n", NS, "service", name])?;
    service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|port| u16::try_from(port).ok())
        .with_context(|| format!("service {name} has no node port"))
}

/// Waits until the LogPipeline `name` of namespace `namespace` has condition `type_` with
/// `status`.
pub fn wait_for_condition(
    cluster: &NodeCluster,
    (namespace, name): (&str, &str),
    (type_, status): (&str, &str),
    timeout: Duration,
) -> Result<()> {
    let mut last = Value::Null;
    wait_until(&format!("{name} has {type_}={status}"), timeout, || {
        let lp = cluster.get_json(&["-n", namespace, "logpipeline", name])?;
        last = lp["status"].clone();
        let conditions = lp["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(conditions
            .iter()
            .any(|condition| condition["type"] == type_ && condition["status"] == status))
    })
    .with_context(|| format!("last status: {last}"))
}

/// Applies a merge patch to the pipeline's spec.
pub fn patch_pipeline(cluster: &NodeCluster, spec: &Value) -> Result<()> {
    let patch = serde_json::json!({"spec": spec});
    cluster.kubectl(&[
        "patch",
        "-n",
        NS,
        "logpipeline",
        PIPELINE,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])?;
    Ok(())
}

/// Waits until Deployment `name` runs its latest template on every replica, each Ready,
/// and no pod of an older template is left.
pub fn wait_rolled_out(cluster: &NodeCluster, name: &str, timeout: Duration) -> Result<()> {
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        NS,
        &format!("deployment/{name}"),
        &format!("--timeout={}s", timeout.as_secs()),
    ])?;
    let component = name.rsplit('-').next().unwrap_or(name);
    wait_until(&format!("only {name}'s new pods are left"), timeout, || {
        let deployment = cluster.get_json(&["-n", NS, "deployment", name])?;
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(0);
        Ok(pods(cluster, component)?.len() as u64 == replicas)
    })
}

/// The pipeline's pods of `component` (`api` or `worker`), terminating ones included.
pub fn pods(cluster: &NodeCluster, component: &str) -> Result<Vec<Value>> {
    let selector =
        format!("app.kubernetes.io/instance={PIPELINE},app.kubernetes.io/component={component}");
    let list = cluster.get_json(&["-n", NS, "pods", "-l", &selector])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Whether every container of `pod` is Ready.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// A sample of something every second in the background, with when it was taken.
pub struct Timeline {
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<Vec<(Duration, String)>>>,
}

impl Timeline {
    /// Starts sampling `sample` every `every`; its errors are recorded as the sample.
    pub fn start(every: Duration, sample: impl Fn() -> Result<String> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let sampler = std::thread::spawn(move || {
            let started = Instant::now();
            let mut rows = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let row = sample().unwrap_or_else(|error| format!("({error:#})"));
                rows.push((started.elapsed(), row));
                std::thread::sleep(every);
            }
            rows
        });
        Self {
            stop,
            sampler: Some(sampler),
        }
    }

    /// Stops sampling and returns the rows, printed one per line with their time,
    /// leaving out rows equal to the one before.
    pub fn stop(mut self) -> Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        let rows = self
            .sampler
            .take()
            .context("already stopped")?
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let mut printed = String::new();
        let mut previous = None;
        for (at, row) in rows {
            if previous.as_ref() != Some(&row) {
                printed.push_str(&format!("  {:>6.1}s  {row}\n", at.as_secs_f64()));
            }
            previous = Some(row);
        }
        Ok(printed)
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Puts `entries` entries of one log each of run `run` on the stream at once, with XADD
/// as the api encodes them, beside whatever the workers consume; the ids of their logs.
pub async fn add_backlog(
    redis: &mut redis::aio::MultiplexedConnection,
    run: &str,
    entries: usize,
) -> Result<Vec<String>> {
    let tenant = Tenant::default();
    let mut ids = Vec::with_capacity(entries);
    let mut seq = 0;
    while seq < entries {
        let mut pipe = redis::pipe();
        for seq in seq..entries.min(seq + 1000) {
            let logs = serde_json::to_vec(&[devices::log(run, 0, seq)])?;
            let fields: Vec<(&str, Vec<u8>)> =
                codec::encode(time::OffsetDateTime::now_utc(), &tenant, &logs)
                    .iter()
                    .map(|(name, value)| (*name, value.as_bytes().to_vec()))
                    .collect();
            pipe.xadd("logs:stream", "*", &fields);
        }
        let added: Vec<String> = pipe.query_async(redis).await?;
        seq += added.len();
        ids.extend(added.iter().flat_map(|entry| codec::log_ids(entry, 1)));
    }
    Ok(ids)
}

/// The consumer group's backlog, read from the pipeline's Redis: (lag, pending).
pub async fn backlog(redis: &mut redis::aio::MultiplexedConnection) -> Result<(i64, i64)> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg(&["GROUPS", "logs:stream"])
        .query_async(redis)
        .await?;
    let group = groups
        .into_iter()
        .find(|group| matches!(group.get("name"), Some(redis::Value::BulkString(name)) if name == b"log_workers"))
        .context("no consumer group log_workers")?;
    let number = |field: &str| match group.get(field) {
        Some(redis::Value::Int(n)) => Ok(*n),
        Some(redis::Value::Nil) => Ok(0),
        other => bail!("{field} is {other:?}"),
    };
    Ok((number("lag")?, number("pending")?))
}

/// The names of the group's consumers.
pub async fn consumers(redis: &mut redis::aio::MultiplexedConnection) -> Result<Vec<String>> {
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg(&["CONSUMERS", "logs:stream", "log_workers"])
        .query_async(redis)
        .await?;
    Ok(consumers
        .iter()
        .filter_map(|consumer| match consumer.get("name") {
            Some(redis::Value::BulkString(name)) => {
                Some(String::from_utf8_lossy(name).into_owned())
            }
            _ => None,
        })
        .collect())
}

/// Waits up to `timeout` until `run` has as many logs stored (rows and, once the workers
/// compacted them, chunks) as were accepted, then checks that they are exactly the
/// accepted logs, and says so. Returns how long it waited.
pub async fn assert_stored_exactly_once(
    run: &str,
    accepted: &[String],
    timeout: Duration,
) -> Duration {
    let pool = pipeline().pool().await.unwrap();
    let waited = wait_for_run(&pool, run, accepted.len(), timeout)
        .await
        .unwrap();
    let stored = devices::stored(&pool, run, accepted).await.unwrap();
    assert!(stored.exactly_once(), "{run}: {stored:?}");
    println!(
        "{run}: {} logs accepted, {} stored, {} duplicated, {} missing",
        stored.accepted,
        stored.rows,
        stored.duplicate_ids + stored.duplicate_messages,
        stored.missing
    );
    waited
}

/// Sends logs of `run` through the Ingress from a thread of its own until `flow` stops.
pub fn send_in_background<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    run: &'scope str,
    devices: usize,
    logs_per_request: usize,
    pause: Duration,
    flow: &'scope Flow,
) -> std::thread::ScopedJoinHandle<'scope, devices::Continuous> {
    scope.spawn(move || {
        let pipeline = pipeline();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(devices::send_until(
                &pipeline.devices,
                &pipeline.base_url,
                run,
                devices,
                logs_per_request,
                pause,
                flow,
            ))
    })
}

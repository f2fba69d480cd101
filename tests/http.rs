//! The HTTP port (issue 6, items 2 and 6) against the real server: Prometheus metrics
//! scraped over loopback and parsed as the text format, the status page loaded in
//! headless Chromium, the bad paths, the follower's page in high availability, and the
//! port closing on shutdown.
//!
//! One scenario feeds the checks: on a job of 3 tasks (one per task manager), 2
//! checkpoints and 1 savepoint complete, 1 checkpoint is declined (its acks then arrive
//! late), 1 ack names a checkpoint never issued, and 1 savepoint stays pending with 1 of
//! its 3 acknowledgements.

mod common;

use common::etcd::EtcdCluster;
use common::{Acks, Cluster, TestServer, eventually, job, policy, register, set_status, within};
use savepoint_coordinator::http::HttpListener;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::server::HaConfig;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const JOB: &str = "metrics-job";
const VERTICES: &[(&str, u32)] = &[("src", 2), ("sink", 1)];
const TASKS: u64 = 3;
/// The declining task's reason: markup that the page must show as text.
const DECLINE_REASON: &str = "disk full <script>document.title='injected'</script> & \"more\"";
/// Bound on one Chromium run.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a server with the HTTP port on a free loopback port; returns it and the port's
/// address. The test keeps no clone of the listener, so the port closes with the server.
async fn server_with_http(data_dir: &Path) -> (TestServer, SocketAddr) {
    let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).expect("bind HTTP");
    let address = listener.local_addr().expect("HTTP address");
    let server = TestServer::start_with(data_dir, move |config| {
        config.http_listener = Some(listener);
    })
    .await;
    (server, address)
}

/// A response: status code, lower-cased header lines, body.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request over a new loopback connection, read until the server closes it.
async fn request(address: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(common::WAIT, exchange)
        .await
        .map_err(|_| std::io::Error::other(format!("{method} {path} timed out")))??;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

async fn get(address: SocketAddr, path: &str) -> HttpResponse {
    request(address, "GET", path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The samples of a Prometheus text-format (0.0.4) exposition, keyed by series
/// (`name{label="value",...}` with the labels sorted, or the bare name). Checks the
/// syntax of every line, that every sample belongs to the family its `# TYPE` declared,
/// that no series repeats, and that every histogram's buckets are cumulative and end in
/// `le="+Inf"` equal to its `_count`.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for (number, line) in text.lines().enumerate() {
        let at = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !valid_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("a second TYPE line".into()));
                    }
                }
                ["HELP", name, ..] if !valid_name(name) => {
                    return Err(at("bad metric name".into()));
                }
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| at("bad value".into()))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                let mut labels = Vec::new();
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair
                        .split_once('=')
                        .ok_or_else(|| at("label without '='".into()))?;
                    let unquoted = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| at("unquoted label value".into()))?;
                    if !valid_name(key) || unquoted.contains('"') {
                        return Err(at("bad label".into()));
                    }
                    labels.push((key.to_string(), unquoted.to_string()));
                }
                labels.sort();
                (name, labels)
            }
        };
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        let family = types
            .iter()
            .find(|(family, kind)| match kind.as_str() {
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string()),
                _ => name == family.as_str(),
            })
            .map(|(family, _)| family.clone());
        if family.is_none() {
            return Err(at("a sample of no declared family".into()));
        }
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", labels.join(","))
        };
        if samples.insert(key, value).is_some() {
            return Err(at("a repeated series".into()));
        }
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        // Buckets per label set (without le), in the order of their bounds.
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let prefix = format!("{family}_bucket{{");
        for (series, value) in samples.range(prefix.clone()..) {
            let Some(labels) = series.strip_prefix(&prefix) else {
                break;
            };
            let labels = labels.trim_end_matches('}');
            let mut others = Vec::new();
            let mut bound = None;
            for pair in labels.split(',') {
                match pair.strip_prefix("le=") {
                    Some(le) => {
                        bound = Some(match le.trim_matches('"') {
                            "+Inf" => f64::INFINITY,
                            other => other.parse::<f64>().map_err(|e| format!("{series}: {e}"))?,
                        })
                    }
                    None => others.push(pair),
                }
            }
            let bound = bound.ok_or_else(|| format!("{series} has no le label"))?;
            buckets
                .entry(others.join(","))
                .or_default()
                .push((bound, *value));
        }
        for (labels, mut series) in buckets {
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            if series.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{{{labels}}}: buckets not cumulative"));
            }
            let last = series.last().expect("one bucket at least");
            let count_key = if labels.is_empty() {
                format!("{family}_count")
            } else {
                format!("{family}_count{{{labels}}}")
            };
            if last.0 != f64::INFINITY || Some(&last.1) != samples.get(&count_key) {
                return Err(format!(
                    "{family}{{{labels}}}: no +Inf bucket equal to {count_key}"
                ));
            }
        }
    }
    Ok(samples)
}

/// Scrapes `/metrics` and parses it.
async fn scrape(address: SocketAddr) -> BTreeMap<String, f64> {
    let response = get(address, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "content type {:?}",
        response.header("content-type")
    );
    parse_prometheus(&response.body)
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{}", response.body))
}

fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {metrics:#?}"))
}

/// Triggers a checkpoint (or savepoint) in the background and waits for its trigger.
async fn start_snapshot(
    client: &SavepointServiceClient<Channel>,
    cluster: &Cluster,
    kind: proto::SnapshotKind,
    checkpoint_id: u64,
) -> tokio::task::JoinHandle<Result<u64, tonic::Status>> {
    let mut client = client.clone();
    let running = tokio::spawn(async move {
        match kind {
            proto::SnapshotKind::Savepoint => common::trigger_savepoint(&mut client, JOB)
                .await
                .map(|r| r.checkpoint_id),
            _ => common::try_trigger_checkpoint(&mut client, JOB).await,
        }
    });
    cluster.wait_for_trigger(checkpoint_id).await;
    running
}

/// What the scenario leaves behind for the checks.
struct Scenario {
    cluster: Cluster,
    client: SavepointServiceClient<Channel>,
    /// The pending savepoint's call, still waiting.
    pending_savepoint: tokio::task::JoinHandle<Result<u64, tonic::Status>>,
}

/// Runs the scenario of the module documentation on `server` (ids 1 to 5).
async fn run_scenario(server: &TestServer) -> Scenario {
    let mut client = server.savepoints().await;
    let job = job(JOB, VERTICES, policy(0, 60_000));
    register(&mut client, &job).await;
    let cluster = Cluster::start(server, &job, TASKS as usize, Acks::None, &[]).await;
    assert_eq!(cluster.tasks.len() as u64, TASKS);
    set_status(&mut client, JOB, proto::JobStatus::Running).await;

    for (id, kind) in [
        (1, proto::SnapshotKind::Checkpoint),
        (2, proto::SnapshotKind::Checkpoint),
        (3, proto::SnapshotKind::Savepoint),
    ] {
        let running = start_snapshot(&client, &cluster, kind, id).await;
        cluster.acknowledge_all(id);
        let completed = within("the snapshot", running).await.expect("call task");
        assert_eq!(completed.expect("snapshot completes"), id);
    }

    let running = start_snapshot(&client, &cluster, proto::SnapshotKind::Checkpoint, 4).await;
    cluster.decline(4, DECLINE_REASON);
    let declined = within("the declined checkpoint", running)
        .await
        .expect("call task")
        .expect_err("a declined checkpoint fails");
    assert_eq!(common::failure_reason(&declined), Some("DECLINED"));
    cluster.wait_for_aborts(4).await;
    // Every task acknowledges the declined checkpoint after all: 3 late acks.
    cluster.acknowledge_all(4);

    let ack = proto::AcknowledgeRequest {
        job_id: JOB.to_string(),
        checkpoint_id: 999,
        attempt_id: cluster.tasks[0].attempt,
        ..Default::default()
    };
    let outcome = within("Acknowledge", server.gateway().await.acknowledge(ack))
        .await
        .expect("Acknowledge")
        .into_inner()
        .outcome();
    assert_eq!(outcome, proto::AckOutcome::UnknownCheckpoint);

    let pending_savepoint =
        start_snapshot(&client, &cluster, proto::SnapshotKind::Savepoint, 5).await;
    cluster.acknowledge_from(&format!("{JOB}-tm-0"), 5);
    let probe = client.clone();
    eventually("1 of 3 acks of savepoint 5", || {
        let mut client = probe.clone();
        async move {
            let stats = common::stats(&mut client, JOB).await;
            stats
                .history
                .iter()
                .any(|s| s.checkpoint_id == 5 && s.acknowledged_subtasks == 1)
                .then_some(())
        }
    })
    .await;
    Scenario {
        cluster,
        client,
        pending_savepoint,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_snapshots_by_kind_and_reason_acks_by_outcome_and_the_current_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, http) = server_with_http(dir.path()).await;
    let before = scrape(http).await;
    assert_eq!(value(&before, "savepoint_coordinator_leader"), 1.0);
    assert_eq!(
        value(
            &before,
            "savepoint_coordinator_snapshots_triggered_total{kind=\"checkpoint\"}"
        ),
        0.0
    );

    let scenario = run_scenario(&server).await;
    // The late acks travel on the streams with no answer: wait until all 3 are counted.
    let metrics = eventually("3 late acks counted", move || async move {
        let metrics = scrape(http).await;
        (value(
            &metrics,
            "savepoint_coordinator_acks_total{outcome=\"late\"}",
        ) == 3.0)
            .then_some(metrics)
    })
    .await;
    let m = |series: &str| value(&metrics, &format!("savepoint_coordinator_{series}"));

    for (kind, triggered, completed, failed, in_flight) in [
        ("checkpoint", 3.0, 2.0, 1.0, 0.0),
        ("savepoint", 2.0, 1.0, 0.0, 1.0),
    ] {
        let triggered_now = m(&format!("snapshots_triggered_total{{kind=\"{kind}\"}}"));
        let completed_now = m(&format!("snapshots_completed_total{{kind=\"{kind}\"}}"));
        let failed_now: f64 = metrics
            .iter()
            .filter(|(series, _)| {
                series.starts_with("savepoint_coordinator_snapshots_failed_total{")
                    && series.contains(&format!("kind=\"{kind}\""))
            })
            .map(|(_, v)| v)
            .sum();
        let in_flight_now = m(&format!("snapshots_in_flight{{kind=\"{kind}\"}}"));
        assert_eq!(
            (triggered_now, completed_now, failed_now, in_flight_now),
            (triggered, completed, failed, in_flight),
            "{kind}: triggered, completed, failed, in flight"
        );
        assert_eq!(
            triggered_now,
            completed_now + failed_now + in_flight_now,
            "{kind}: every triggered snapshot is completed, failed or in flight"
        );
    }
    assert_eq!(
        m("snapshots_failed_total{kind=\"checkpoint\",reason=\"DECLINED\"}"),
        1.0
    );
    // Every reason of both kinds is exported, so a dashboard sees zeros, not gaps.
    let reasons = metrics
        .keys()
        .filter(|s| s.starts_with("savepoint_coordinator_snapshots_failed_total{"))
        .count();
    assert_eq!(reasons, 2 * 11, "kinds × failure reasons");

    // 3 completed snapshots × 3 tasks, plus 1 of the pending savepoint: the last ack of
    // each completed snapshot is the completing one.
    assert_eq!(m("acks_total{outcome=\"completing\"}"), 3.0);
    assert_eq!(
        m("acks_total{outcome=\"recorded\"}") + m("acks_total{outcome=\"completing\"}"),
        (TASKS * 3 + 1) as f64
    );
    assert_eq!(m("acks_total{outcome=\"late\"}"), TASKS as f64);
    assert_eq!(m("acks_total{outcome=\"unknown_checkpoint\"}"), 1.0);
    assert_eq!(m("acks_total{outcome=\"duplicate\"}"), 0.0);
    assert_eq!(m("acks_total{outcome=\"not_awaited\"}"), 0.0);

    // Histograms count completed snapshots only, sized by what the tasks acknowledged.
    let cluster = &scenario.cluster;
    for (kind, ids) in [("checkpoint", vec![1, 2]), ("savepoint", vec![3])] {
        assert_eq!(
            m(&format!(
                "snapshot_duration_seconds_count{{kind=\"{kind}\"}}"
            )),
            ids.len() as f64
        );
        assert_eq!(
            m(&format!("snapshot_size_bytes_count{{kind=\"{kind}\"}}")),
            ids.len() as f64
        );
        let size: u64 = ids.iter().map(|id| cluster.state_size(*id)).sum();
        assert!(size > 0);
        assert_eq!(
            m(&format!("snapshot_size_bytes_sum{{kind=\"{kind}\"}}")),
            size as f64
        );
        let duration = m(&format!("snapshot_duration_seconds_sum{{kind=\"{kind}\"}}"));
        assert!(
            (0.0..60.0).contains(&duration),
            "{kind} duration sum {duration}"
        );
    }
    assert_eq!(m("connected_task_managers"), TASKS as f64);
    assert_eq!(m("jobs"), 1.0);
    assert_eq!(m("leader"), 1.0);

    // The bad paths.
    for path in [
        "/jobs/no-such-job",
        "/nothing-here",
        "/jobs/",
        "/metrics/extra",
    ] {
        let response = get(http, path).await;
        assert_eq!(response.status, 404, "GET {path}: {}", response.body);
    }
    for method in ["POST", "PUT", "DELETE"] {
        let response = request(http, method, "/metrics").await.expect(method);
        assert_eq!(response.status, 405, "{method} /metrics");
        assert_eq!(response.header("allow"), Some("GET, HEAD"));
    }
    let head = request(http, "HEAD", "/").await.expect("HEAD");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let page = get(http, &format!("/jobs/{JOB}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("1/3 acknowledged"), "{}", page.body);

    drop(scenario.client);
    server.stop().await;
    let pending = within("the pending savepoint's call", scenario.pending_savepoint)
        .await
        .expect("call task");
    assert!(pending.is_err(), "shutdown fails the pending savepoint");
    // The HTTP port stops with the server.
    let refused = request(http, "GET", "/metrics").await;
    assert!(
        refused.is_err(),
        "the HTTP port still answers after shutdown"
    );
}

/// Where Debian's Chromium is, or a failure naming the script that installs it.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "/usr/bin/chromium is missing: run `bash .ci/install-chromium` (Debian's chromium \
         package; .ci/test runs it) to let this test load the status page"
    );
    path
}

/// The DOM of `url` after loading it in headless Chromium, bounded in time.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command.spawn().expect("start chromium");
    let output = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}"))
        .expect("chromium output");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed ({}) after {:?}: {}",
        output.status,
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_history_failures_and_pending_progress() {
    chromium();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, http) = server_with_http(dir.path()).await;
    let scenario = run_scenario(&server).await;

    let index = dump_dom(&format!("http://{http}/")).await;
    assert!(
        index.contains(&format!("<a href=\"/jobs/{JOB}\">{JOB}</a>")),
        "the index links the job: {index}"
    );

    let dom = dump_dom(&format!("http://{http}/jobs/{JOB}")).await;
    assert!(
        dom.contains(&format!("<span id=\"job-id\">{JOB}</span>")),
        "job id: {dom}"
    );
    assert!(
        dom.contains("The last 4 finished snapshots: 3 completed, 1 failed."),
        "history summary: {dom}"
    );
    assert!(dom.contains("<td id=\"completed-count\">3</td>"), "{dom}");
    // Each chart draws a bar per completed snapshot and marks the failed one.
    for chart in ["duration-chart", "size-chart"] {
        let start = dom
            .find(&format!("<svg id=\"{chart}\""))
            .unwrap_or_else(|| panic!("no {chart}: {dom}"));
        let svg = &dom[start..start + dom[start..].find("</svg>").expect("end of svg")];
        assert_eq!(
            svg.matches("<rect class=\"bar\"").count(),
            3,
            "{chart}: {svg}"
        );
        assert_eq!(
            svg.matches("<g class=\"failure-marker\" data-checkpoint-id=\"4\"")
                .count(),
            1,
            "{chart}: {svg}"
        );
        assert!(
            svg.contains("checkpoint 4 failed: DECLINED"),
            "{chart}: {svg}"
        );
    }
    assert!(dom.contains("FAILED: DECLINED"), "history table: {dom}");
    assert!(
        dom.contains("<span class=\"progress\">1/3 acknowledged</span>"),
        "pending savepoint progress: {dom}"
    );
    // The task's reason is shown as text, never run or parsed as markup.
    assert!(dom.contains("&lt;script&gt;document.title="), "{dom}");
    assert!(!dom.contains("<script>document.title"), "{dom}");
    assert!(!dom.contains("<title>injected"), "{dom}");

    drop(scenario);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_names_the_leader_and_reports_leader_0() {
    let etcd = EtcdCluster::start(1).await;
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).expect("bind HTTP");
        let http = listener.local_addr().expect("HTTP address");
        let endpoints = etcd.endpoints();
        let server = TestServer::start_with(dir.path(), move |config| {
            config.http_listener = Some(listener);
            config.ha = Some(HaConfig {
                etcd_endpoints: endpoints,
                etcd_prefix: "/http-test".to_string(),
                lease_ttl: Duration::from_secs(1),
                advertise_address: Some(format!("replica-{i}.test:50051")),
            });
        })
        .await;
        replicas.push((server, http));
    }
    let addresses: Vec<SocketAddr> = replicas.iter().map(|(_, http)| *http).collect();
    // One leads (leader 1), the other follows (leader 0) and names it.
    let (leader, follower) = eventually("a leader and a follower", || {
        let addresses = addresses.clone();
        async move {
            let mut leading = Vec::new();
            for (i, http) in addresses.iter().enumerate() {
                let metrics = scrape(*http).await;
                leading.push((i, value(&metrics, "savepoint_coordinator_leader")));
            }
            match leading.as_slice() {
                [(a, 1.0), (b, 0.0)] | [(b, 0.0), (a, 1.0)] => Some((*a, *b)),
                _ => None,
            }
        }
    })
    .await;
    let follower_http = addresses[follower];
    let page = eventually("the follower to name the leader", move || async move {
        let page = get(follower_http, "/").await;
        page.body
            .contains(&format!("replica-{leader}.test:50051"))
            .then_some(page)
    })
    .await;
    assert!(
        page.body.contains(
            "This replica is a <strong>follower</strong> (this replica is not the leader)"
        ),
        "{}",
        page.body
    );
    let job_page = get(follower_http, "/jobs/anything").await;
    assert_eq!(job_page.status, 503, "{}", job_page.body);
    assert!(job_page.body.contains("follower"), "{}", job_page.body);
    let leader_page = get(addresses[leader], "/").await;
    assert!(
        leader_page
            .body
            .contains("This replica is the <strong>leader</strong>"),
        "{}",
        leader_page.body
    );
    for (server, _) in replicas {
        server.stop().await;
    }
}

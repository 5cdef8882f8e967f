//! parquet_sink against the real broker, read back with a real query engine (DuckDB, from the
//! venv of scripts/dev-services.sh) (issue 20): kill -9 ×3 mid-stream gives every record
//! exactly once across all files, in the folders configured; a rebalance between two
//! processes; values that do not fit their column are dead-lettered one by one; the same on
//! S3-compatible storage (moto's server), whose conditional put refuses a second commit.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn sink_yaml(name: &str, input: &str, dir: &Path, roll: &str) -> String {
    format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
connectors:
  - name: {name}
    type: parquet_sink
    input: {input}
    group_id: {name}-g
    dlq_topic: {input}-dlq
    url: {dir}
    partition_by: [{{column: event_type}}, {{date: event_ts}}]
    roll: {roll}
    max_in_flight: 2
    batch: {{ max_records: 500, linger: 20ms }}
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
"#,
        dir = dir.display()
    )
}

/// Records in committed files, summed over the log of every partition of `topic`.
async fn committed_records_at(url: &str, topic: &str, partitions: i32) -> u64 {
    let log = connectd_sinks::parquet::open_log(url).expect("log");
    let mut n = 0;
    for p in 0..partitions {
        for c in log.commits(topic, p).await.unwrap_or_default() {
            n += c.records;
        }
    }
    n
}

async fn wait_committed_records(dir: &Path, topic: &str, parts: i32, at_least: u64) -> u64 {
    wait_committed_at(&dir.display().to_string(), topic, parts, at_least).await
}

async fn wait_committed_at(url: &str, topic: &str, parts: i32, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = committed_records_at(url, topic, parts).await;
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The venv's Python (scripts/dev-services.sh installs DuckDB and moto into it).
fn python() -> String {
    std::env::var("CONNECTD_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.dev/venv/bin/python").into())
}

/// Runs a DuckDB query over every Parquet file under `dir`; one JSON object per row.
fn duckdb(dir: &Path, sql: &str) -> Vec<Value> {
    let python = python();
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
glob = (sys.argv[1] + "/**/*.parquet").replace("'", "''")
con.execute(f"CREATE VIEW files AS SELECT * FROM read_parquet('{glob}', hive_partitioning = false, filename = true)")
cur = con.execute(sys.argv[2])
cols = [d[0] for d in cur.description]
for row in cur.fetchall():
    print(json.dumps(dict(zip(cols, row)), default=str))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, &dir.display().to_string(), sql])
        .output()
        .expect("python with duckdb (scripts/dev-services.sh up installs it)");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("row json"))
        .collect()
}

/// Every input record exactly once, with its values, in the folder its values name; every
/// file on disk is named by the log.
async fn assert_exact(dir: &Path, topic: &str, parts: i32, values: &[String]) {
    let rows = duckdb(
        dir,
        "SELECT idempotency_key, event_type, user_id, payload, \
                strftime(event_ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') AS ts, filename \
         FROM files ORDER BY idempotency_key",
    );
    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    for v in values {
        let v: Value = serde_json::from_str(v).expect("json");
        want.insert(v["idempotency_key"].as_str().expect("key").to_string(), v);
    }
    assert_eq!(rows.len(), want.len(), "rows in all files vs records sent");
    let mut seen = BTreeSet::new();
    for r in &rows {
        let key = r["idempotency_key"].as_str().expect("key");
        assert!(seen.insert(key.to_string()), "{key} stored twice");
        let w = &want[key];
        assert_eq!(r["event_type"], w["event_type"], "{key}");
        assert_eq!(r["user_id"], w["user_id"], "{key}");
        assert_eq!(r["ts"], w["event_ts"], "{key}");
        let payload: Value =
            serde_json::from_str(r["payload"].as_str().expect("payload text")).expect("json");
        assert_eq!(payload, w["payload"], "{key}");
        let folder = format!(
            "/event_type={}/date={}/",
            w["event_type"].as_str().expect("type"),
            &w["event_ts"].as_str().expect("ts")[..10]
        );
        let file = r["filename"].as_str().expect("filename");
        assert!(file.contains(&folder), "{key} in {file}, want {folder}");
    }
    let log = connectd_sinks::parquet::open_log(&dir.display().to_string()).expect("log");
    let mut named = BTreeSet::new();
    for p in 0..parts {
        let commits = log.commits(topic, p).await.expect("commits");
        for w in commits.windows(2) {
            assert_eq!(w[0].next, w[1].from, "the log of {topic}/{p} is a chain");
        }
        named.extend(commits.into_iter().flat_map(|c| c.files).map(|f| f.path));
    }
    let on_disk: BTreeSet<String> = log.data_files().await.expect("list").into_iter().collect();
    assert_eq!(on_disk, named, "files on disk vs files the log names");
}

fn cfg_name(cfg: &Path) -> String {
    let text = std::fs::read_to_string(cfg).expect("cfg");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("- name: "))
        .expect("name")
        .to_string()
}

/// A topic of `n` envelopes in `parts` partitions and a config archiving it to `url` (a
/// local folder under the returned temporary directory when `None`).
struct Setup {
    tmp: tempfile::TempDir,
    archive: std::path::PathBuf,
    input: String,
    values: Vec<String>,
    cfg: std::path::PathBuf,
}

async fn setup(tag: &str, parts: i32, n: usize, url: Option<&str>, roll: &str) -> Setup {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = url.map_or_else(|| tmp.path().join("archive"), std::path::PathBuf::from);
    let input = unique(&format!("pq-{tag}"));
    create_topic(&input, parts).await;
    let values = envelopes(&unique(&format!("pq{tag}")), n);
    produce(&input, &values).await;
    let cfg = write_file(
        tmp.path(),
        "c.yaml",
        &sink_yaml(&unique("pq"), &input, &archive, roll),
    );
    Setup {
        tmp,
        archive,
        input,
        values,
        cfg,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_mid_stream_every_record_is_in_exactly_one_file() {
    let Setup {
        tmp,
        archive,
        input,
        values,
        cfg,
    } = setup(
        "kill",
        3,
        30_000,
        None,
        "{ max_records: 1500, max_age: 500ms }",
    )
    .await;
    for stop_at in [3_000, 12_000, 21_000] {
        let mut c = Connectd::start(&cfg, &tmp.path().join("log"), &[]);
        let n = wait_committed_records(&archive, &input, 3, stop_at).await;
        assert!(n >= stop_at, "stalled at {n}:\n{}", c.log_text());
        c.kill9();
    }
    let c = Connectd::start(&cfg, &tmp.path().join("log"), &[]);
    let n = wait_committed_records(&archive, &input, 3, values.len() as u64).await;
    assert_eq!(
        n,
        values.len() as u64,
        "committed records:\n{}",
        c.log_text()
    );
    assert_exact(&archive, &input, 3, &values).await;
    let (_, status) = c.get(&format!("/connectors/{}", cfg_name(&cfg))).await;
    let s: Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(s["state"], "running", "{s}");
    // The next offsets the log gives are the partitions' ends.
    let log = connectd_sinks::parquet::open_log(&archive.display().to_string()).expect("log");
    let mut total = 0;
    for p in 0..3 {
        total += log
            .last(&input, p)
            .await
            .expect("log")
            .map_or(0, |c| c.next);
    }
    assert_eq!(total, values.len() as i64, "sum of the log's next offsets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_after_a_rebalance_and_resumes_from_the_log() {
    let Setup {
        tmp,
        archive,
        input,
        values,
        cfg,
    } = setup(
        "reb",
        4,
        20_000,
        None,
        "{ max_records: 1000, max_age: 300ms }",
    )
    .await;
    let mut a = Connectd::start(&cfg, &tmp.path().join("log-a"), &[]);
    let n = wait_committed_records(&archive, &input, 4, 4_000).await;
    assert!(n >= 4_000, "stalled at {n}:\n{}", a.log_text());
    let b = Connectd::start(&cfg, &tmp.path().join("log-b"), &[]);
    let n = wait_committed_records(&archive, &input, 4, 10_000).await;
    assert!(n >= 10_000, "stalled at {n}:\n{}", b.log_text());
    a.kill9();
    let n = wait_committed_records(&archive, &input, 4, values.len() as u64).await;
    assert_eq!(
        n,
        values.len() as u64,
        "committed records:\n{}",
        b.log_text()
    );
    assert_exact(&archive, &input, 4, &values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_fit_their_column_are_dead_lettered_one_by_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("archive");
    let input = unique("pq-poison");
    create_topic(&input, 1).await;
    let mut values = envelopes(&unique("pqp"), 1_000);
    let good = values.clone();
    let mut bad_ts: Value = serde_json::from_str(&values[0]).expect("json");
    bad_ts["idempotency_key"] = "bad-ts".into();
    bad_ts["event_ts"] = "yesterday".into();
    let mut bad_user: Value = serde_json::from_str(&values[0]).expect("json");
    bad_user["idempotency_key"] = "bad-user".into();
    bad_user["user_id"] = "nobody".into();
    let mut no_type: Value = serde_json::from_str(&values[0]).expect("json");
    no_type["idempotency_key"] = "no-type".into();
    no_type
        .as_object_mut()
        .expect("object")
        .remove("event_type");
    values.insert(10, bad_ts.to_string());
    values.insert(500, bad_user.to_string());
    values.insert(700, "not json".into());
    values.insert(900, no_type.to_string());
    produce(&input, &values).await;
    let cfg = write_file(
        tmp.path(),
        "c.yaml",
        &sink_yaml(
            &unique("pq"),
            &input,
            &archive,
            "{ max_records: 400, max_age: 300ms }",
        ),
    );
    let c = Connectd::start(&cfg, &tmp.path().join("log"), &[]);
    let n = wait_committed_records(&archive, &input, 1, good.len() as u64).await;
    assert_eq!(n, good.len() as u64, "{}", c.log_text());
    let dead = read_all(&format!("{input}-dlq"), 4, Duration::from_secs(60)).await;
    let mut classes: Vec<(i64, String)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["connectd.original.offset"]
                    .parse::<i64>()
                    .unwrap_or(-1),
                d.headers
                    .get("connectd.error.class")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    classes.sort();
    let classes: Vec<&str> = classes.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        classes,
        [
            "invalid_value",
            "invalid_value",
            "invalid_json",
            "missing_field"
        ],
        "{dead:?}"
    );
    assert_exact(&archive, &input, 1, &good).await;
    // The log ends at the partition's end.
    let log = connectd_sinks::parquet::open_log(&archive.display().to_string()).expect("log");
    let last = log.last(&input, 0).await.expect("log").expect("a commit");
    assert_eq!(last.next, values.len() as i64, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compatible_storage_gets_every_record_once_and_refuses_a_second_commit_at_an_offset() {
    use connectd_sinks::parquet::log::{Commit, Committed};
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    // A real S3 API server (moto's, which implements If-None-Match) on a free port.
    let port = free_port();
    let moto = Path::new(&python()).with_file_name("moto_server");
    let mut server = std::process::Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (scripts/dev-services.sh up installs it)");
    let endpoint = format!("127.0.0.1:{port}");
    wait_port(&endpoint);
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT", format!("http://{endpoint}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    // The log is read from this process too; no other test here reads AWS_*.
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let (code, body) = http(&endpoint, "PUT", "/archive-bucket").await;
    assert_eq!(code, 200, "create bucket: {body}");

    // put-if-absent through object_store against the S3 API: one commit per offset.
    let race = connectd_sinks::parquet::open_log("s3://archive-bucket/race").expect("log");
    let commit = |next: i64, writer: &str| Commit {
        topic: "t".into(),
        partition: 0,
        from: 0,
        next,
        first_offset: 0,
        last_offset: next - 1,
        records: next as u64,
        files: vec![],
        writer: writer.into(),
    };
    assert_eq!(
        race.commit(&commit(300, "a")).await.expect("commit"),
        Committed::Yes
    );
    match race.commit(&commit(250, "b")).await.expect("commit") {
        Committed::Lost(other) => assert_eq!(other.writer, "a"),
        Committed::Yes => panic!("the store accepted two commits at one offset"),
    }

    // The pipeline with a kill -9 in the middle.
    let url = "s3://archive-bucket/events";
    let Setup {
        tmp,
        input,
        values,
        cfg,
        ..
    } = setup(
        "s3",
        2,
        8_000,
        Some(url),
        "{ max_records: 1000, max_age: 300ms }",
    )
    .await;
    let mut c = Connectd::start(&cfg, &tmp.path().join("log"), &env);
    let n = wait_committed_at(url, &input, 2, 3_000).await;
    assert!(n >= 3_000, "stalled at {n}:\n{}", c.log_text());
    c.kill9();
    let c = Connectd::start(&cfg, &tmp.path().join("log"), &env);
    let n = wait_committed_at(url, &input, 2, values.len() as u64).await;
    assert_eq!(n, values.len() as u64, "{}", c.log_text());
    // Read back: every object under the prefix copied to a local folder, then DuckDB.
    let log = connectd_sinks::parquet::open_log(url).expect("log");
    let copy = tmp.path().join("copy");
    let prefix = object_store::path::Path::from("events");
    let objects: Vec<object_store::ObjectMeta> = log
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .expect("list");
    assert!(objects.len() > 8, "{} objects", objects.len());
    for o in objects {
        let rel = o
            .location
            .as_ref()
            .strip_prefix("events/")
            .expect("under the prefix");
        let bytes = log
            .store()
            .get(&o.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let to = copy.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::write(&to, &bytes).expect("write");
    }
    assert_exact(&copy, &input, 2, &values).await;
    let _ = server.kill();
    let _ = server.wait();
}

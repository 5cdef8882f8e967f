//! `docs/writing-a-sink.md`, followed as a new author would (issue 23): every code block under a
//! `` `my-sink/...`: `` or `` `my-connectd/...`: `` line is written to that file, beside a
//! checkout of this repository (a symlink), and then:
//!
//! * the sink library builds, and its dependency tree has no Kafka client and no SQL driver;
//! * its compliance-harness test passes;
//! * the custom binary builds, lists the sink, validates the guide's YAML, produces the guide's
//!   test records with `produce`, runs the pipeline, and the file and the dead-letter topic hold
//!   what the guide says.
//!
//! The crates are built with the workspace's `Cargo.lock` (offline, same versions) into
//! `target/guide`. Needs the broker of `scripts/dev-services.sh`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{brokers, free_port, unique};

const GUIDE: &str = include_str!("../../docs/writing-a-sink.md");

/// The files the guide spells out: path → text (blocks for one path concatenated in order).
fn files_of(guide: &str) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let lines: Vec<&str> = guide.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        // `path`: or `path` (continued):
        let path = l
            .strip_prefix('`')
            .and_then(|r| r.split_once('`'))
            .filter(|(_, rest)| matches!(rest.trim(), ":" | "(continued):"))
            .map(|(p, _)| p)
            .filter(|p| p.starts_with("my-sink/") || p.starts_with("my-connectd/"));
        if let Some(path) = path {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().is_empty() {
                j += 1;
            }
            if j < lines.len() && lines[j].starts_with("```") {
                let mut body = String::new();
                j += 1;
                while j < lines.len() && !lines[j].starts_with("```") {
                    body.push_str(lines[j]);
                    body.push('\n');
                    j += 1;
                }
                let f = files.entry(path.to_string()).or_default();
                if !f.is_empty() {
                    f.push('\n');
                }
                f.push_str(&body);
                i = j;
            }
        }
        i += 1;
    }
    files
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", workspace().join("target/guide"))
        // A second build of the whole dependency tree: without debug info and incremental
        // files it takes about a third of the disk (CI machines are not large).
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0")
        .env_remove("CARGO_MANIFEST_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs");
    if !out.status.success() {
        // The error is at the end of a long list of `Compiling …` lines: show the end.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let df = Command::new("df")
            .args(["-h", "."])
            .current_dir(workspace())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "cargo {args:?} in {} failed ({}):\n{}\n… last lines of stderr:\n{tail}\ndisk:\n{df}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
    }
    out
}

#[test]
fn the_guide_parses_into_two_crates() {
    let files = files_of(GUIDE);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "my-connectd/Cargo.toml",
            "my-connectd/connectors.yaml",
            "my-connectd/records.jsonl",
            "my-connectd/src/main.rs",
            "my-sink/Cargo.toml",
            "my-sink/src/lib.rs",
            "my-sink/tests/harness.rs",
        ]
    );
    // The sink crate keeps the promise of the guide's first line.
    let sink_toml = &files["my-sink/Cargo.toml"];
    assert!(!sink_toml.contains("connectd = "), "{sink_toml}");
    assert!(!sink_toml.contains("rdkafka"), "{sink_toml}");
}

#[test]
fn a_crate_built_from_the_guide_as_written_passes_the_harness_and_runs_in_a_pipeline() {
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path();
    std::os::unix::fs::symlink(workspace(), work.join("connectd")).expect("symlink");
    for (path, text) in files_of(GUIDE) {
        let p = work.join(&path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    for krate in ["my-sink", "my-connectd"] {
        std::fs::copy(
            workspace().join("Cargo.lock"),
            work.join(krate).join("Cargo.lock"),
        )
        .expect("lock");
    }
    let sink = work.join("my-sink");
    let bin_crate = work.join("my-connectd");

    // The library alone: no Kafka client, no SQL driver, no C toolchain.
    let tree = cargo(
        &sink,
        &["tree", "--offline", "-e", "normal", "--prefix", "none"],
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    for heavy in ["rdkafka", "sqlx", "axum", "connectd "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(heavy)),
            "my-sink depends on {heavy}:\n{tree}"
        );
    }
    // The harness, as the guide's test runs it.
    let test = cargo(&sink, &["test", "--offline", "--", "--nocapture"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        text.contains("json_lines_keeps_the_sink_contract ... ok"),
        "{text}"
    );
    assert!(
        !text.contains("warning:"),
        "the guide's code has warnings:\n{text}"
    );
    assert!(text.contains("[pass] survives_unclean_drop"), "{text}");
    assert!(
        text.contains("[skip] concurrent_instances"),
        "SINGLE_INSTANCE skips it: {text}"
    );
    assert!(
        text.contains("harness: 8 passed, 0 failed, 1 skipped"),
        "{text}"
    );

    // The custom binary and the pipeline of step 9.
    cargo(&bin_crate, &["build", "--offline"]);
    let bin = workspace().join("target/guide/debug/my-connectd");
    let input = unique("guide-in");
    let dlq = unique("guide-dlq");
    let out_file = work.join("out.jsonl");
    let envs = [
        ("KAFKA_BROKERS", brokers()),
        ("INPUT_TOPIC", input.clone()),
        ("DLQ_TOPIC", dlq.clone()),
        ("OUT", out_file.display().to_string()),
        ("CONNECTD_ADMIN", format!("127.0.0.1:{}", free_port())),
    ];
    let run = |args: &[&str]| -> Output {
        let o = Command::new(&bin)
            .args(args)
            .current_dir(&bin_crate)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("my-connectd runs");
        assert!(
            o.status.success(),
            "my-connectd {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let plugins = run(&["plugins"]);
    assert!(String::from_utf8_lossy(&plugins.stdout)
        .lines()
        .any(|l| l.starts_with("json_lines ")));
    run(&["validate", "-c", "connectors.yaml"]);
    run(&[
        "produce",
        &input,
        "--envelope",
        "--file",
        "records.jsonl",
        "--partitions",
        "3",
    ]);
    let mut pipeline = Command::new(&bin)
        .args(["run", "-c", "connectors.yaml"])
        .current_dir(&bin_crate)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CONNECTD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let started = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&out_file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 2 || started.elapsed() > Duration::from_secs(90) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let dead = run(&[
        "tail",
        &dlq,
        "--from-beginning",
        "--max",
        "1",
        "--idle-exit",
        "60s",
    ]);
    let _ = Command::new("kill")
        .args(["-TERM", &pipeline.id().to_string()])
        .status();
    let _ = pipeline.wait();
    let mut keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["e-1", "e-2"], "out.jsonl: {lines:?}");
    let dead: serde_json::Value =
        serde_json::from_slice(&dead.stdout).expect("one dead letter as JSON");
    assert_eq!(
        dead["headers"]["connectd.error.class"], "no_idempotency_key",
        "{dead}"
    );
    assert_eq!(dead["value"]["event_type"], "no key, so a dead letter");
}

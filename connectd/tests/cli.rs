//! The `connectd` binary's commands and exit codes.

mod common;

use common::{brokers, unique};
use std::io::Write;
use std::process::Command;

fn connectd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_connectd"));
    c.env_remove("CONNECTD_CONFIG");
    c
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

const VALID: &str = "\
connectors:
  - name: copy
    type: forward
    input: a
    output: b
  - name: out
    type: file_sink
    input: b
    path: /tmp/connectd-cli-test.jsonl
";

#[test]
fn validate_exits_0_on_a_valid_file() {
    let f = write_config(VALID);
    let out = connectd()
        .args(["validate", "-c"])
        .arg(f.path())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok (2 connectors)\n"));
}

#[test]
fn validate_reports_three_mistakes_and_exits_2() {
    let text = VALID
        .replace("    output: b\n", "    output: b\n    colour: red\n")
        .replace("type: file_sink", "type: file_snik")
        .replace("connectors:\n", "kafka:\n  brokers: [1]\nconnectors:\n");
    let f = write_config(&text);
    let out = connectd()
        .args(["validate", "--config"])
        .arg(f.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration errors:"), "{err}");
    assert!(
        err.contains("  - line 2: kafka.brokers: [1] is not of type \"string\"\n"),
        "{err}"
    );
    assert!(
        err.contains("  - line 8: connector \"copy\": connectors[0].colour: unknown setting\n"),
        "{err}"
    );
    assert!(err.contains("  - line 10: connector \"out\": connectors[1].type: unknown connector type \"file_snik\""), "{err}");
}

#[test]
fn validate_on_a_missing_file_exits_2() {
    let out = connectd()
        .args(["validate", "-c", "/nonexistent/connectors.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/connectors.yaml")
    );
}

#[test]
fn bad_usage_exits_2_and_help_exits_0() {
    assert_eq!(
        connectd()
            .arg("frobnicate")
            .output()
            .expect("run")
            .status
            .code(),
        Some(2)
    );
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["validate", "--help"],
        &["schema", "--help"],
        &["plugins", "--help"],
    ] {
        let out = connectd().args(sub).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{sub:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: connectd"),
            "{sub:?}"
        );
    }
}

#[test]
fn plugins_lists_types_kinds_and_descriptions() {
    let out = connectd().arg("plugins").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let forward = text
        .lines()
        .find(|l| l.starts_with("forward "))
        .expect("forward listed");
    assert!(
        forward.contains(" transform ") && forward.contains("Copies records"),
        "{forward}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("file_sink ") && l.contains(" sink ")),
        "{text}"
    );
}

#[test]
fn schema_is_json_schema_that_accepts_the_repository_connectors_yaml() {
    let out = connectd().arg("schema").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../connectors.yaml");
    let text = std::fs::read_to_string(path).expect("connectors.yaml at the repository root");
    // The file's ${VAR:-default}s, expanded with their defaults.
    let expanded =
        connectd::config::env::expand(&text, |_| None).expect("every variable has a default");
    let value: serde_json::Value = serde_yaml::from_str(&expanded).expect("yaml");
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_committed_schema_file_is_current() {
    let out = connectd().arg("schema").output().expect("run");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/connectors.schema.json"
    );
    let committed = std::fs::read_to_string(path).expect("docs/connectors.schema.json");
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "docs/connectors.schema.json is stale: run `cargo run -p connectd -- schema > docs/connectors.schema.json`"
    );
}

fn connectd_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_connectd"))
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("output")
}

#[test]
fn produce_and_tail_move_json_lines_with_keys_and_headers_through_a_topic() {
    let topic = unique("cli-produce");
    // A bad line refuses the whole input: nothing produced.
    let bad = connectd_stdin(
        &["produce", &topic, "--envelope"],
        "{\"value\":{\"n\":0}}\n{\"value\":1,\"oops\":2}\n",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 2: unknown field \"oops\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let lines =
        "{\"key\":\"u1\",\"headers\":{\"connectd.idempotency_key\":\"i-1\"},\"value\":{\"n\":1}}\n\
                 \n\
                 {\"key\":\"u2\",\"value\":{\"n\":2}}\n\
                 {\"value\":\"plain text\"}\n";
    let ok = connectd_stdin(
        &[
            "produce",
            &topic,
            "--envelope",
            "--header",
            "source=cli",
            "--partitions",
            "2",
        ],
        lines,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("produced 3 records"));
    let out = connectd_stdin(
        &[
            "tail",
            &topic,
            "--from-beginning",
            "--max",
            "3",
            "--idle-exit",
            "30s",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    let by_value = |v: serde_json::Value| {
        got.iter()
            .find(|l| l["value"] == v)
            .cloned()
            .unwrap_or_default()
    };
    let first = by_value(serde_json::json!({"n": 1}));
    assert_eq!(first["key"], "u1");
    assert_eq!(first["headers"]["connectd.idempotency_key"], "i-1");
    assert_eq!(first["headers"]["source"], "cli");
    assert_eq!(first["topic"], topic.as_str());
    assert_eq!(
        by_value(serde_json::json!("plain text"))["key"],
        serde_json::Value::Null
    );
}

#[test]
fn contracts_check_lists_every_violation_and_exits_2_or_0_when_compatible() {
    let dir = tempfile::tempdir().expect("tmp");
    let old = dir.path().join("v1.json");
    let new = dir.path().join("v2.json");
    let ok = dir.path().join("v2-ok.json");
    std::fs::write(&old, r#"{"type":"object","properties":{"order_id":{"type":"string"},"amount":{"type":"number"},"coupon":{"type":"string"}},"required":["order_id"]}"#).expect("old");
    std::fs::write(&new, r#"{"type":"object","properties":{"order_id":{"type":"string"},"amount":{"type":"string"},"promo":{"type":"string"}},"required":["order_id","amount"]}"#).expect("new");
    std::fs::write(&ok, r#"{"type":"object","properties":{"order_id":{"type":"string"},"amount":{"type":"number"},"coupon":{"type":"string"},"note":{"type":"string"}},"required":["order_id"]}"#).expect("ok");
    let check = |a: &std::path::Path, b: &std::path::Path| {
        connectd()
            .args(["contracts", "check"])
            .arg(a)
            .arg(b)
            .output()
            .expect("run")
    };
    let out = check(&old, &new);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("3 violation(s)"), "{text}");
    assert!(text.contains("/amount: retyped"), "{text}");
    assert!(text.contains("/amount: made_required"), "{text}");
    assert!(text.contains("/coupon: removed"), "{text}");
    let out = check(&old, &ok);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": compatible\n"));
}

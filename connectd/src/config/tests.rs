//! Configuration loading: each kind of mistake, with the exact message.

use super::*;
use crate::Builtin;

fn env(name: &str) -> Option<String> {
    match name {
        "BROKERS" => Some("b1:9092,b2:9092".into()),
        "OUT" => Some("/tmp/out.jsonl".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, Vec<String>> {
    Config::parse(text, &Registry::builtin(), env)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

const GOOD: &str = "\
kafka:
  brokers: ${BROKERS}
  properties:
    client.id: test
    socket.keepalive.enable: true
topics:
  - name: copy.out
    partitions: 3
connectors:
  - name: copy
    type: forward
    input: in.topic
    output: copy.out
    drop_headers: [secret]
  - name: to-file
    type: file_sink
    input: [copy.out]
    path: ${OUT}
    dlq_topic: file.dlq
    batch:
      max_records: 10
      linger: 5ms
";

#[test]
fn a_good_file_loads_with_defaults() {
    let c = load(GOOD).expect("valid");
    assert_eq!(c.global.kafka.brokers, "b1:9092,b2:9092");
    assert_eq!(c.global.kafka.properties["client.id"].to_string(), "test");
    assert_eq!(
        c.global.kafka.properties["socket.keepalive.enable"].to_string(),
        "true"
    );
    assert_eq!(c.global.admin.listen, "127.0.0.1:9000");
    assert_eq!(c.connectors.len(), 2);
    let copy = &c.connectors[0];
    assert_eq!(copy.kind(), ConnectorKind::Transform);
    assert_eq!(copy.output.as_deref(), Some("copy.out"));
    let consumer = copy.consumer.as_ref().expect("consumer settings");
    assert_eq!(consumer.group("copy"), "connectd-copy");
    assert_eq!(consumer.batch.max_records, 2000);
    let file = &c.connectors[1];
    let fc = file.consumer.as_ref().expect("consumer");
    assert_eq!(fc.batch.max_records, 10);
    assert_eq!(fc.batch.linger.as_std().as_millis(), 5);
    assert_eq!(file.topics(), ["copy.out", "file.dlq"]);
}

#[test]
fn unknown_top_level_key() {
    let text = GOOD.replace("topics:\n", "topicz: 1\ntopics:\n");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 6: topicz: unknown setting"]
    );
}

#[test]
fn unknown_connector_setting_names_connector_path_and_line() {
    let text = GOOD.replace(
        "    drop_headers: [secret]\n",
        "    drop_headers: [secret]\n    colour: blue\n",
    );
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 15: connector \"copy\": connectors[0].colour: unknown setting"]
    );
}

#[test]
fn wrong_type_in_a_nested_setting() {
    let text = GOOD.replace("max_records: 10", "max_records: lots");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 21: connector \"to-file\": connectors[1].batch.max_records: \"lots\" is not of type \"integer\""]
    );
}

#[test]
fn missing_required_setting() {
    let text = GOOD.replace("    input: in.topic\n", "");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 10: connector \"copy\": connectors[0]: \"input\" is a required property"]
    );
}

#[test]
fn unknown_type_lists_the_known_ones() {
    let text = GOOD.replace("type: forward", "type: fowrard");
    let errs = load(&text).expect_err("invalid");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("line 11: connector \"copy\": connectors[0].type: unknown connector type \"fowrard\"; known types: "),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("forward"), "{}", errs[0]);
}

#[test]
fn duplicate_names() {
    let text = GOOD.replace("name: to-file", "name: copy");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 15: connector \"copy\": connectors[1].name: duplicate connector name (first used by connectors[0])"]
    );
}

#[test]
fn unset_variable_names_the_variable_and_line_and_defaults_work() {
    let text = GOOD.replace("${OUT}", "${OUT_PATH}");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 18: environment variable OUT_PATH is not set and has no default (write ${OUT_PATH:-default} to give one)"]
    );
    let text = GOOD.replace("${OUT}", "${OUT_PATH:-/tmp/x.jsonl}");
    assert!(load(&text).is_ok());
}

#[test]
fn three_mistakes_give_three_errors() {
    let text = GOOD
        .replace("type: forward", "type: forward\n    bogus: 1")
        .replace("max_records: 10", "max_records: 0")
        .replace(
            "  brokers: ${BROKERS}\n",
            "  brokers: ${BROKERS}\n  brokerz: x\n",
        );
    let errs = load(&text).expect_err("invalid");
    assert_eq!(
        errs,
        [
            "line 3: kafka.brokerz: unknown setting",
            "line 13: connector \"copy\": connectors[0].bogus: unknown setting",
            "line 23: connector \"to-file\": connectors[1].batch.max_records: 0 is less than the minimum of 1",
        ]
    );
}

#[test]
fn hostile_topic_names_are_rejected() {
    let text = GOOD.replace("output: copy.out", "output: \"x; drop table y\"");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 13: connector \"copy\": connectors[0].output: \"x; drop table y\" does not match \"^[A-Za-z0-9._-]{1,249}$\""]
    );
}

#[test]
fn output_equal_to_input_is_a_loop() {
    let text = GOOD.replace("output: copy.out", "output: in.topic");
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 13: connector \"copy\": connectors[0].output: must differ from the input topic (that would loop)"]
    );
}

#[test]
fn plugin_validate_issues_carry_their_path() {
    let text = GOOD.replace(
        "    drop_headers: [secret]\n",
        "    rename_headers:\n      a: \"\"\n",
    );
    assert_eq!(
        load(&text).expect_err("invalid"),
        ["line 15: connector \"copy\": connectors[0].rename_headers.a: header names must not be empty"]
    );
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let errs = load("connectors:\n  - name: a\n   type: [\n").expect_err("invalid");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("line 3: invalid YAML: "), "{}", errs[0]);
}

#[test]
fn connectors_must_be_a_list_of_mappings_with_names() {
    assert_eq!(
        load("kafka: {}\n").expect_err("x"),
        ["missing `connectors:` (a list of connector blocks)"]
    );
    assert_eq!(
        load("connectors:\n  - type: forward\n").expect_err("x"),
        ["line 2: connectors[0]: connectors[0] has no `name`"]
    );
    assert_eq!(
        load("connectors: 3\n").expect_err("x"),
        ["line 1: connectors: must be a list of connector blocks"]
    );
}

#[test]
fn redacted_block_hides_secrets_and_url_passwords() {
    let text = "connectors:\n  - name: f\n    type: file_sink\n    input: t\n    path: \"postgres://u:hunter2@h/db\"\n";
    let c = load(text).expect("valid");
    let shown = c.connectors[0].redacted_block().to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
}

#[test]
fn the_whole_file_schema_accepts_the_good_file_and_rejects_unknown_types() {
    let schema = schema::file_schema(&Registry::builtin());
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let expanded = env::expand(GOOD, env).expect("expand");
    let value: Value = serde_yaml::from_str(&expanded).expect("yaml");
    assert!(
        validator.is_valid(&value),
        "{:?}",
        validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let bad: Value =
        serde_yaml::from_str(&expanded.replace("type: forward", "type: nope")).expect("yaml");
    assert!(!validator.is_valid(&bad));
    let bad: Value =
        serde_yaml::from_str(&expanded.replace("linger: 5ms", "linger: soon")).expect("yaml");
    assert!(!validator.is_valid(&bad));
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No text makes the loader panic; it answers a config or errors.
        #[test]
        fn the_loader_never_panics(text in "(connectors:|kafka:|  - name: |    type: |    input: |\\$\\{[A-Z_]{0,5}(:-[a-z]{0,3})?\\}?|[ a-z:\\[\\]{},\n#'\"-]){0,40}") {
            let _ = Config::parse(&text, &Registry::builtin(), |_| None);
        }

        #[test]
        fn env_expansion_never_panics(text in ".{0,200}") {
            let _ = env::expand(&text, |k| (k.len() % 2 == 0).then(|| "v".to_string()));
        }
    }
}

mod single_instance {
    use super::*;
    use connector_core::prelude::*;

    struct Nop;
    #[async_trait]
    impl Sink for Nop {
        async fn write(&mut self, b: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
            Ok(vec![RecordOutcome::Delivered; b.len()])
        }
    }

    /// One file.
    #[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
    struct OneFile {
        /// The file.
        #[allow(dead_code)]
        path: String,
    }
    struct OneFilePlugin;
    #[async_trait]
    impl SinkPlugin for OneFilePlugin {
        const TYPE: &'static str = "one_file";
        const DESCRIPTION: &'static str = "writes one file";
        const SINGLE_INSTANCE: bool = true;
        type Config = OneFile;
        async fn build(_: OneFile, _: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
            Ok(Box::new(Nop))
        }
    }

    fn load_with(in_flight: &str) -> Result<Config, Vec<String>> {
        let mut r = Registry::builtin();
        r.register_sink::<OneFilePlugin>();
        let text = format!("kafka:\n  brokers: b:9092\nconnectors:\n  - name: f\n    type: one_file\n    input: t\n    path: /tmp/x\n{in_flight}");
        Config::parse(&text, &r, env).map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_single_instance_sink_runs_one_instance_and_refuses_more() {
        let c = load_with("").expect("valid");
        let consumer = c.connectors[0].consumer.as_ref().expect("consumer");
        assert_eq!(consumer.max_in_flight, 1, "unset max_in_flight becomes 1");
        assert!(load_with("    max_in_flight: 1\n").is_ok());
        assert_eq!(
            load_with("    max_in_flight: 3\n").err().unwrap_or_default(),
            ["line 8: connector \"f\": connectors[0].max_in_flight: one_file runs as a single instance (it writes to one file or keeps state in memory); max_in_flight must be 1, not 3"]
        );
    }

    /// Clashes with the runtime's `retry`.
    #[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
    struct Clash {
        /// Mine.
        #[allow(dead_code)]
        retry: u32,
    }
    struct ClashPlugin;
    #[async_trait]
    impl SinkPlugin for ClashPlugin {
        const TYPE: &'static str = "clash";
        const DESCRIPTION: &'static str = "clashes";
        type Config = Clash;
        async fn build(_: Clash, _: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
            Ok(Box::new(Nop))
        }
    }

    #[test]
    fn a_build_with_a_refused_plugin_refuses_every_command() {
        let mut r = Registry::builtin();
        r.register_sink::<ClashPlugin>();
        assert_eq!(r.refused().len(), 1);
        assert_eq!(
            crate::cli::run_command(crate::cli::Command::Plugins, r),
            crate::cli::EXIT_USAGE
        );
    }
}

#[test]
fn only_sinks_that_publish_accept_an_output_topic() {
    let sinks = "\
kafka:
  brokers: ${BROKERS}
connectors:
  - name: windows
    type: aggregate
    input: events
    output: windows.closed
    database_url: postgres://db/x
    table: per_minute
    window: { tumbling: 1m }
    aggregates: { events: count }
  - name: rows
    type: postgres_sink
    input: events
    output: rows.out
    database_url: postgres://db/x
";
    assert_eq!(
        load(sinks).expect_err("postgres_sink has no output"),
        ["line 15: connector \"rows\": connectors[1].output: unknown setting"]
    );
    let c = load(&sinks.replace("    output: rows.out\n", "")).expect("aggregate may publish");
    assert_eq!(c.connectors[0].output.as_deref(), Some("windows.closed"));
}

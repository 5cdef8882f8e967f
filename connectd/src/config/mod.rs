//! Loading `connectors.yaml` (SPEC §3).
//!
//! The steps, each collecting every problem before giving up:
//!
//! 1. expand `${VAR}` / `${VAR:-default}` ([`env`]);
//! 2. parse YAML and index the line of every setting ([`lines`]);
//! 3. validate the top level and each connector's block against their JSON Schemas
//!    ([`schema`]) — unknown keys, wrong types, missing settings;
//! 4. deserialize into typed settings and run each plugin's pure `validate`;
//! 5. cross-checks: unique names, unknown `type`s, topic names.
//!
//! Every [`ConfigError`] names the connector (when there is one), the path of the setting and
//! the line.

pub mod env;
pub mod lines;
pub mod schema;
pub mod settings;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use connector_core::{ConnectorKind, ErasedConfig, PluginDescriptor, Registry};
use serde_json::{Map, Value};

use self::lines::LineIndex;
pub use self::settings::{
    AdminSettings, BatchSettings, ConsumerSettings, DlqBreakerSettings, GlobalSettings,
    KafkaSettings, PropertyValue, RetrySettings, StartFrom, TopicSettings, Topics,
};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The connector's `name` (or `connectors[i]` when it has none), if the problem is inside
    /// a connector block.
    pub connector: Option<String>,
    /// Dotted path of the setting (`connectors[1].batch.max_records`); empty for the file.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(c) = &self.connector {
            write!(f, "connector {c:?}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// A validated connector declaration.
#[derive(Clone)]
pub struct ConnectorSpec {
    /// Unique name.
    pub name: String,
    /// Its plugin.
    pub plugin: PluginDescriptor,
    /// Whether to run it (`enabled: false` keeps it declared but stopped).
    pub enabled: bool,
    /// Default output topic (transforms and sources).
    pub output: Option<String>,
    /// Consumer settings (sinks and transforms).
    pub consumer: Option<ConsumerSettings>,
    /// The plugin's own parsed settings.
    pub config: ErasedConfig,
    /// The connector block as written (after `${VAR}` expansion); for status output only
    /// through [`redacted_block`](Self::redacted_block).
    block: Value,
    redact: BTreeSet<String>,
}

impl fmt::Debug for ConnectorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorSpec")
            .field("name", &self.name)
            .field("type", &self.plugin.type_name())
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl ConnectorSpec {
    /// Source, transform or sink.
    pub fn kind(&self) -> ConnectorKind {
        self.plugin.kind()
    }

    /// The block with secret settings (schema format `password`/`Secret`, or names that look
    /// like secrets) and URL passwords replaced by `***`.
    pub fn redacted_block(&self) -> Value {
        redact_value(&self.block, &self.redact)
    }

    /// Every topic this connector reads or writes.
    pub fn topics(&self) -> Vec<String> {
        let mut t = Vec::new();
        if let Some(c) = &self.consumer {
            t.extend(c.input.to_vec());
            t.extend(c.dlq_topic.clone());
        }
        t.extend(self.output.clone());
        t
    }
}

fn redact_value(v: &Value, secret_keys: &BTreeSet<String>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let looks_secret = secret_keys.contains(k) || is_secret_name(k);
                    let v = if looks_secret && !v.is_null() {
                        Value::String("***".into())
                    } else {
                        redact_value(v, secret_keys)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| redact_value(v, secret_keys)).collect()),
        Value::String(s) => Value::String(connector_core::config::redact_url(s)),
        other => other.clone(),
    }
}

fn is_secret_name(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "api_key",
        "apikey",
        "api_keys",
        "credentials",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A loaded, validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Top-level settings.
    pub global: GlobalSettings,
    /// Connectors in file order.
    pub connectors: Vec<ConnectorSpec>,
}

/// Names of settings every connector has, handled by the runtime.
pub const RESERVED_KEYS: &[&str] = &["name", "type", "enabled", "output"];

fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

struct Ctx<'a> {
    lines: &'a LineIndex,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn push(&mut self, connector: Option<&str>, pointer: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            connector: connector.map(str::to_string),
            path: pointer_to_path(pointer),
            line: self.lines.line_of(pointer),
            message: message.into(),
        });
    }

    /// Validates `instance` (found at `base` pointer) against `schema`, recording errors.
    fn check_schema(
        &mut self,
        connector: Option<&str>,
        base: &str,
        schema: &Value,
        instance: &Value,
    ) -> bool {
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => v,
            Err(e) => {
                self.push(
                    connector,
                    base,
                    format!("internal error: invalid schema: {e}"),
                );
                return false;
            }
        };
        let mut ok = true;
        for err in validator.iter_errors(instance) {
            ok = false;
            let at = format!("{base}{}", err.instance_path().as_str());
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                err.kind()
            {
                for key in unexpected {
                    self.push(connector, &format!("{at}/{key}"), "unknown setting");
                }
                continue;
            }
            self.push(connector, &at, err.to_string());
        }
        ok
    }
}

impl Config {
    /// Reads and validates `path` with the process environment.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                connector: None,
                path: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse(&text, registry, |k| std::env::var(k).ok())
    }

    /// Validates YAML `text`, expanding variables with `lookup`.
    pub fn parse(
        text: &str,
        registry: &Registry,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let file_error = |line, message: String| ConfigError {
            connector: None,
            path: String::new(),
            line,
            message,
        };
        let expanded = env::expand(text, lookup).map_err(|problems| {
            ConfigErrors(
                problems
                    .into_iter()
                    .map(|p| match p {
                        env::EnvProblem::Unset(u) => file_error(
                            Some(u.line),
                            format!("environment variable {} is not set and has no default (write ${{{}:-default}} to give one)", u.name, u.name),
                        ),
                        env::EnvProblem::Bad(b) => file_error(
                            Some(b.line),
                            format!("malformed variable reference {:?}", b.text),
                        ),
                    })
                    .collect(),
            )
        })?;
        let mut yaml: serde_yaml::Value = serde_yaml::from_str(&expanded).map_err(|e| {
            let line = e.location().map(|l| l.line());
            ConfigErrors(vec![file_error(line, format!("invalid YAML: {e}"))])
        })?;
        yaml.apply_merge().map_err(|e| {
            ConfigErrors(vec![file_error(None, format!("invalid YAML merge: {e}"))])
        })?;
        let root: Value = serde_json::to_value(&yaml).map_err(|e| {
            ConfigErrors(vec![file_error(
                None,
                format!("unsupported YAML (keys must be strings): {e}"),
            )])
        })?;
        let lines = LineIndex::build(&expanded);
        let mut cx = Ctx {
            lines: &lines,
            errors: Vec::new(),
        };
        let config = validate_root(&mut cx, root, registry);
        match config {
            Some(c) if cx.errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(cx.errors)),
        }
    }
}

fn validate_root(cx: &mut Ctx<'_>, root: Value, registry: &Registry) -> Option<Config> {
    let Value::Object(mut top) = root else {
        cx.push(None, "", "the file must be a mapping with `connectors:` (and optionally `kafka:`, `admin:`, `topics:`)");
        return None;
    };
    let connectors = top.remove("connectors");
    let global_value = Value::Object(top);
    let global = if cx.check_schema(None, "", &schema::global_schema(), &global_value) {
        match serde_json::from_value::<GlobalSettings>(global_value) {
            Ok(g) => Some(g),
            Err(e) => {
                cx.push(None, "", e.to_string());
                None
            }
        }
    } else {
        None
    };
    if let Some(g) = &global {
        for (i, t) in g.topics.iter().enumerate() {
            if !valid_topic(&t.name) {
                cx.push(None, &format!("/topics/{i}/name"), format!("{:?} is not a valid topic name (letters, digits, '.', '_', '-'; at most 249)", t.name));
            }
        }
    }
    let items = match connectors {
        None => {
            cx.push(
                None,
                "",
                "missing `connectors:` (a list of connector blocks)",
            );
            Vec::new()
        }
        Some(Value::Array(items)) => items,
        Some(Value::Null) => Vec::new(),
        Some(_) => {
            cx.push(None, "/connectors", "must be a list of connector blocks");
            Vec::new()
        }
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut specs = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let base = format!("/connectors/{i}");
        if let Some(spec) = validate_connector(cx, &base, i, item, registry) {
            if let Some(first) = seen.get(&spec.name) {
                cx.push(
                    Some(&spec.name),
                    &format!("{base}/name"),
                    format!("duplicate connector name (first used by connectors[{first}])"),
                );
            } else {
                seen.insert(spec.name.clone(), i);
            }
            specs.push(spec);
        }
    }
    Some(Config {
        global: global?,
        connectors: specs,
    })
}

fn validate_connector(
    cx: &mut Ctx<'_>,
    base: &str,
    index: usize,
    item: Value,
    registry: &Registry,
) -> Option<ConnectorSpec> {
    let Value::Object(block) = item else {
        cx.push(
            None,
            base,
            "a connector must be a mapping with `name` and `type`",
        );
        return None;
    };
    let name = match block.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(_) => {
            cx.push(None, &format!("{base}/name"), "must be a non-empty string");
            return None;
        }
        None => {
            cx.push(None, base, format!("connectors[{index}] has no `name`"));
            return None;
        }
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        || name.len() > 200
    {
        cx.push(
            Some(&name),
            &format!("{base}/name"),
            "may only contain letters, digits, '.', '_' and '-' (at most 200)",
        );
    }
    let n = Some(name.as_str());
    let type_name = match block.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            cx.push(n, &format!("{base}/type"), "must be a string");
            return None;
        }
        None => {
            cx.push(n, base, "missing `type` (see `connectd plugins`)");
            return None;
        }
    };
    let Some(plugin) = registry.get(&type_name) else {
        let known: Vec<_> = registry.plugins().map(|p| p.type_name()).collect();
        cx.push(
            n,
            &format!("{base}/type"),
            format!(
                "unknown connector type {type_name:?}; known types: {}",
                known.join(", ")
            ),
        );
        return None;
    };
    let block_value = Value::Object(block.clone());
    let connector_schema = match schema::connector_schema(plugin) {
        Ok(s) => s,
        Err(msg) => {
            cx.push(n, base, msg);
            return None;
        }
    };
    if !cx.check_schema(n, base, &connector_schema, &block_value) {
        return None;
    }
    // Split the block: runtime settings vs. the plugin's own.
    let kind = plugin.kind();
    let consumer_keys = schema::consumer_keys();
    let mut consumer_map = Map::new();
    let mut plugin_map = Map::new();
    let mut enabled = true;
    let mut output = None;
    for (k, v) in block {
        match k.as_str() {
            "name" | "type" => {}
            "enabled" => enabled = v.as_bool().unwrap_or(true),
            "output" => output = v.as_str().map(str::to_string),
            _ if kind != ConnectorKind::Source && consumer_keys.contains(&k) => {
                consumer_map.insert(k, v);
            }
            _ => {
                plugin_map.insert(k, v);
            }
        }
    }
    let explicit_in_flight = consumer_map
        .get("max_in_flight")
        .and_then(Value::as_u64)
        .filter(|_| plugin.single_instance());
    let consumer = if kind == ConnectorKind::Source {
        None
    } else {
        match serde_json::from_value::<ConsumerSettings>(Value::Object(consumer_map)) {
            // A single-instance plugin: an unset max_in_flight means 1, a larger one is refused.
            Ok(mut c) if plugin.single_instance() => {
                match explicit_in_flight {
                    Some(m) if m > 1 => cx.push(
                        n,
                        &format!("{base}/max_in_flight"),
                        format!(
                            "{type_name} runs as a single instance (it writes to one file or keeps state in memory); max_in_flight must be 1, not {m}"
                        ),
                    ),
                    _ => c.max_in_flight = 1,
                }
                Some(c)
            }
            Ok(c) => Some(c),
            Err(e) => {
                cx.push(n, base, e.to_string());
                return None;
            }
        }
    };
    let mut topics: Vec<(String, String)> = Vec::new();
    if let Some(c) = &consumer {
        match &c.input {
            Topics::One(t) => topics.push((format!("{base}/input"), t.clone())),
            Topics::Many(v) => {
                if v.is_empty() {
                    cx.push(n, &format!("{base}/input"), "needs at least one topic");
                }
                topics.extend(
                    v.iter()
                        .enumerate()
                        .map(|(i, t)| (format!("{base}/input/{i}"), t.clone())),
                );
            }
        }
        if let Some(d) = &c.dlq_topic {
            topics.push((format!("{base}/dlq_topic"), d.clone()));
            if c.input.to_vec().contains(d) {
                cx.push(
                    n,
                    &format!("{base}/dlq_topic"),
                    "must differ from the input topic",
                );
            }
        }
        if c.retry.initial_backoff > c.retry.max_backoff {
            cx.push(
                n,
                &format!("{base}/retry/initial_backoff"),
                "must not exceed retry.max_backoff",
            );
        }
        if let Some(b) = &c.dlq_breaker {
            if !(b.max_ratio > 0.0 && b.max_ratio <= 1.0) {
                cx.push(
                    n,
                    &format!("{base}/dlq_breaker/max_ratio"),
                    "must be greater than 0 and at most 1",
                );
            }
        }
    }
    if let Some(o) = &output {
        topics.push((format!("{base}/output"), o.clone()));
        if consumer
            .as_ref()
            .is_some_and(|c| c.input.to_vec().contains(o))
        {
            cx.push(
                n,
                &format!("{base}/output"),
                "must differ from the input topic (that would loop)",
            );
        }
    }
    for (ptr, t) in topics {
        if !valid_topic(&t) {
            cx.push(
                n,
                &ptr,
                format!(
                    "{t:?} is not a valid topic name (letters, digits, '.', '_', '-'; at most 249)"
                ),
            );
        }
    }
    let config = match plugin.parse_config(Value::Object(plugin_map)) {
        Ok(c) => c,
        Err(issues) => {
            for issue in issues {
                let ptr = if issue.path.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}/{}", issue.path.replace('.', "/"))
                };
                cx.push(n, &ptr, issue.message);
            }
            return None;
        }
    };
    Some(ConnectorSpec {
        name,
        plugin: plugin.clone(),
        enabled,
        output,
        consumer,
        config,
        redact: schema::secret_keys(&connector_schema),
        block: block_value,
    })
}

#[cfg(test)]
mod tests;

//! `forward`: copy every record of the input topic to the output topic.
//!
//! Useful on its own (mirroring, re-partitioning by key, dropping internal headers) and as the
//! simplest exercise of the runtime's transform path: the input offset is committed only after
//! the copy is acknowledged by the broker.

use std::collections::BTreeMap;

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of a `forward` transform (besides `input`, `output` and the runtime settings).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Keep only headers with these names (all headers when unset).
    #[serde(default)]
    pub keep_headers: Option<Vec<String>>,
    /// Drop headers with these names.
    #[serde(default)]
    pub drop_headers: Vec<String>,
    /// Rename headers: old name → new name (applied after keep/drop).
    #[serde(default)]
    pub rename_headers: BTreeMap<String, String>,
}

/// The `forward` transform.
pub struct Forward {
    config: ForwardConfig,
}

impl Forward {
    fn map(&self, record: &Record) -> Record {
        let mut out = record.clone();
        out.origin = None;
        let c = &self.config;
        if c.keep_headers.is_none() && c.drop_headers.is_empty() && c.rename_headers.is_empty() {
            return out;
        }
        let mut headers = Headers::new();
        for (name, value) in record.headers.iter() {
            if let Some(keep) = &c.keep_headers {
                if !keep.iter().any(|k| k == name) {
                    continue;
                }
            }
            if c.drop_headers.iter().any(|d| d == name) {
                continue;
            }
            let name = c.rename_headers.get(name).map_or(name, String::as_str);
            headers.insert(name, value.clone());
        }
        out.headers = headers;
        out
    }
}

#[async_trait]
impl Transform for Forward {
    async fn transform(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<TransformOutcome>, ConnectorError> {
        Ok(batch
            .iter()
            .map(|r| TransformOutcome::forward(self.map(r)))
            .collect())
    }
}

/// Factory of [`Forward`].
pub struct ForwardPlugin;

#[async_trait]
impl TransformPlugin for ForwardPlugin {
    const TYPE: &'static str = "forward";
    const DESCRIPTION: &'static str =
        "Copies records from the input topic to the output topic, optionally filtering/renaming headers";
    type Config = ForwardConfig;

    fn validate(config: &ForwardConfig) -> Result<(), Vec<ConfigIssue>> {
        let issues: Vec<_> = config
            .rename_headers
            .iter()
            .filter(|(from, to)| from.is_empty() || to.is_empty())
            .map(|(from, _)| {
                ConfigIssue::new(
                    format!("rename_headers.{from}"),
                    "header names must not be empty",
                )
            })
            .collect();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: ForwardConfig,
        _ctx: TransformContext,
    ) -> Result<Box<dyn Transform>, ConnectorError> {
        Ok(Box::new(Forward { config }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record::new("v")
            .with_key("k")
            .with_header("a", "1")
            .with_header("b", "2")
            .with_header("c", "3")
            .with_origin("in", 0, 7)
    }

    #[test]
    fn copies_everything_but_origin_by_default() {
        let f = Forward {
            config: ForwardConfig::default(),
        };
        let out = f.map(&rec());
        assert_eq!(out.value, rec().value);
        assert_eq!(out.key, rec().key);
        assert_eq!(out.headers, rec().headers);
        assert!(out.origin.is_none());
    }

    #[test]
    fn keep_drop_and_rename_headers() {
        let f = Forward {
            config: ForwardConfig {
                keep_headers: Some(vec!["a".into(), "b".into()]),
                drop_headers: vec!["b".into()],
                rename_headers: [("a".to_string(), "x".to_string())].into(),
            },
        };
        let out = f.map(&rec());
        let names: Vec<_> = out.headers.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["x"]);
        assert_eq!(out.headers.get_str("x"), Some("1"));
    }

    #[test]
    fn empty_rename_target_is_a_config_issue() {
        let cfg = ForwardConfig {
            rename_headers: [("a".to_string(), String::new())].into(),
            ..Default::default()
        };
        let issues = ForwardPlugin::validate(&cfg).expect_err("must fail");
        assert_eq!(issues[0].path, "rename_headers.a");
    }
}

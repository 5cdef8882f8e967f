//! JSON Schemas: the top level, each connector type (runtime settings merged with the plugin's
//! own), and the whole file for editors (`connectd schema`).

use std::collections::BTreeSet;

use connector_core::{ConnectorKind, PluginDescriptor, Registry};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::settings::{ConsumerSettings, GlobalSettings};

/// Self-contained (inlined) schema of `T`.
fn inline<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Schema of the top level without `connectors`.
pub fn global_schema() -> Value {
    let mut s = inline::<GlobalSettings>();
    if let Some(o) = s.as_object_mut() {
        o.remove("title");
    }
    s
}

fn consumer_schema() -> Value {
    inline::<ConsumerSettings>()
}

/// Names of the consumer settings every sink and transform accepts.
pub fn consumer_keys() -> BTreeSet<String> {
    consumer_schema()["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

const TOPIC_PATTERN: &str = r"^[A-Za-z0-9._-]{1,249}$";

/// Schema of one connector block of `plugin`'s type: `name`, `type`, `enabled`, the runtime
/// settings of its kind and the plugin's own settings, with no other key allowed.
pub fn connector_schema(plugin: &PluginDescriptor) -> Result<Value, String> {
    let own = plugin.config_schema();
    let mut properties = Map::new();
    let mut required: Vec<Value> = vec![json!("name"), json!("type")];
    properties.insert(
        "name".into(),
        json!({"type": "string", "description": "Unique connector name."}),
    );
    properties.insert(
        "type".into(),
        json!({"const": plugin.type_name(), "description": plugin.description()}),
    );
    properties.insert(
        "enabled".into(),
        json!({"type": "boolean", "default": true, "description": "Run this connector (false keeps it declared but stopped)."}),
    );
    if plugin.kind() == ConnectorKind::Sink && plugin.sink_output() {
        properties.insert(
            "output".into(),
            json!({"type": "string", "pattern": TOPIC_PATTERN, "description": "Optional topic the sink publishes derived records to (see the plugin)."}),
        );
    }
    if plugin.kind() != ConnectorKind::Sink {
        properties.insert(
            "output".into(),
            json!({"type": "string", "pattern": TOPIC_PATTERN, "description": "Topic the connector produces to."}),
        );
        required.push(json!("output"));
    }
    if plugin.kind() != ConnectorKind::Source {
        let c = consumer_schema();
        if let Some(props) = c["properties"].as_object() {
            properties.extend(props.clone());
        }
        if let Some(req) = c["required"].as_array() {
            required.extend(req.iter().cloned());
        }
    }
    let reserved: BTreeSet<String> = properties.keys().cloned().collect();
    if let Some(props) = own["properties"].as_object() {
        for (k, v) in props {
            if reserved.contains(k) {
                return Err(format!(
                    "plugin {} declares the setting {k:?}, which the runtime reserves; rename it in the plugin",
                    plugin.type_name()
                ));
            }
            properties.insert(k.clone(), v.clone());
        }
    }
    if let Some(req) = own["required"].as_array() {
        required.extend(req.iter().cloned());
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("title".into(), json!(plugin.type_name()));
    schema.insert(
        "description".into(),
        json!(format!("{} ({})", plugin.description(), plugin.kind())),
    );
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    schema.insert("additionalProperties".into(), json!(false));
    Ok(Value::Object(schema))
}

/// The whole file's schema, with every registered plugin (for `connectd schema` and editors).
pub fn file_schema(registry: &Registry) -> Value {
    let mut root = global_schema();
    let variants: Vec<Value> = registry
        .plugins()
        .filter_map(|p| connector_schema(p).ok())
        .collect();
    let connectors = json!({
        "type": "array",
        "description": "The connectors to run. Each has a unique `name` and a registered `type`.",
        "items": {
            "type": "object",
            "required": ["name", "type"],
            "properties": {
                "type": {"enum": registry.plugins().map(|p| p.type_name()).collect::<Vec<_>>()}
            },
            "oneOf": variants
        }
    });
    if let Some(o) = root.as_object_mut() {
        o.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        o.insert(
            "title".into(),
            json!("connectd configuration (connectors.yaml)"),
        );
        o.insert(
            "description".into(),
            json!("Pipelines of sources, transforms and sinks chained through Kafka topics. Generated by `connectd schema`."),
        );
        if let Some(Value::Object(props)) = o.get_mut("properties") {
            props.insert("connectors".into(), connectors);
        }
        o.insert("required".into(), json!(["connectors"]));
    }
    root
}

fn is_secret_schema(s: &Value) -> bool {
    if s.get("writeOnly") == Some(&Value::Bool(true)) {
        return true;
    }
    ["anyOf", "oneOf", "allOf"].iter().any(|k| {
        s.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(is_secret_schema))
    })
}

/// Names of properties whose schema marks them as secrets (`writeOnly`), at any depth.
pub fn secret_keys(schema: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn walk(s: &Value, out: &mut BTreeSet<String>) {
        match s {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    for (k, v) in props {
                        if is_secret_schema(v) {
                            out.insert(k.clone());
                        }
                    }
                }
                for v in m.values() {
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(schema, &mut out);
    out
}

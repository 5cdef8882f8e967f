//! The [`Registry`]: `type` names → type-erased plugin factories.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::context::{SinkContext, SourceContext, TransformContext};
use crate::error::{ConfigIssue, ConnectorError};
use crate::plugin::{Sink, SinkPlugin, Source, SourcePlugin, Transform, TransformPlugin};

/// A plugin's parsed and validated configuration, with its type erased. Produced by
/// [`PluginDescriptor::parse_config`], consumed by the `build_*` methods of the same descriptor.
/// Cheap to clone: the runtime builds a connector again from it after a crash.
pub type ErasedConfig = Arc<dyn Any + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BuildSink = fn(ErasedConfig, SinkContext) -> BoxFuture<Result<Box<dyn Sink>, ConnectorError>>;
type BuildTransform =
    fn(ErasedConfig, TransformContext) -> BoxFuture<Result<Box<dyn Transform>, ConnectorError>>;
type BuildSource =
    fn(ErasedConfig, SourceContext) -> BoxFuture<Result<Box<dyn Source>, ConnectorError>>;

/// Which of the three kinds a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectorKind {
    /// Produces records into topics from the outside world.
    Source,
    /// Reads a topic and writes records to other topics.
    Transform,
    /// Reads a topic and writes records to the outside world.
    Sink,
}

impl ConnectorKind {
    /// `"source"`, `"transform"` or `"sink"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Transform => "transform",
            ConnectorKind::Sink => "sink",
        }
    }
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy)]
enum Builder {
    Sink(BuildSink),
    Transform(BuildTransform),
    Source(BuildSource),
}

/// Settings the runtime adds to every transform block: a sink's, and `output` (last).
pub const RESERVED_TRANSFORM_SETTINGS: &[&str] = &[
    "name",
    "type",
    "enabled",
    "input",
    "group_id",
    "dlq_topic",
    "batch",
    "max_in_flight",
    "max_buffered_bytes",
    "retry",
    "dlq_breaker",
    "start_from",
    "output",
];

/// Settings the runtime adds to every sink block; a sink's config must not declare them.
pub const RESERVED_SINK_SETTINGS: &[&str] = RESERVED_TRANSFORM_SETTINGS
    .split_at(RESERVED_TRANSFORM_SETTINGS.len() - 1)
    .0;

/// Settings the runtime adds to every source block.
pub const RESERVED_SOURCE_SETTINGS: &[&str] = &["name", "type", "enabled", "output"];

/// Why a plugin was refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The plugin's config declares a setting the runtime adds to every block of its kind.
    #[error("plugin {plugin} declares the setting {setting:?}, which the runtime reserves for every {kind} (reserved: {reserved}); rename it in the plugin's config")]
    ReservedSetting {
        /// The plugin's `type`.
        plugin: &'static str,
        /// Its kind.
        kind: ConnectorKind,
        /// The clashing setting.
        setting: String,
        /// Every reserved name, comma-separated.
        reserved: String,
    },
}

/// Everything the runtime knows about one registered plugin, with its types erased.
#[derive(Clone)]
pub struct PluginDescriptor {
    type_name: &'static str,
    description: &'static str,
    schema: fn() -> serde_json::Value,
    parse: fn(serde_json::Value) -> Result<ErasedConfig, Vec<ConfigIssue>>,
    builder: Builder,
    single_instance: bool,
    sink_output: bool,
}

impl fmt::Debug for PluginDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginDescriptor")
            .field("type_name", &self.type_name)
            .field("kind", &self.kind())
            .finish()
    }
}

/// JSON Schema of `T` with every subschema inlined (no `$ref`), so that it can be embedded in
/// a larger document as is.
pub(crate) fn inline_schema<T: JsonSchema>() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

fn parse_typed<C, F>(
    value: serde_json::Value,
    validate: F,
) -> Result<ErasedConfig, Vec<ConfigIssue>>
where
    C: DeserializeOwned + Send + Sync + 'static,
    F: Fn(&C) -> Result<(), Vec<ConfigIssue>>,
{
    let config: C =
        serde_json::from_value(value).map_err(|e| vec![ConfigIssue::new("", e.to_string())])?;
    validate(&config)?;
    Ok(Arc::new(config))
}

fn downcast<C: Clone + 'static>(
    config: &ErasedConfig,
    type_name: &str,
) -> Result<C, ConnectorError> {
    config.downcast_ref::<C>().cloned().ok_or_else(|| {
        ConnectorError::permanent(
            "config_type_mismatch",
            format!("config handed to plugin {type_name} was parsed by another plugin"),
        )
    })
}

impl PluginDescriptor {
    /// Descriptor of a sink plugin.
    pub fn sink<P: SinkPlugin>() -> Self {
        Self {
            type_name: P::TYPE,
            description: P::DESCRIPTION,
            schema: inline_schema::<P::Config>,
            parse: |v| parse_typed::<P::Config, _>(v, P::validate),
            builder: Builder::Sink(|cfg, ctx| {
                Box::pin(async move { P::build(downcast::<P::Config>(&cfg, P::TYPE)?, ctx).await })
            }),
            single_instance: P::SINGLE_INSTANCE,
            sink_output: P::OUTPUT,
        }
    }

    /// Descriptor of a transform plugin.
    pub fn transform<P: TransformPlugin>() -> Self {
        Self {
            type_name: P::TYPE,
            description: P::DESCRIPTION,
            schema: inline_schema::<P::Config>,
            parse: |v| parse_typed::<P::Config, _>(v, P::validate),
            builder: Builder::Transform(|cfg, ctx| {
                Box::pin(async move { P::build(downcast::<P::Config>(&cfg, P::TYPE)?, ctx).await })
            }),
            single_instance: false,
            sink_output: false,
        }
    }

    /// Descriptor of a source plugin.
    pub fn source<P: SourcePlugin>() -> Self {
        Self {
            type_name: P::TYPE,
            description: P::DESCRIPTION,
            schema: inline_schema::<P::Config>,
            parse: |v| parse_typed::<P::Config, _>(v, P::validate),
            builder: Builder::Source(|cfg, ctx| {
                Box::pin(async move { P::build(downcast::<P::Config>(&cfg, P::TYPE)?, &ctx).await })
            }),
            single_instance: false,
            sink_output: false,
        }
    }

    /// The `type` name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// One-line description.
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// Source, transform or sink.
    pub fn kind(&self) -> ConnectorKind {
        match self.builder {
            Builder::Sink(_) => ConnectorKind::Sink,
            Builder::Transform(_) => ConnectorKind::Transform,
            Builder::Source(_) => ConnectorKind::Source,
        }
    }

    /// True when the plugin allows one instance at a time ([`SinkPlugin::SINGLE_INSTANCE`]).
    pub fn single_instance(&self) -> bool {
        self.single_instance
    }

    /// True for a sink that may publish derived records to an `output` topic
    /// ([`SinkPlugin::OUTPUT`]); sources and transforms always have one.
    pub fn sink_output(&self) -> bool {
        self.sink_output
    }

    /// The settings the runtime adds to every block of this plugin's kind.
    pub fn reserved_settings(&self) -> &'static [&'static str] {
        match self.kind() {
            ConnectorKind::Sink => RESERVED_SINK_SETTINGS,
            ConnectorKind::Transform => RESERVED_TRANSFORM_SETTINGS,
            ConnectorKind::Source => RESERVED_SOURCE_SETTINGS,
        }
    }

    /// Checks that the plugin's config declares no reserved setting.
    pub fn check_reserved(&self) -> Result<(), RegistryError> {
        let reserved = self.reserved_settings();
        let schema = self.config_schema();
        let clash = schema["properties"]
            .as_object()
            .and_then(|p| p.keys().find(|k| reserved.contains(&k.as_str())).cloned());
        match clash {
            None => Ok(()),
            Some(setting) => Err(RegistryError::ReservedSetting {
                plugin: self.type_name,
                kind: self.kind(),
                setting,
                reserved: reserved.join(", "),
            }),
        }
    }

    /// JSON Schema (draft 2020-12, self-contained) of the plugin's own settings.
    pub fn config_schema(&self) -> serde_json::Value {
        (self.schema)()
    }

    /// Deserializes the plugin's settings and runs its pure `validate`. Does no I/O.
    pub fn parse_config(&self, value: serde_json::Value) -> Result<ErasedConfig, Vec<ConfigIssue>> {
        (self.parse)(value)
    }

    /// Builds a sink. Fails if this descriptor is not a sink's.
    pub async fn build_sink(
        &self,
        config: ErasedConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        match self.builder {
            Builder::Sink(b) => b(config, ctx).await,
            _ => Err(self.wrong_kind(ConnectorKind::Sink)),
        }
    }

    /// Builds a transform. Fails if this descriptor is not a transform's.
    pub async fn build_transform(
        &self,
        config: ErasedConfig,
        ctx: TransformContext,
    ) -> Result<Box<dyn Transform>, ConnectorError> {
        match self.builder {
            Builder::Transform(b) => b(config, ctx).await,
            _ => Err(self.wrong_kind(ConnectorKind::Transform)),
        }
    }

    /// Builds a source. Fails if this descriptor is not a source's.
    pub async fn build_source(
        &self,
        config: ErasedConfig,
        ctx: SourceContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        match self.builder {
            Builder::Source(b) => b(config, ctx).await,
            _ => Err(self.wrong_kind(ConnectorKind::Source)),
        }
    }

    fn wrong_kind(&self, wanted: ConnectorKind) -> ConnectorError {
        ConnectorError::permanent(
            "wrong_plugin_kind",
            format!(
                "plugin {} is a {}, not a {wanted}",
                self.type_name,
                self.kind()
            ),
        )
    }
}

/// Maps `type` names to plugins.
///
/// `connectd` provides the built-in set (`Registry::builtin()` through its `Builtin` trait);
/// a custom binary adds its own plugin with one call and passes the registry to connectd's CLI.
///
/// ```
/// # use connector_core::Registry;
/// let registry = Registry::new();
/// assert!(registry.get("nope").is_none());
/// assert_eq!(registry.plugins().count(), 0);
/// ```
#[derive(Clone, Default, Debug)]
pub struct Registry {
    plugins: BTreeMap<&'static str, PluginDescriptor>,
    refused: Vec<RegistryError>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a descriptor; a later registration of the same `type` replaces the earlier one
    /// (so a custom build can override a built-in).
    ///
    /// A plugin whose config declares a reserved setting (see [`RESERVED_SINK_SETTINGS`]) is
    /// not added: it is listed in [`refused`](Self::refused), and `connectd`'s CLI refuses to
    /// start (exit 2) while any plugin is refused, naming the clash.
    pub fn register(&mut self, descriptor: PluginDescriptor) -> &mut Self {
        if let Err(e) = descriptor.check_reserved() {
            tracing::error!(plugin = descriptor.type_name, error = %e, "plugin refused");
            self.refused.push(e);
            return self;
        }
        if let Some(old) = self.plugins.insert(descriptor.type_name, descriptor) {
            tracing::debug!(plugin = old.type_name, "plugin registration replaced");
        }
        self
    }

    /// Adds a sink plugin.
    pub fn register_sink<P: SinkPlugin>(&mut self) -> &mut Self {
        self.register(PluginDescriptor::sink::<P>())
    }

    /// Adds a transform plugin.
    pub fn register_transform<P: TransformPlugin>(&mut self) -> &mut Self {
        self.register(PluginDescriptor::transform::<P>())
    }

    /// Adds a source plugin.
    pub fn register_source<P: SourcePlugin>(&mut self) -> &mut Self {
        self.register(PluginDescriptor::source::<P>())
    }

    /// The plugin registered as `type_name`.
    pub fn get(&self, type_name: &str) -> Option<&PluginDescriptor> {
        self.plugins.get(type_name)
    }

    /// Every plugin, sorted by `type` name.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginDescriptor> {
        self.plugins.values()
    }

    /// Plugins refused at registration, and why.
    pub fn refused(&self) -> &[RegistryError] {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::RecordOutcome;
    use crate::record::Record;
    use async_trait::async_trait;

    struct Nop;
    #[async_trait]
    impl Sink for Nop {
        async fn write(&mut self, b: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
            Ok(vec![RecordOutcome::Delivered; b.len()])
        }
    }

    /// A config that clashes with the runtime's `batch`.
    #[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
    struct Clashing {
        /// Mine.
        #[allow(dead_code)]
        batch: u32,
    }
    struct ClashPlugin;
    #[async_trait]
    impl SinkPlugin for ClashPlugin {
        const TYPE: &'static str = "clash";
        const DESCRIPTION: &'static str = "clashes";
        type Config = Clashing;
        async fn build(_: Clashing, _: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
            Ok(Box::new(Nop))
        }
    }

    #[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
    struct Fine {
        /// Mine.
        #[allow(dead_code)]
        path: String,
    }
    struct SinglePlugin;
    #[async_trait]
    impl SinkPlugin for SinglePlugin {
        const TYPE: &'static str = "single";
        const DESCRIPTION: &'static str = "one at a time";
        const SINGLE_INSTANCE: bool = true;
        type Config = Fine;
        async fn build(_: Fine, _: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
            Ok(Box::new(Nop))
        }
    }

    #[test]
    fn a_plugin_declaring_a_reserved_setting_is_refused_with_the_reason() {
        let mut r = Registry::new();
        r.register_sink::<ClashPlugin>()
            .register_sink::<SinglePlugin>();
        assert!(r.get("clash").is_none());
        assert_eq!(r.refused().len(), 1);
        let msg = r.refused()[0].to_string();
        assert!(
            msg.contains("plugin clash declares the setting \"batch\""),
            "{msg}"
        );
        assert!(msg.contains("max_in_flight"), "{msg}");
        let single = r.get("single").expect("registered");
        assert!(single.single_instance());
        assert_eq!(single.kind(), ConnectorKind::Sink);
    }
}

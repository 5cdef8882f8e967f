//! The runtime: runs every enabled connector of a [`Config`] until shutdown.

use connector_core::Registry;

use crate::config::Config;

/// Runs the configuration until SIGINT/SIGTERM.
pub async fn run(config: Config, _registry: Registry) -> anyhow::Result<()> {
    for c in &config.connectors {
        tracing::info!(connector = %c.name, r#type = c.plugin.type_name(), kind = %c.kind(), enabled = c.enabled, "declared");
    }
    tracing::warn!("the connector runtime is not built yet: nothing runs; waiting for SIGINT");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

//! Loading the models file (`--models FILE` / `FLOWGATE_MODELS`) into the gateway.

use std::path::Path;
use std::sync::Arc;

use flowgate_models::Gateway;
use flowgate_models::config::GatewayConfig;

/// The gateway the models file describes. Errors name the file and line; secrets come from the
/// environment and never appear in them.
pub fn load(path: &Path) -> Result<Arc<Gateway>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("models file {}: {error}", path.display()))?;
    let config = GatewayConfig::parse(&text, &|name| std::env::var(name).ok())
        .map_err(|error| format!("models file {}: {error}", path.display()))?;
    let client = flowgate_models::http_client()?;
    Gateway::new(config, &client).map(Arc::new).map_err(|error| format!("models file {}: {error}", path.display()))
}

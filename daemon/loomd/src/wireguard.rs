//! The WireGuard operator tunnel as loomd runs it (`[wireguard]`, see `loom-wireguard`): up at
//! start when enabled, the weaver subnet routed through it, peers added by admins.

use std::path::Path;
use std::sync::Arc;

use loom_core::config::Config;
use loom_wireguard::{BackendChoice, Tunnel, WireguardConfig};

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("[wireguard] is invalid: {0}")]
    Config(String),
    #[error("the WireGuard tunnel could not start")]
    Up(#[source] loom_wireguard::WgError),
}

/// `[wireguard]` parsed and checked, with the weaver subnet routed when the table names none.
pub fn config_of(config: &Config) -> Result<Option<(loom_wireguard::TunnelSpec, BackendChoice)>, WireguardError> {
    let mut wg: WireguardConfig = toml::Value::Table(config.wireguard.clone())
        .try_into()
        .map_err(|e: toml::de::Error| WireguardError::Config(e.message().to_string()))?;
    if wg.routed_subnets.is_empty() {
        wg.routed_subnets = vec![config.network.subnet.to_string()];
    }
    let backend = wg.backend;
    let spec = wg.validate().map_err(|e| WireguardError::Config(e.to_string()))?;
    Ok(spec.map(|s| (s, backend)))
}

/// Brings the tunnel up if `[wireguard] enable = true`; blocking (wireguard-go takes a moment).
pub fn start(config: &Config, state_dir: &Path) -> Result<Option<Arc<Tunnel>>, WireguardError> {
    let Some((spec, backend)) = config_of(config)? else { return Ok(None) };
    let tunnel = Tunnel::up(&spec, &state_dir.join("wireguard"), backend).map_err(WireguardError::Up)?;
    tracing::info!(interface = tunnel.interface(), backend = ?tunnel.backend(), "WireGuard operator tunnel up");
    Ok(Some(Arc::new(tunnel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_the_weaver_subnet_is_routed() {
        assert!(config_of(&Config::default()).unwrap().is_none());
        let mut c = Config {
            wireguard: toml::from_str("enable = true\nendpoint = \"host.example:51820\"").unwrap(),
            ..Default::default()
        };
        let (spec, _) = config_of(&c).unwrap().unwrap();
        assert_eq!(spec.routed_subnets.iter().map(|n| n.to_string()).collect::<Vec<_>>(), vec!["10.87.0.0/16"]);
        c.wireguard = toml::from_str("enable = true\nlisten_port = \"x\"").unwrap();
        let e = config_of(&c).unwrap_err().to_string();
        assert!(e.starts_with("[wireguard] is invalid"), "{e}");
    }
}

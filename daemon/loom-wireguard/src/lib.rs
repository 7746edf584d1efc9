//! loomd's WireGuard operator tunnel: operators' machines reach the weaver subnet through a
//! WireGuard interface on the host. The kernel backend is used where the module exists,
//! wireguard-go (driven over its UAPI socket by `wireguard-control`) where it does not.
//!
//! - [`WireguardConfig`] is `[wireguard]` in loomd's TOML; [`WireguardConfig::validate`] turns
//!   it into a [`TunnelSpec`] (pure).
//! - [`Tunnel::up`] creates or takes over the interface, [`Tunnel::add_peer`] mints a peer and
//!   its client config, [`Tunnel::down`] removes the interface.

mod client;
mod config;
mod keys;
mod state;
mod system;
mod tunnel;

use std::path::PathBuf;

pub use client::{
    ClientConfig, ClientParams, QrError, client_allowed_ips, qr_terminal, render_client_config, strip_wg_quick,
};
pub use config::{
    AllocError, BackendChoice, ConfigError, Peer, PeerEntry, TunnelSpec, WireguardConfig, check_peer_address,
    next_free_address, validate_endpoint, validate_interface, validate_peer_name,
};
pub use keys::{PrivateKey, PublicKey};
pub use state::{KEY_FILE, PEERS_FILE};
pub use system::UAPI_DIR;
pub use tunnel::{ActiveBackend, PeerConfig, PeerSource, PeerStatus, Tunnel};

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Qr(#[from] QrError),
    #[error("WireGuard key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("WireGuard state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("{tool} not found (looked at {tried}): install it or set its path in [wireguard]")]
    ToolMissing { tool: &'static str, tried: String },
    #[error(
        "the kernel has no WireGuard support ({0}): set `[wireguard] backend = \"userspace\"` or \"auto\" \
         to use wireguard-go"
    )]
    KernelUnavailable(String),
    #[error("wireguard-go did not start: {message}; its output: {output}")]
    UserspaceStart { message: String, output: String },
    #[error(
        "interface {0} exists and is not a WireGuard interface: choose another `[wireguard] interface` \
         or remove it"
    )]
    NotWireguard(String),
    #[error("interface {0} is gone (its wireguard-go exited or it was deleted): restart the tunnel")]
    InterfaceGone(String),
    #[error("the tunnel on {0} has been taken down")]
    Down(String),
    #[error("configuring {interface}: {source}")]
    Apply { interface: String, source: std::io::Error },
    #[error("a peer named {0:?} already exists: pick another name or remove it first")]
    PeerExists(String),
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    #[error("peer {0:?} comes from the config: remove it from `[wireguard] peers` instead")]
    ConfiguredPeer(String),
}

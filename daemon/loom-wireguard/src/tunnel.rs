//! The live tunnel: one WireGuard interface on the host, its peers, its address and routes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, PeerConfigBuilder};

use crate::WgError;
use crate::client::{ClientConfig, ClientParams, QrError, qr_terminal, render_client_config};
use crate::config::{BackendChoice, ConfigError, Peer, TunnelSpec, conflict, next_free_address, validate_peer_name};
use crate::keys::{PrivateKey, PublicKey, load_or_create_private_key};
use crate::state::{KEY_FILE, load_peers, save_peers};
use crate::system::{Existing, Tools, WireguardGo, existing, spawn_wireguard_go, uapi_alive, uapi_socket};

/// Which implementation carries a running tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveBackend {
    Kernel,
    Userspace,
}

/// A peer just added: what the admin hands to its owner. The client's private key exists only
/// here (the host keeps the public key), so it is shown once.
#[derive(Debug)]
pub struct PeerConfig {
    pub name: String,
    pub address: Ipv4Addr,
    pub public_key: PublicKey,
    /// The wg-quick config for the client.
    pub client_config: ClientConfig,
}

impl PeerConfig {
    /// The client config as a QR code for a terminal.
    pub fn qr_terminal(&self) -> Result<String, QrError> {
        qr_terminal(self.client_config.text())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// `[wireguard] peers` in the config.
    Config,
    /// Added with `add_peer`, kept in the state dir.
    Added,
}

/// A peer and what the interface reports about it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: PublicKey,
    pub address: Ipv4Addr,
    pub source: PeerSource,
    /// Where its last packets came from.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The host side of the operator tunnel. Dropping it leaves the interface up (as a crash
/// would); [`Tunnel::down`] removes it, and the next [`Tunnel::up`] takes over an interface it
/// finds.
#[derive(Debug)]
pub struct Tunnel {
    spec: TunnelSpec,
    state_dir: PathBuf,
    tools: Tools,
    backend: ActiveBackend,
    iface: InterfaceName,
    key: PrivateKey,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Peers from `add_peer`; the config's are in `spec.peers`.
    added: Vec<Peer>,
    /// The wireguard-go this process started; None for the kernel or one taken over.
    wireguard_go: Option<WireguardGo>,
    down: bool,
}

fn builder(peer: &Peer) -> PeerConfigBuilder {
    PeerConfigBuilder::new(&peer.public_key.to_key()).replace_allowed_ips().add_allowed_ip(IpAddr::V4(peer.address), 32)
}

impl Tunnel {
    /// Brings the tunnel up in the calling thread's network namespace: the interface (created,
    /// or an existing one of that name reconfigured), the host key, every peer (config and
    /// state dir), the address, the link, forwarding from the tunnel. `state_dir` holds the
    /// generated key, the added peers and wireguard-go's log.
    pub fn up(spec: &TunnelSpec, state_dir: &Path, backend: BackendChoice) -> Result<Tunnel, WgError> {
        let tools = Tools::resolve(spec.ip_command.as_deref(), spec.wireguard_go.as_deref())?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(|e| WgError::State {
            path: state_dir.to_path_buf(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        let key_path = spec.private_key_file.clone().unwrap_or_else(|| state_dir.join(KEY_FILE));
        let key = load_or_create_private_key(&key_path)?;
        if let Some(p) = spec.peers.iter().find(|p| p.public_key == key.public_key()) {
            return Err(ConfigError {
                field: "peers".into(),
                message: format!("peer {:?} has the host's own public key", p.name),
            }
            .into());
        }
        let added = merge_added(&spec.peers, load_peers(state_dir)?, spec);
        let name = spec.interface.as_str();
        let iface: InterfaceName =
            name.parse().map_err(|e| ConfigError { field: "interface".into(), message: format!("{name:?}: {e}") })?;
        let (backend, wireguard_go) = Self::create(&tools, name, backend, state_dir)?;
        let tunnel = Tunnel {
            spec: spec.clone(),
            state_dir: state_dir.to_path_buf(),
            tools,
            backend,
            iface,
            key,
            inner: Mutex::new(Inner { added, wireguard_go, down: false }),
        };
        if let Err(e) = tunnel.configure() {
            // A half-configured tunnel is worse than none: the next start begins afresh.
            if let Err(down) = tunnel.down() {
                tracing::warn!(interface = name, error = %down, "removing the half-configured tunnel failed");
            }
            return Err(e);
        }
        let public_key = tunnel.key.public_key();
        tracing::info!(interface = name, backend = ?backend, %public_key, address = %spec.address, "WireGuard tunnel up");
        Ok(tunnel)
    }

    /// The interface exists afterwards, backed by the implementation chosen.
    fn create(
        tools: &Tools,
        name: &str,
        choice: BackendChoice,
        state_dir: &Path,
    ) -> Result<(ActiveBackend, Option<WireguardGo>), WgError> {
        let found = existing(tools, name)?;
        let found = match (found, choice) {
            (Existing::Other, _) => return Err(WgError::NotWireguard(name.to_string())),
            (Existing::Kernel, BackendChoice::Userspace) | (Existing::Userspace, BackendChoice::Kernel) => {
                tracing::warn!(interface = name, existing = ?found, wanted = ?choice, "replacing the interface with the configured backend");
                tools.ip(&["link", "del", "dev", name])?;
                Existing::None
            }
            (found, _) => found,
        };
        let log = state_dir.join(format!("wireguard-go-{name}.log"));
        match (found, choice) {
            (Existing::Kernel, _) => Ok((ActiveBackend::Kernel, None)),
            (Existing::Userspace, _) => {
                tracing::info!(interface = name, "taking over the running wireguard-go");
                Ok((ActiveBackend::Userspace, None))
            }
            (_, BackendChoice::Kernel) => {
                create_kernel(tools, name)?;
                Ok((ActiveBackend::Kernel, None))
            }
            (_, BackendChoice::Userspace) => {
                Ok((ActiveBackend::Userspace, Some(spawn_wireguard_go(tools, name, &log)?)))
            }
            (_, BackendChoice::Auto) => match create_kernel(tools, name) {
                Ok(()) => Ok((ActiveBackend::Kernel, None)),
                Err(e) => {
                    tracing::info!(interface = name, reason = %e, "no kernel WireGuard: using wireguard-go");
                    Ok((ActiveBackend::Userspace, Some(spawn_wireguard_go(tools, name, &log)?)))
                }
            },
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, WgError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.down {
            return Err(WgError::Down(self.spec.interface.clone()));
        }
        Ok(inner)
    }

    fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        let interface = self.spec.interface.clone();
        let backend = match self.backend {
            ActiveBackend::Kernel => Backend::Kernel,
            ActiveBackend::Userspace => {
                // wireguard-control starts a wireguard-go of its own choosing (PATH, inherited
                // environment) when the socket is missing; loomd never lets it.
                if !uapi_alive(&interface) {
                    return Err(WgError::InterfaceGone(interface));
                }
                Backend::Userspace
            }
        };
        update.apply(&self.iface, backend).map_err(|source| WgError::Apply { interface, source })
    }

    /// Key, port and the peer list, then the address, the link and forwarding. Only what
    /// differs from the interface is changed: a loomd that restarts onto a running interface
    /// keeps the peers' sessions (replacing a peer drops its session keys, and its client then
    /// stays cut off until it gives up on them, 15 s or more).
    fn configure(&self) -> Result<(), WgError> {
        let inner = self.lock()?;
        let current = self.device().ok();
        let mut update = DeviceUpdate::new();
        if current.as_ref().and_then(|d| d.private_key.as_ref()).map(|k| k.0) != Some(self.key.to_key().0) {
            update = update.set_private_key(self.key.to_key());
        }
        if current.as_ref().and_then(|d| d.listen_port) != Some(self.spec.listen_port) {
            update = update.set_listen_port(self.spec.listen_port);
        }
        let wanted: Vec<&Peer> = self.spec.peers.iter().chain(&inner.added).collect();
        let live = current.map(|d| d.peers).unwrap_or_default();
        for old in &live {
            if !wanted.iter().any(|p| p.public_key.0 == old.config.public_key.0) {
                update = update.remove_peer_by_key(&old.config.public_key);
            }
        }
        for peer in &wanted {
            let same = live.iter().any(|l| {
                l.config.public_key.0 == peer.public_key.0
                    && l.config.allowed_ips.len() == 1
                    && l.config.allowed_ips[0].address == IpAddr::V4(peer.address)
                    && l.config.allowed_ips[0].cidr == 32
            });
            if !same {
                update = update.add_peer(builder(peer));
            }
        }
        self.apply(update)?;
        let name = self.spec.interface.as_str();
        let want = format!("{}/{}", self.spec.address.addr(), self.spec.address.prefix_len());
        let out = self.tools.ip(&["-4", "-o", "address", "show", "dev", name])?;
        let have: Vec<&str> =
            out.lines().filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1)).collect();
        if have != [want.as_str()] {
            self.tools.ip(&["-4", "address", "flush", "dev", name])?;
            self.tools.ip(&["address", "add", &want, "dev", name])?;
        }
        self.tools.ip(&["link", "set", "dev", name, "up"])?;
        crate::system::enable_forwarding(name)?;
        Ok(())
    }

    fn device(&self) -> Result<Device, WgError> {
        let backend = match self.backend {
            ActiveBackend::Kernel => Backend::Kernel,
            ActiveBackend::Userspace => Backend::Userspace,
        };
        Device::get(&self.iface, backend)
            .map_err(|source| WgError::Apply { interface: self.spec.interface.clone(), source })
    }

    /// Mints a peer: a fresh key pair, the lowest free tunnel address, added to the live
    /// interface and persisted, and its client config.
    pub fn add_peer(&self, name: &str) -> Result<PeerConfig, WgError> {
        validate_peer_name(name).map_err(|message| ConfigError { field: "peers.name".into(), message })?;
        let mut inner = self.lock()?;
        let all: Vec<&Peer> = self.spec.peers.iter().chain(&inner.added).collect();
        if all.iter().any(|p| p.name == name) {
            return Err(WgError::PeerExists(name.to_string()));
        }
        let mut taken: BTreeSet<Ipv4Addr> = all.iter().map(|p| p.address).collect();
        taken.insert(self.spec.address.addr());
        let address = next_free_address(self.spec.address, &taken)?;
        let client_key = PrivateKey::generate();
        let peer = Peer { name: name.to_string(), public_key: client_key.public_key(), address };
        self.apply(DeviceUpdate::new().add_peer(builder(&peer)))?;
        let mut added = inner.added.clone();
        added.push(peer.clone());
        if let Err(e) = save_peers(&self.state_dir, &added) {
            // Not kept, so not live: a peer that works until the next restart would surprise.
            let _ = self.apply(DeviceUpdate::new().remove_peer_by_key(&peer.public_key.to_key()));
            return Err(e);
        }
        inner.added = added;
        tracing::info!(interface = %self.spec.interface, peer = name, %address, public_key = %peer.public_key, "WireGuard peer added");
        let client_config = render_client_config(&ClientParams {
            private_key: &client_key,
            address,
            host_public_key: self.key.public_key(),
            endpoint: &self.spec.endpoint,
            host_address: self.spec.address.addr(),
            routed_subnets: &self.spec.routed_subnets,
            persistent_keepalive: self.spec.persistent_keepalive,
        });
        Ok(PeerConfig { name: name.to_string(), address, public_key: peer.public_key, client_config })
    }

    /// Removes a peer `add_peer` made, from the live interface and the state dir.
    pub fn remove_peer(&self, name: &str) -> Result<(), WgError> {
        let mut inner = self.lock()?;
        if self.spec.peers.iter().any(|p| p.name == name) {
            return Err(WgError::ConfiguredPeer(name.to_string()));
        }
        let Some(i) = inner.added.iter().position(|p| p.name == name) else {
            return Err(WgError::UnknownPeer(name.to_string()));
        };
        let mut added = inner.added.clone();
        let peer = added.remove(i);
        save_peers(&self.state_dir, &added)?;
        inner.added = added;
        self.apply(DeviceUpdate::new().remove_peer_by_key(&peer.public_key.to_key()))?;
        tracing::info!(interface = %self.spec.interface, peer = name, "WireGuard peer removed");
        Ok(())
    }

    /// Every peer, config's first, with what the interface knows of it.
    pub fn list_peers(&self) -> Result<Vec<PeerStatus>, WgError> {
        let inner = self.lock()?;
        let device = self.device()?;
        let config = self.spec.peers.iter().map(|p| (p, PeerSource::Config));
        let added = inner.added.iter().map(|p| (p, PeerSource::Added));
        Ok(config
            .chain(added)
            .map(|(p, source)| {
                let live = device.peers.iter().find(|d| d.config.public_key.0 == p.public_key.0);
                PeerStatus {
                    name: p.name.clone(),
                    public_key: p.public_key,
                    address: p.address,
                    source,
                    endpoint: live.and_then(|d| d.config.endpoint),
                    last_handshake: live.and_then(|d| d.stats.last_handshake_time),
                    rx_bytes: live.map_or(0, |d| d.stats.rx_bytes),
                    tx_bytes: live.map_or(0, |d| d.stats.tx_bytes),
                }
            })
            .collect())
    }

    /// Removes the interface (and so its address and routes) and stops wireguard-go.
    pub fn down(&self) -> Result<(), WgError> {
        let mut inner = self.lock()?;
        inner.down = true;
        let name = self.spec.interface.as_str();
        match self.tools.ip(&["link", "del", "dev", name]) {
            Ok(_) => {}
            Err(WgError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {}
            Err(e) => return Err(e),
        }
        if let Some(mut wg) = inner.wireguard_go.take() {
            wg.kill();
        } else if self.backend == ActiveBackend::Userspace {
            // One started by an earlier loomd: it exits when its TUN device goes.
            let deadline = Instant::now() + Duration::from_secs(2);
            while uapi_alive(name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(uapi_socket(name));
        tracing::info!(interface = name, "WireGuard tunnel down");
        Ok(())
    }

    pub fn backend(&self) -> ActiveBackend {
        self.backend
    }

    pub fn interface(&self) -> &str {
        &self.spec.interface
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The wireguard-go this process started, if any.
    pub fn userspace_pid(&self) -> Option<u32> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.wireguard_go.as_ref().map(|w| w.child.id())
    }
}

fn create_kernel(tools: &Tools, name: &str) -> Result<(), WgError> {
    tools.ip(&["link", "add", "dev", name, "type", "wireguard"]).map(drop).map_err(|e| match e {
        WgError::Command { stderr, .. } => WgError::KernelUnavailable(stderr),
        e => e,
    })
}

/// The stored peers that can sit beside the config's; the config wins a clash (an operator
/// edited it), and the stored peer is left out with a warning rather than stopping loomd.
fn merge_added(config: &[Peer], stored: Vec<Peer>, spec: &TunnelSpec) -> Vec<Peer> {
    let mut kept: Vec<Peer> = config.to_vec();
    let mut added = vec![];
    for peer in stored {
        let why =
            conflict(&kept, &peer).or_else(|| crate::config::check_peer_address(peer.address, spec.address).err());
        match why {
            Some(why) => tracing::warn!(peer = %peer.name, "stored WireGuard peer left out: {why}"),
            None => {
                kept.push(peer.clone());
                added.push(peer);
            }
        }
    }
    added
}

// loomd shares one tunnel between its API tasks.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Tunnel>();
};

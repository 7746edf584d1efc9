//! What a new peer takes home: a wg-quick config and the same text as a terminal QR code
//! (the WireGuard mobile apps scan it). Pure.

use std::fmt;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use zeroize::Zeroizing;

use crate::keys::{PrivateKey, PublicKey};

/// Everything a client config says.
#[derive(Debug)]
pub struct ClientParams<'a> {
    pub private_key: &'a PrivateKey,
    pub address: Ipv4Addr,
    pub host_public_key: PublicKey,
    pub endpoint: &'a str,
    /// The host's tunnel address (its prefix is not routed: peers never reach each other).
    pub host_address: Ipv4Addr,
    pub routed_subnets: &'a [Ipv4Net],
    pub persistent_keepalive: u16,
}

/// A client's wg-quick config. It holds the client's private key, so `Debug` leaves the text out
/// and the memory is zeroed on drop.
pub struct ClientConfig(Zeroizing<String>);

impl ClientConfig {
    pub fn text(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientConfig(<contains a private key>)")
    }
}

/// The AllowedIPs a client routes through the tunnel: the host's tunnel address and the
/// subnets behind the host.
pub fn client_allowed_ips(host_address: Ipv4Addr, routed_subnets: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut ips = vec![Ipv4Net::from(host_address)];
    ips.extend(routed_subnets.iter().copied());
    ips
}

pub fn render_client_config(p: &ClientParams<'_>) -> ClientConfig {
    let mut s = Zeroizing::new(String::with_capacity(400));
    let allowed: Vec<String> =
        client_allowed_ips(p.host_address, p.routed_subnets).iter().map(|n| n.to_string()).collect();
    // Writing into a String cannot fail.
    let _ = writeln!(s, "[Interface]");
    let _ = writeln!(s, "PrivateKey = {}", p.private_key.to_base64().as_str());
    let _ = writeln!(s, "Address = {}/32", p.address);
    let _ = writeln!(s);
    let _ = writeln!(s, "[Peer]");
    let _ = writeln!(s, "PublicKey = {}", p.host_public_key);
    let _ = writeln!(s, "Endpoint = {}", p.endpoint);
    let _ = writeln!(s, "AllowedIPs = {}", allowed.join(", "));
    if p.persistent_keepalive > 0 {
        let _ = writeln!(s, "PersistentKeepalive = {}", p.persistent_keepalive);
    }
    ClientConfig(s)
}

/// The lines of a wg-quick config that `wg setconf` understands (what `wg-quick strip` prints):
/// wg-quick's own keys (Address, DNS, MTU, Table, hooks, SaveConfig) and comments are dropped.
pub fn strip_wg_quick(text: &str) -> String {
    const WG_QUICK_ONLY: [&str; 9] =
        ["address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown", "saveconfig"];
    let mut out = String::new();
    for line in text.lines() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let key = content.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
        if WG_QUICK_ONLY.contains(&key.as_str()) {
            continue;
        }
        out.push_str(content);
        out.push('\n');
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("the client config does not fit in a QR code: {0}")]
pub struct QrError(String);

/// The text as a QR code of Unicode half blocks (two modules a character), dark modules drawn
/// as the terminal's foreground, with the four-module quiet zone scanners need.
pub fn qr_terminal(text: &str) -> Result<String, QrError> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L)
        .map_err(|e| QrError(e.to_string()))?;
    // Terminals are mostly light text on dark: a scanner wants dark modules on a light ground,
    // so the "dark" modules are printed as blanks and the light ones as blocks.
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

//! The peers `add_peer` created, kept in `STATE_DIR/peers.json` (0600, replaced atomically, so
//! a crash leaves the old list or the new one, never half of either).

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WgError;
use crate::config::Peer;

pub const PEERS_FILE: &str = "peers.json";
pub const KEY_FILE: &str = "private.key";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    version: u32,
    peers: Vec<Peer>,
}

const VERSION: u32 = 1;

pub fn peers_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PEERS_FILE)
}

/// The stored peers; none when the file does not exist yet.
pub fn load_peers(state_dir: &Path) -> Result<Vec<Peer>, WgError> {
    let path = peers_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(WgError::State { path, message: format!("cannot read it: {e}") }),
    };
    let file: PeersFile = serde_json::from_str(&text).map_err(|e| WgError::State {
        path: path.clone(),
        message: format!("it is not loom's peer list ({e}); move it aside to start with no added peers"),
    })?;
    if file.version != VERSION {
        return Err(WgError::State {
            path,
            message: format!("version {} is not {VERSION}, the one this loomd knows", file.version),
        });
    }
    Ok(file.peers)
}

pub fn save_peers(state_dir: &Path, peers: &[Peer]) -> Result<(), WgError> {
    let file = PeersFile { version: VERSION, peers: peers.to_vec() };
    let mut text = serde_json::to_string_pretty(&file).expect("peers serialise");
    text.push('\n');
    write_private_file(&peers_path(state_dir), text.as_bytes())
}

/// Replaces `path` with `bytes`: an owner-only temporary file in the same directory, synced,
/// renamed over it, and the directory synced. Creates the directory (0700) if missing.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), WgError> {
    let fail =
        |what: &str, e: std::io::Error| WgError::State { path: path.to_path_buf(), message: format!("{what}: {e}") };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("cannot create its directory", e))?;
    // tempfile creates the file 0600 already; set it anyway so a umask or a changed default
    // never widens it.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| fail("cannot create a temporary file beside it", e))?;
    crate::keys::write_all_synced(tmp.as_file_mut(), bytes).map_err(|e| fail("cannot write it", e))?;
    tmp.persist(path).map_err(|e| fail("cannot rename the new version into place", e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("cannot sync its directory", e))?;
    Ok(())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

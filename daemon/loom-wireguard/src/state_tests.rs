use std::net::Ipv4Addr;

use super::*;
use crate::keys::{PrivateKey, load_or_create_private_key, read_private_key};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn public_key_matches_wg_pubkey() {
    // `echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`
    let key = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
    assert_eq!(key.public_key().to_string(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
    assert!(PrivateKey::from_base64("not a key").is_none());
}

#[test]
fn peers_round_trip_in_an_owner_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("wireguard");
    assert!(load_peers(&state).unwrap().is_empty(), "no file yet is no peers");
    let peers = vec![
        Peer {
            name: "alice".into(),
            public_key: PrivateKey::generate().public_key(),
            address: Ipv4Addr::new(10, 88, 0, 2),
        },
        Peer {
            name: "bob".into(),
            public_key: PrivateKey::generate().public_key(),
            address: Ipv4Addr::new(10, 88, 0, 3),
        },
    ];
    save_peers(&state, &peers).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&peers_path(&state)), 0o600);
    assert_eq!(load_peers(&state).unwrap(), peers);
    save_peers(&state, &peers[1..]).unwrap();
    assert_eq!(load_peers(&state).unwrap(), peers[1..].to_vec());
    // The temporary files of the replacements are gone.
    let names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from(PEERS_FILE)]);
}

#[test]
fn a_damaged_peer_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(peers_path(dir.path()), "{\"version\":1,\"peers\":[{\"name\":\"x\"}]}").unwrap();
    let e = load_peers(dir.path()).unwrap_err().to_string();
    assert!(e.contains("peers.json") && e.contains("move it aside"), "{e}");
    std::fs::write(peers_path(dir.path()), "{\"version\":9,\"peers\":[]}").unwrap();
    let e = load_peers(dir.path()).unwrap_err().to_string();
    assert!(e.contains("version 9"), "{e}");
}

#[test]
fn the_host_key_is_generated_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join(KEY_FILE);
    let first = load_or_create_private_key(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let again = load_or_create_private_key(&path).unwrap();
    assert_eq!(first.public_key(), again.public_key());
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim(), first.to_base64().as_str());
}

#[test]
fn an_operator_key_file_must_be_owner_only_and_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wg.key");
    std::fs::write(&path, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_private_key(&path).unwrap_err().to_string();
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        read_private_key(&path).unwrap().public_key().to_string(),
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
    );
    std::fs::write(&path, "garbage").unwrap();
    let e = read_private_key(&path).unwrap_err().to_string();
    assert!(e.contains("wg genkey"), "{e}");
    let e = read_private_key(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(e.contains("cannot read it"), "{e}");
}

use super::*;

fn params<'a>(key: &'a PrivateKey, routed: &'a [Ipv4Net], keepalive: u16) -> ClientParams<'a> {
    ClientParams {
        private_key: key,
        address: Ipv4Addr::new(10, 88, 0, 7),
        host_public_key: "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=".parse().unwrap(),
        endpoint: "host.example:51820",
        host_address: Ipv4Addr::new(10, 88, 0, 1),
        routed_subnets: routed,
        persistent_keepalive: keepalive,
    }
}

#[test]
fn client_config_says_everything_a_client_needs() {
    let key = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
    let routed = ["10.87.0.0/16".parse().unwrap()];
    let cfg = render_client_config(&params(&key, &routed, 25));
    assert_eq!(
        cfg.text(),
        "[Interface]\n\
         PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n\
         Address = 10.88.0.7/32\n\
         \n\
         [Peer]\n\
         PublicKey = TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=\n\
         Endpoint = host.example:51820\n\
         AllowedIPs = 10.88.0.1/32, 10.87.0.0/16\n\
         PersistentKeepalive = 25\n"
    );
    // The private key never reaches a log through Debug.
    assert!(!format!("{cfg:?}").contains("yAnz5"));
    assert!(!format!("{key:?}").contains("yAnz5"));
    assert!(format!("{key:?}").contains(&key.public_key().to_string()));
}

#[test]
fn keepalive_zero_is_left_out_and_several_subnets_are_listed() {
    let key = PrivateKey::generate();
    let routed = ["10.87.0.0/16".parse().unwrap(), "192.168.50.0/24".parse().unwrap()];
    let text = render_client_config(&params(&key, &routed, 0)).text().to_string();
    assert!(!text.contains("PersistentKeepalive"));
    assert!(text.contains("AllowedIPs = 10.88.0.1/32, 10.87.0.0/16, 192.168.50.0/24\n"), "{text}");
}

#[test]
fn strip_keeps_what_wg_setconf_reads() {
    let key = PrivateKey::generate();
    let routed = ["10.87.0.0/16".parse().unwrap()];
    let cfg = render_client_config(&params(&key, &routed, 25));
    let stripped = strip_wg_quick(&format!("# a comment\n{}DNS = 10.87.0.1\nMTU = 1380 # inline\n", cfg.text()));
    assert!(!stripped.contains("Address") && !stripped.contains("DNS") && !stripped.contains("MTU"));
    assert!(!stripped.contains('#'));
    for wanted in [
        "[Interface]",
        "PrivateKey = ",
        "[Peer]",
        "PublicKey = ",
        "Endpoint = host.example:51820",
        "AllowedIPs = 10.88.0.1/32, 10.87.0.0/16",
        "PersistentKeepalive = 25",
    ] {
        assert!(stripped.contains(wanted), "{wanted} missing from {stripped}");
    }
}

/// Reads a Dense1x2 rendering back into modules (true = dark module, drawn as a blank here).
fn modules_of(rendered: &str) -> Vec<Vec<bool>> {
    let mut rows = vec![];
    for line in rendered.lines() {
        let (mut top, mut bottom) = (vec![], vec![]);
        for c in line.chars() {
            // Inverted: a block is a light module.
            let (t, b) = match c {
                '█' => (false, false),
                '▀' => (false, true),
                '▄' => (true, false),
                ' ' => (true, true),
                other => panic!("unexpected {other:?} in the QR rendering"),
            };
            top.push(t);
            bottom.push(b);
        }
        rows.push(top);
        rows.push(bottom);
    }
    rows
}

#[test]
fn qr_code_renders_the_config_modules() {
    let key = PrivateKey::generate();
    let routed = ["10.87.0.0/16".parse().unwrap()];
    let cfg = render_client_config(&params(&key, &routed, 25));
    let rendered = qr_terminal(cfg.text()).unwrap();
    let code = qrcode::QrCode::with_error_correction_level(cfg.text().as_bytes(), qrcode::EcLevel::L).unwrap();
    let width = code.width();
    let colors = code.to_colors();
    let grid = modules_of(&rendered);
    // Four quiet modules on each side.
    assert_eq!(grid[0].len(), width + 8);
    assert!(grid.len() >= width + 8);
    for y in 0..width {
        for x in 0..width {
            let dark = colors[y * width + x] == qrcode::Color::Dark;
            assert_eq!(grid[y + 4][x + 4], dark, "module ({x},{y})");
        }
    }
    for row in grid.iter().take(4) {
        assert!(row.iter().all(|m| !m), "the quiet zone is light");
    }
    // A different key is a different picture.
    let other = PrivateKey::generate();
    assert_ne!(qr_terminal(render_client_config(&params(&other, &routed, 25)).text()).unwrap(), rendered);
}

#[test]
fn too_much_text_is_an_error_not_a_panic() {
    let e = qr_terminal(&"x".repeat(8000)).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

//! Tailscale inside a weaver (`--tailscale`): `[tailscale]` in loomd's config, the script the
//! weaver's start runs to join the tailnet, and the egress rules tailscaled needs. The auth
//! key is a SOPS secret; loomd puts it in [`AUTH_KEY`] right before the start and the script
//! removes it before the weaver's first process runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the auth key waits for `tailscale up`, and the script that joins, in the weaver's root.
pub const DIR: &str = ".loom/tailscale";
pub const AUTH_KEY: &str = ".loom/tailscale/authkey";
pub const UP_SCRIPT: &str = ".loom/tailscale/up.sh";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailscaleConfig {
    pub enable: bool,
    /// The path of an ephemeral, tagged auth key in the SOPS file (`[secrets] file`).
    pub auth_key_secret: String,
    /// `tag:NAME`s the weavers' nodes advertise (the auth key must allow them).
    pub tags: Vec<String>,
    /// The binaries as the weaver sees them (the host's `/usr` or `/nix/store` are its own).
    pub tailscaled: PathBuf,
    pub tailscale: PathBuf,
    /// A control server other than Tailscale's (Headscale), `https://…`.
    pub login_server: Option<String>,
}

impl Default for TailscaleConfig {
    fn default() -> Self {
        TailscaleConfig {
            enable: false,
            auth_key_secret: String::new(),
            tags: vec!["tag:loom-weaver".into()],
            tailscaled: "/usr/sbin/tailscaled".into(),
            tailscale: "/usr/bin/tailscale".into(),
            login_server: None,
        }
    }
}

fn tag_ok(t: &str) -> bool {
    t.strip_prefix("tag:")
        .is_some_and(|n| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// A path or URL goes into a shell script: only characters that need no quoting.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:+".contains(c))
}

impl TailscaleConfig {
    /// What is wrong with it, as `(field, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !self.enable {
            return None;
        }
        if self.auth_key_secret.is_empty() {
            return Some((
                "tailscale.auth_key_secret",
                "name the SOPS secret that holds an ephemeral, tagged auth key".into(),
            ));
        }
        if self.tags.is_empty() || self.tags.iter().any(|t| !tag_ok(t)) {
            return Some(("tailscale.tags", format!("{:?}: use one or more tag:NAME (a-z, 0-9, '-')", self.tags)));
        }
        for (field, p) in [("tailscale.tailscaled", &self.tailscaled), ("tailscale.tailscale", &self.tailscale)] {
            if !p.is_absolute() || !plain(&p.to_string_lossy()) {
                return Some((field, format!("{p:?} is not an absolute path of plain characters")));
            }
        }
        if let Some(url) = &self.login_server
            && (!url.starts_with("https://") || !plain(url) || login_host(url).is_none())
        {
            return Some(("tailscale.login_server", format!("{url:?} is not an https:// URL")));
        }
        None
    }

    /// What tailscaled must reach besides: the coordination server and DERP relays over
    /// HTTPS, STUN over UDP. Direct peer-to-peer UDP is not opened, so traffic is relayed.
    pub fn egress_rules(&self) -> Vec<String> {
        let mut rules = vec!["tailscale.com:443/tcp".to_string(), "tailscale.com:3478/udp".to_string()];
        if let Some(host) = self.login_server.as_deref().and_then(login_host) {
            rules.push(format!("{host}:443/tcp"));
        }
        rules
    }

    /// The script the start wrapper sources for a `--tailscale` weaver named `hostname` (a
    /// valid weaver name): tailscaled in user-space mode with its state in memory, so the node
    /// logs out when the weaver stops, then `tailscale up` with the key file, which is removed
    /// whatever the outcome, before anything of the weaver runs.
    pub fn up_script(&self, hostname: &str) -> String {
        let login = self.login_server.as_ref().map(|u| format!(" --login-server={u}")).unwrap_or_default();
        format!(
            "# Written by loomd before every start.\n\
             mkdir -p /run/tailscale /{DIR}/state\n\
             {tailscaled} --tun=userspace-networking --state=mem: --statedir=/{DIR}/state --socket=/run/tailscale/tailscaled.sock </dev/null &\n\
             i=0; while [ ! -S /run/tailscale/tailscaled.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             rc=0; {tailscale} --socket=/run/tailscale/tailscaled.sock up --auth-key=file:/{AUTH_KEY} --hostname={hostname} --advertise-tags={tags} --ssh --timeout=30s{login} || rc=$?\n\
             rm -f /{AUTH_KEY}\n\
             [ $rc -eq 0 ] || {{ echo \"loom: --tailscale: tailscale up failed (above); the weaver did not join the tailnet\" >&2; exit 1; }}\n",
            tailscaled = self.tailscaled.display(),
            tailscale = self.tailscale.display(),
            tags = self.tags.join(","),
        )
    }
}

fn login_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> TailscaleConfig {
        TailscaleConfig { enable: true, auth_key_secret: "tailscale/auth_key".into(), ..Default::default() }
    }

    #[test]
    fn a_disabled_section_is_never_wrong_and_an_enabled_one_needs_its_secret() {
        assert_eq!(TailscaleConfig { auth_key_secret: String::new(), ..Default::default() }.problem(), None);
        assert_eq!(on().problem(), None);
        let no_key = TailscaleConfig { auth_key_secret: String::new(), ..on() };
        assert_eq!(no_key.problem().unwrap().0, "tailscale.auth_key_secret");
        assert_eq!(TailscaleConfig { tags: vec!["loom".into()], ..on() }.problem().unwrap().0, "tailscale.tags");
        let shell = TailscaleConfig { tailscaled: "/usr/bin/x; rm -rf /".into(), ..on() };
        assert_eq!(shell.problem().unwrap().0, "tailscale.tailscaled");
        let http = TailscaleConfig { login_server: Some("http://hs.example".into()), ..on() };
        assert_eq!(http.problem().unwrap().0, "tailscale.login_server");
    }

    #[test]
    fn the_script_joins_with_the_key_file_removes_it_either_way_and_fails_the_start_on_error() {
        let s = on().up_script("fixer");
        assert!(s.contains("--tun=userspace-networking --state=mem:"), "{s}");
        assert!(s.contains(
            "up --auth-key=file:/.loom/tailscale/authkey --hostname=fixer --advertise-tags=tag:loom-weaver --ssh"
        ));
        let (up, rm, fail) =
            (s.find(" up ").unwrap(), s.find("rm -f /.loom/tailscale/authkey").unwrap(), s.find("exit 1").unwrap());
        assert!(up < rm && rm < fail, "{s}");
    }

    #[test]
    fn the_egress_rules_name_the_coordination_server_and_relays() {
        let hs = TailscaleConfig { login_server: Some("https://hs.example:8443/x".into()), ..on() };
        assert_eq!(hs.egress_rules().last().unwrap(), "hs.example:443/tcp");
        for r in hs.egress_rules() {
            crate::egress::policy_of(std::slice::from_ref(&r)).unwrap();
        }
    }
}

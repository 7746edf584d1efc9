//! The provider keys, decrypted from the SOPS file at start (and on SIGHUP) and kept only in
//! this process's memory. `loom secrets check` reports which configured secrets resolve,
//! never their values.

use std::sync::RwLock;

use loom_core::config::Config;
use loom_secrets::SecretTree;
use serde::Serialize;

#[derive(Debug)]
enum State {
    NotConfigured,
    Loaded(Box<SecretTree>),
    Failed(String),
}

#[derive(Debug)]
pub struct Secrets {
    state: RwLock<State>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretCheck {
    pub provider: String,
    pub path: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretsReport {
    pub file: Option<String>,
    /// `decrypted`, `not configured` or `error`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwrapped_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub secrets: Vec<SecretCheck>,
}

fn load(config: &Config) -> State {
    let Some(file) = config.secrets.file.clone() else { return State::NotConfigured };
    let cfg = loom_secrets::SecretsConfig {
        file,
        format: config.secrets.format.clone(),
        age_key_file: config.secrets.age_key_file.clone(),
        ssh_host_keys: config.secrets.ssh_host_keys.clone(),
        pgp_key_file: config.secrets.pgp_key_file.clone(),
    };
    match cfg.load() {
        Ok(tree) => State::Loaded(Box::new(tree)),
        Err(e) => State::Failed(crate::error_chain(&e)),
    }
}

/// The `secret` key path of each `[providers.NAME]` table.
fn provider_paths(config: &Config) -> Vec<(String, String)> {
    config
        .providers
        .iter()
        .filter_map(|(name, t)| Some((name.clone(), t.get("secret")?.as_str()?.to_string())))
        .collect()
}

impl Secrets {
    pub fn load(config: &Config) -> Secrets {
        let s = Secrets { state: RwLock::new(load(config)) };
        if let Some(w) = s.warning() {
            tracing::warn!(warning = %w, "secrets");
        }
        s
    }

    pub fn reload(&self, config: &Config) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = load(config);
        if let Some(w) = self.warning() {
            tracing::warn!(warning = %w, "secrets");
        }
    }

    /// Why the proxy will have no keys, for `loom status`.
    pub fn warning(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Failed(e) => Some(format!("secrets: {e}; the LLM proxy has no provider keys until this is fixed")),
            _ => None,
        }
    }

    /// A copy of one secret for the proxy to inject; zeroed when the copy drops.
    pub fn get(&self, path: &str) -> Option<zeroize::Zeroizing<String>> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Loaded(tree) => tree.get(path).ok().map(|s| zeroize::Zeroizing::new(s.expose().to_string())),
            _ => None,
        }
    }

    pub fn check(&self, config: &Config) -> SecretsReport {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let file = config.secrets.file.as_ref().map(|f| f.display().to_string());
        let (status, unwrapped_by, error) = match &*state {
            State::NotConfigured => ("not configured", None, None),
            State::Loaded(tree) => ("decrypted", Some(tree.unwrapped_by().to_string()), None),
            State::Failed(e) => ("error", None, Some(e.clone())),
        };
        let secrets = provider_paths(config)
            .into_iter()
            .map(|(provider, path)| {
                let result = match &*state {
                    State::Loaded(tree) => tree.get(&path).map(|_| ()).map_err(|e| e.to_string()),
                    State::NotConfigured => Err("no [secrets] file is configured".to_string()),
                    State::Failed(_) => Err("the secrets file did not decrypt".to_string()),
                };
                SecretCheck { provider, path, ok: result.is_ok(), error: result.err() }
            })
            .collect();
        SecretsReport { file, status: status.into(), unwrapped_by, error, secrets }
    }
}

//! The `systemd` backend: each weaver run is a transient unit running systemd-nspawn,
//! registered with systemd-machined. (Being built; until then it refuses to start.)

use std::path::PathBuf;
use std::time::Duration;

use super::BackendError;

#[derive(Debug)]
pub struct SystemdBackend;

impl SystemdBackend {
    pub async fn connect(_weavers_dir: PathBuf, _start_timeout: Duration) -> Result<SystemdBackend, BackendError> {
        Err(BackendError::Unsupported("systemd"))
    }
}

#[async_trait::async_trait]
impl super::Backend for SystemdBackend {
    fn kind(&self) -> loom_core::config::BackendKind {
        loom_core::config::BackendKind::Systemd
    }
    async fn start(&self, _launch: &super::Launch) -> Result<super::Started, BackendError> {
        Err(BackendError::Unsupported("systemd"))
    }
    async fn observe(&self, _id: &loom_core::weaver::WeaverId, _h: &super::RunHandle) -> super::Observed {
        super::Observed::Lost { reason: "the systemd backend is not built yet".into() }
    }
    async fn wait(&self, id: &loom_core::weaver::WeaverId, h: &super::RunHandle) -> super::Observed {
        self.observe(id, h).await
    }
    async fn stop(
        &self,
        _id: &loom_core::weaver::WeaverId,
        _h: &super::RunHandle,
        _g: Duration,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("systemd"))
    }
    async fn cleanup(&self, _id: &loom_core::weaver::WeaverId) -> Result<(), BackendError> {
        Ok(())
    }
    fn exec_plan(
        &self,
        _id: &loom_core::weaver::WeaverId,
        _pid: i32,
        command: &[String],
        _tty: bool,
    ) -> super::ExecPlan {
        super::ExecPlan { argv: command.to_vec(), join_cgroups: vec![] }
    }
    fn cgroup_id(&self, _id: &loom_core::weaver::WeaverId) -> Option<u64> {
        None
    }
}

//! The management CLI: talks to a running scheduler through the admin service.

mod render;

use ladle_common::client::{self, ClientAuth, ConnectError, TokenInterceptor};
use ladle_proto::v1::{
    ClusterStatusRequest, ListAgentsRequest, SetDrainRequest,
    admin_service_client::AdminServiceClient,
};
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

pub use render::{AgentRow, JobRow, agent_rows, agents_table, job_rows, jobs_table, status_text};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the scheduler at {address} refused: {message}")]
    Refused { address: String, message: String },
    #[error("the call to the scheduler at {address} failed: {message}")]
    Failed { address: String, message: String },
}

/// A scheduler to talk to, and how to prove who we are.
pub struct Target {
    pub address: String,
    pub auth: ClientAuth,
}

type Admin = AdminServiceClient<InterceptedService<Channel, TokenInterceptor>>;

impl Target {
    async fn admin(&self) -> Result<Admin, CliError> {
        let channel = client::connect(&self.address, &self.auth).await?;
        Ok(ladle_common::with_message_limits!(
            AdminServiceClient::with_interceptor(channel, self.auth.interceptor())
        ))
    }

    fn failed(&self, status: Status) -> CliError {
        let address = self.address.clone();
        if let Some(err) = client::plaintext_refused(&address, &self.auth, &status) {
            return CliError::Connect(err);
        }
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::NotFound
            | Code::InvalidArgument => CliError::Refused { address, message },
            _ => CliError::Failed { address, message },
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, CliError> {
        let reply = self
            .admin()
            .await?
            .list_agents(ListAgentsRequest {})
            .await
            .map_err(|s| self.failed(s))?;
        Ok(agent_rows(reply.into_inner().agents))
    }

    pub async fn status(&self) -> Result<ladle_proto::v1::ClusterStatusResponse, CliError> {
        let reply = self
            .admin()
            .await?
            .cluster_status(ClusterStatusRequest {})
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner())
    }

    pub async fn jobs(&self) -> Result<Vec<ladle_proto::v1::JobInfo>, CliError> {
        let reply = self
            .admin()
            .await?
            .list_jobs(ladle_proto::v1::ListJobsRequest {})
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner().jobs)
    }

    /// Cancels the unfinished tasks of the job named by id, id prefix or name.
    pub async fn cancel_job(
        &self,
        job: &str,
    ) -> Result<ladle_proto::v1::CancelJobResponse, CliError> {
        let reply = self
            .admin()
            .await?
            .cancel_job(ladle_proto::v1::CancelJobRequest {
                job: job.to_owned(),
            })
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner())
    }

    /// Drains (or undrains) the agent named by id, id prefix or hostname; returns its row.
    pub async fn set_drain(&self, agent: &str, draining: bool) -> Result<AgentRow, CliError> {
        let reply = self
            .admin()
            .await?
            .set_drain(SetDrainRequest {
                agent: agent.to_owned(),
                draining,
            })
            .await
            .map_err(|s| self.failed(s))?;
        let info = reply.into_inner().agent.ok_or_else(|| CliError::Failed {
            address: self.address.clone(),
            message: "the reply named no agent".into(),
        })?;
        Ok(agent_rows(vec![info]).remove(0))
    }
}

//! The management CLI: talks to a running scheduler through the admin service.

mod render;

use ladle_common::client::{self, ClientAuth, ConnectError, TokenInterceptor};
use ladle_proto::v1::{
    ClusterStatusRequest, ListAgentsRequest, SetDrainRequest,
    admin_service_client::AdminServiceClient,
};
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

pub use render::{
    AgentRow, JobRow, TaskRow, agent_rows, agents_table, job_row, job_rows, jobs_table,
    status_text, task_rows, tasks_text,
};

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

    /// The open jobs; with `all`, the recently finished ones after them.
    pub async fn jobs(&self, all: bool) -> Result<Vec<ladle_proto::v1::JobInfo>, CliError> {
        let reply = self
            .admin()
            .await?
            .list_jobs(ladle_proto::v1::ListJobsRequest { all })
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner().jobs)
    }

    /// A job's recent and failed tasks (id, id prefix or name; open or recently finished).
    pub async fn tasks(&self, job: &str) -> Result<ladle_proto::v1::ListTasksResponse, CliError> {
        let reply = self
            .admin()
            .await?
            .list_tasks(ladle_proto::v1::ListTasksRequest {
                job: job.to_owned(),
            })
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner())
    }

    /// A job's retained output.
    pub async fn logs(&self, job: &str) -> Result<ladle_proto::v1::JobLogsResponse, CliError> {
        let reply = self
            .admin()
            .await?
            .job_logs(ladle_proto::v1::JobLogsRequest {
                job: job.to_owned(),
            })
            .await
            .map_err(|s| self.failed(s))?;
        Ok(reply.into_inner())
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

/// `watch`: the status, agents and jobs, redrawn every `interval` until `stop` resolves. A
/// scheduler that does not answer is said so on the screen, and asked again at the next refresh.
pub async fn watch(
    target: &Target,
    interval: std::time::Duration,
    json: bool,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use std::io::Write;
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(interval.max(std::time::Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticks.tick() => {}
        }
        let view = async {
            Ok::<_, CliError>((
                target.status().await?,
                target.agents().await?,
                job_rows(target.jobs(true).await?),
            ))
        }
        .await;
        let mut out = std::io::stdout().lock();
        match (view, json) {
            (Ok((status, agents, jobs)), true) => {
                let value = serde_json::json!({
                    "cluster": status.cluster,
                    "agents": agents,
                    "jobs": jobs,
                    "tasks": { "queued": status.tasks_queued, "running": status.tasks_running },
                    "cpu_slots": { "busy": status.cpu_slots_busy, "total": status.cpu_slots_total },
                    "gpu_slots": { "busy": status.gpu_slots_busy, "total": status.gpu_slots_total },
                });
                writeln!(out, "{value}")?;
            }
            (Ok((status, agents, jobs)), false) => {
                // Clear the screen and home the cursor: a redraw, not a scroll.
                write!(out, "\x1b[2J\x1b[H")?;
                writeln!(out, "{}\n", status_text(&status, &target.address))?;
                writeln!(out, "{}\n", agents_table(&agents))?;
                writeln!(out, "{}", jobs_table(&jobs))?;
                writeln!(
                    out,
                    "\n(every {}; Ctrl-C to stop)",
                    humantime::format_duration(interval)
                )?;
            }
            (Err(err), true) => {
                writeln!(out, "{}", serde_json::json!({ "error": err.to_string() }))?
            }
            (Err(err), false) => {
                write!(out, "\x1b[2J\x1b[H")?;
                writeln!(
                    out,
                    "{err}\n(trying again every {})",
                    humantime::format_duration(interval)
                )?;
            }
        }
        out.flush()?;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("this scheduler serves no dashboard (its `http` setting is false)")]
    NotServed,
    #[error("cannot write the CA to {path}: {source}")]
    WriteCa {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--write-ca: this CLI trusts no CA of its own (the scheduler is not TLS, or no cluster file was given)"
    )]
    NoCa,
}

/// What `dashboard` prints: the page's address with the credential in it, or a Prometheus scrape
/// configuration.
pub fn dashboard_text(
    url: &str,
    auth: &ClientAuth,
    prometheus: bool,
    write_ca: Option<&std::path::Path>,
) -> Result<String, DashboardError> {
    if url.is_empty() {
        return Err(DashboardError::NotServed);
    }
    if let Some(path) = write_ca {
        let ca = auth.tls.as_ref().ok_or(DashboardError::NoCa)?;
        std::fs::write(path, &ca.ca_pem).map_err(|source| DashboardError::WriteCa {
            path: path.display().to_string(),
            source,
        })?;
    }
    let credential = auth.credential.as_ref().map(|t| t.as_str().to_owned());
    let tls = auth.tls.as_ref();
    if prometheus {
        let target = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut text = format!(
            "# A scrape configuration for prometheus.yml (the credential is a secret: keep the file private).\n\
             scrape_configs:\n  - job_name: ladle\n    scrape_interval: 15s\n    scheme: {}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            if tls.is_some() { "https" } else { "http" }
        );
        if let Some(credential) = &credential {
            text.push_str(&format!(
                "    authorization:\n      credentials: \"{credential}\"\n"
            ));
        }
        if let Some(tls) = tls {
            text.push_str(&format!(
                "    tls_config:\n      ca_file: {}\n      server_name: {}\n",
                write_ca.map_or("ca.pem (write it with --write-ca ca.pem)".to_owned(), |p| p
                    .display()
                    .to_string()),
                tls.server_name
                    .as_deref()
                    .unwrap_or(ladle_common::tls::CLUSTER_SERVER_NAME),
            ));
        }
        return Ok(text.trim_end().to_owned());
    }
    let mut text = match &credential {
        Some(credential) => {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("credential", credential)
                .finish();
            format!(
                "the dashboard: {url}?{query}\n(the page keeps the credential in a cookie and drops it from the address; it is a secret)"
            )
        }
        None => format!("the dashboard: {url}"),
    };
    // The address carries this CLI's own credential: a viewer's is all the page needs.
    if let Some(file) = &auth.file
        && !matches!(file.role, ladle_common::cluster_file::FileRole::View)
    {
        text.push_str(
            "\nwarning: this credential may change the cluster (it is not a viewer's): to share the page or keep it in a browser, use view.cluster (LADLE_CLUSTER_FILE=…/view.cluster ladle-scheduler dashboard)",
        );
    }
    text.push_str(&format!("\nPrometheus metrics: {url}metrics (`dashboard --prometheus` prints a scrape configuration)"));
    if let Some(tls) = tls {
        text.push_str(&format!(
            "\nthe scheduler's certificate is the cluster's own, for the name {:?}: a browser asks you to accept it unless it trusts the cluster's CA (--write-ca FILE) and reaches the scheduler by that name",
            tls.server_name.as_deref().unwrap_or(ladle_common::tls::CLUSTER_SERVER_NAME)
        ));
    }
    Ok(text)
}

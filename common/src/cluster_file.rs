//! Cluster files: everything one machine needs to take part in a cluster, in one file.
//!
//! `ladle-scheduler init` writes one per role: the scheduler's (its TLS key and certificate, the
//! digests of the credentials it accepts, and an admin credential for the CLI on that machine),
//! and one each for agents, drivers, admins and read-only viewers (a credential of that role and
//! the cluster's trust anchor). An operator copies the agent file to every agent machine and the
//! driver file to whoever runs jobs; nobody needs to know what a certificate is.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    credentials::{self, Accepted, Role},
    tls::{self, ClientTls, ServerTls},
    token::Token,
};

/// Which machine a file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    Scheduler,
    Agent,
    Driver,
    Admin,
    View,
}

impl FileRole {
    fn name(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::Agent => "agent",
            Self::Driver => "driver",
            Self::Admin => "admin",
            Self::View => "view",
        }
    }
}

/// The digests of the credentials a scheduler accepts, by role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptedDigests {
    pub agent: Vec<String>,
    pub driver: Vec<String>,
    pub admin: Vec<String>,
    pub view: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The cluster's name.
    pub cluster: String,
    /// The machine this file is for.
    pub role: FileRole,
    /// The scheduler's address, when `init` was told it (`https://head:7070`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// The name the scheduler's certificate carries, which clients check.
    pub server_name: String,
    /// The credential this machine presents (the scheduler's: an admin one, for its CLI).
    pub credential: String,
    /// Signs the scheduler's multicast announcements; grants nothing by itself.
    pub discovery_key: String,
    /// The certificate authority the scheduler's certificate is signed by (PEM).
    pub ca: String,
    /// The scheduler's own certificate and key (PEM): only in the scheduler's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Only in the scheduler's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<AcceptedDigests>,
}

/// Secrets never show in logs or `Debug` output.
impl std::fmt::Debug for ClusterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFile")
            .field("cluster", &self.cluster)
            .field("role", &self.role)
            .field("scheduler", &self.scheduler)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum ClusterFileError {
    #[error("cannot read the cluster file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the cluster file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "the cluster file {path} is for {role}s, not for a scheduler (use the scheduler's file, `scheduler.cluster`)"
    )]
    NotScheduler { path: String, role: &'static str },
    #[error("{0} already exists: remove it, or pass --force to replace it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Credential(#[from] credentials::CredentialError),
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Self, ClusterFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Reads a cluster file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ClusterFileError> {
        let invalid = |message: String| ClusterFileError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: Self = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        tls::check_pem("its `ca`", origin, &file.ca, "CERTIFICATE")?;
        Token::new(file.credential.clone()).map_err(|e| invalid(format!("`credential`: {e}")))?;
        Token::new(file.discovery_key.clone())
            .map_err(|e| invalid(format!("`discovery_key`: {e}")))?;
        if file.role == FileRole::Scheduler {
            let (Some(cert), Some(key), Some(_)) = (&file.tls_cert, &file.tls_key, &file.accept)
            else {
                return Err(invalid(
                    "a scheduler's file needs `tls_cert`, `tls_key` and `[accept]`".into(),
                ));
            };
            tls::check_pem("its `tls_cert`", origin, cert, "CERTIFICATE")?;
            tls::check_pem("its `tls_key`", origin, key, "PRIVATE KEY")?;
        }
        Ok(file)
    }

    /// The credential this machine presents.
    pub fn credential(&self) -> Option<Token> {
        Token::new(self.credential.clone()).ok()
    }

    pub fn discovery_key(&self) -> Option<Token> {
        Token::new(self.discovery_key.clone()).ok()
    }

    /// The trust a client of this cluster holds.
    pub fn client_tls(&self, origin: &Path) -> ClientTls {
        ClientTls {
            ca_pem: self.ca.clone(),
            server_name: Some(self.server_name.clone()),
            identity: None,
            anchor: format!(
                "the trust anchor (`ca`) of the cluster file {}",
                origin.display()
            ),
        }
    }

    /// The scheduler's TLS identity and accepted credentials, from its own file.
    pub fn server(&self, origin: &Path) -> Result<(ServerTls, Accepted), ClusterFileError> {
        let shown = origin.display().to_string();
        let (Some(cert), Some(key), Some(accept)) = (&self.tls_cert, &self.tls_key, &self.accept)
        else {
            return Err(ClusterFileError::NotScheduler {
                path: shown,
                role: self.role.name(),
            });
        };
        let digests = [
            (Role::Agent, &accept.agent),
            (Role::Driver, &accept.driver),
            (Role::Admin, &accept.admin),
            (Role::View, &accept.view),
        ]
        .into_iter()
        .flat_map(|(role, list)| list.iter().map(move |d| (role, d.clone())));
        let accepted = Accepted::from_digests(digests)?;
        Ok((
            ServerTls {
                cert_pem: cert.clone(),
                key_pem: key.clone(),
                client_ca_pem: None,
            },
            accepted,
        ))
    }
}

/// What `ladle-scheduler init` is asked for.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub cluster: String,
    /// The address clients will use, written into every file (`https://head:7070`).
    pub scheduler: Option<String>,
    /// More names or addresses for the scheduler's certificate (for clients that check the
    /// host's own name rather than the cluster's).
    pub names: Vec<String>,
    /// An operator's own certificate, key and CA, instead of ones made here.
    pub own: Option<OwnCertificates>,
}

#[derive(Clone, Debug)]
pub struct OwnCertificates {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// The name clients check in that certificate.
    pub server_name: String,
}

/// Every file of a new cluster, by file name.
pub fn generate(options: &InitOptions) -> Result<Vec<(String, ClusterFile)>, ClusterFileError> {
    let scheduler_host = options
        .scheduler
        .as_deref()
        .and_then(|a| crate::address::normalize(a).ok())
        .and_then(|url| host_of(&url));
    let (ca, cert, key, server_name) = match &options.own {
        Some(own) => (
            own.ca_pem.clone(),
            own.cert_pem.clone(),
            own.key_pem.clone(),
            own.server_name.clone(),
        ),
        None => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
            names.extend(scheduler_host.clone());
            names.extend(options.names.iter().cloned());
            let made = tls::make_certificates(&options.cluster, &names)?;
            (
                made.ca_pem,
                made.server_cert_pem,
                made.server_key_pem,
                tls::CLUSTER_SERVER_NAME.to_owned(),
            )
        }
    };
    let discovery_key = credentials::random_hex(32)?;
    let scheduler = options.scheduler.as_deref().map(|a| {
        let url = crate::address::normalize(a).unwrap_or_else(|_| a.to_owned());
        url.replacen("http://", "https://", 1)
    });

    let mut accept = AcceptedDigests::default();
    let mut credential_of = |role: Role| -> Result<String, ClusterFileError> {
        let token = credentials::generate(role)?;
        let digest = credentials::digest(token.as_str().as_bytes());
        match role {
            Role::Agent => accept.agent.push(digest),
            Role::Driver => accept.driver.push(digest),
            Role::Admin => accept.admin.push(digest),
            Role::View => accept.view.push(digest),
        }
        Ok(token.as_str().to_owned())
    };
    let base = |role: FileRole, credential: String| ClusterFile {
        cluster: options.cluster.clone(),
        role,
        scheduler: scheduler.clone(),
        server_name: server_name.clone(),
        credential,
        discovery_key: discovery_key.clone(),
        ca: ca.clone(),
        tls_cert: None,
        tls_key: None,
        accept: None,
    };
    let mut files = Vec::new();
    for (role, file_role) in [
        (Role::Agent, FileRole::Agent),
        (Role::Driver, FileRole::Driver),
        (Role::Admin, FileRole::Admin),
        (Role::View, FileRole::View),
    ] {
        files.push((
            format!("{}.cluster", file_role.name()),
            base(file_role, credential_of(role)?),
        ));
    }
    let mut own = base(FileRole::Scheduler, credential_of(Role::Admin)?);
    own.tls_cert = Some(cert);
    own.tls_key = Some(key);
    own.accept = Some(accept);
    files.insert(0, ("scheduler.cluster".into(), own));
    Ok(files)
}

fn host_of(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1;
    let (host, _) = authority.rsplit_once(':')?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// Writes the files into `dir`, readable by their owner only.
pub fn write_all(
    dir: &Path,
    files: &[(String, ClusterFile)],
    force: bool,
) -> Result<Vec<PathBuf>, ClusterFileError> {
    let write_err = |path: &Path, source| ClusterFileError::Write {
        path: path.display().to_string(),
        source,
    };
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| write_err(dir, e))?;
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let paths: Vec<PathBuf> = files.iter().map(|(name, _)| dir.join(name)).collect();
    if !force && let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(ClusterFileError::Exists(existing.clone()));
    }
    for ((_, file), path) in files.iter().zip(&paths) {
        let text = render(file).map_err(|e| write_err(path, e))?;
        // Written whole under a new name of our own (never through a link someone left in the
        // directory), readable by its owner only, then renamed over the old file if any.
        let tmp = path.with_extension("cluster.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|mut out| {
            out.write_all(text.as_bytes())?;
            out.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                write_err(path, e)
            })?;
    }
    Ok(paths)
}

fn render(file: &ClusterFile) -> std::io::Result<String> {
    let who = match file.role {
        FileRole::Scheduler => {
            "the scheduler's machine: `ladle-scheduler serve` and its CLI read it (LADLE_CLUSTER_FILE).\n\
             # It holds the scheduler's TLS key and an admin credential"
        }
        FileRole::Agent => {
            "every agent machine: `ladle-agent` reads it (LADLE_CLUSTER_FILE).\n# It lets a machine join as an agent"
        }
        FileRole::Driver => {
            "whoever runs jobs: programs read it (LADLE_CLUSTER_FILE).\n# It lets its holder run jobs"
        }
        FileRole::Admin => {
            "operators: the CLI reads it (LADLE_CLUSTER_FILE).\n# It lets its holder drain agents and cancel any job"
        }
        FileRole::View => {
            "dashboards and read-only operators (LADLE_CLUSTER_FILE).\n# It lets its holder read the cluster's status"
        }
    };
    let body = toml::to_string(file).map_err(std::io::Error::other)?;
    Ok(format!(
        "# Ladle cluster {:?}: the file for {who}.\n# Keep it secret (mode 0600). Made by `ladle-scheduler init`.\n\n{body}",
        file.cluster
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_files_that_load_and_fit_together() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(&InitOptions {
            cluster: "prod".into(),
            scheduler: Some("head:7070".into()),
            ..Default::default()
        })
        .unwrap();
        let paths = write_all(dir.path(), &files, false).unwrap();
        assert_eq!(paths.len(), 5);
        let scheduler = ClusterFile::load(&dir.path().join("scheduler.cluster")).unwrap();
        let agent = ClusterFile::load(&dir.path().join("agent.cluster")).unwrap();
        let driver = ClusterFile::load(&dir.path().join("driver.cluster")).unwrap();
        assert_eq!(agent.scheduler.as_deref(), Some("https://head:7070"));
        assert!(agent.tls_key.is_none() && agent.accept.is_none());
        let (_, accepted) = scheduler.server(Path::new("s")).unwrap();
        use crate::credentials::Grant;
        assert_eq!(
            accepted.grant_of(agent.credential.as_bytes()),
            Some(Grant::Role(Role::Agent))
        );
        assert_eq!(
            accepted.grant_of(driver.credential.as_bytes()),
            Some(Grant::Role(Role::Driver))
        );
        assert_eq!(
            accepted.grant_of(scheduler.credential.as_bytes()),
            Some(Grant::Role(Role::Admin))
        );
        assert!(matches!(
            agent.server(Path::new("a.cluster")),
            Err(ClusterFileError::NotScheduler { .. })
        ));
        assert!(matches!(
            write_all(dir.path(), &files, false),
            Err(ClusterFileError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths[0]).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }

    #[test]
    fn a_broken_file_is_named_with_what_is_wrong() {
        let err = ClusterFile::parse("cluster = 3", "/etc/ladle/agent.cluster").unwrap_err();
        assert!(
            err.to_string().contains("/etc/ladle/agent.cluster"),
            "{err}"
        );
        let files = generate(&InitOptions {
            cluster: "c".into(),
            ..Default::default()
        })
        .unwrap();
        let mut agent = files[1].1.clone();
        agent.ca = "not a certificate".into();
        let text = toml::to_string(&agent).unwrap();
        let err = ClusterFile::parse(&text, "a.cluster").unwrap_err();
        assert!(err.to_string().contains("ca"), "{err}");
    }
}

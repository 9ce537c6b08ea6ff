//! Who may do what: the roles of a cluster, the credentials that prove one, and the scheduler's
//! table of accepted credentials.
//!
//! A credential is a random secret (`ladle-driver-…`) presented on every call. The scheduler
//! keeps only SHA-256 digests of the ones it accepts, each with its role, so its own file lets
//! nobody in.

use std::{collections::HashMap, fmt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::token::Token;

/// What a credential lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Joins as an agent: runs tasks, fetches what they need, uploads their results.
    Agent,
    /// Runs jobs: opens sessions, submits and cancels its own tasks, reads the cluster's status.
    Driver,
    /// Everything a driver may, plus drain, undrain and cancel of any job.
    Admin,
    /// Reads the cluster's status, agents and jobs; changes nothing.
    View,
}

/// The kinds of call a role may be allowed, one per group of RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// The agent stream.
    Attach,
    /// A driver session.
    Submit,
    /// Blob upload and download (executables, shared values, big arguments and results).
    Blobs,
    /// Status, agents, jobs.
    Read,
    /// Drain, undrain, cancel any job.
    Manage,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Agent, Role::Driver, Role::Admin, Role::View];

    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Driver => "driver",
            Self::Admin => "admin",
            Self::View => "view",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Agent => matches!(permission, Attach | Blobs),
            Self::Driver => matches!(permission, Submit | Blobs | Read),
            Self::Admin => matches!(permission, Submit | Blobs | Read | Manage),
            Self::View => matches!(permission, Read),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the holder of a credential may do: one role, or (the legacy single token, an embedded
/// cluster's own credential, and an open loopback scheduler) everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Role(Role),
    Everything,
}

impl Grant {
    pub fn allows(self, permission: Permission) -> bool {
        match self {
            Self::Role(role) => role.allows(permission),
            Self::Everything => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Role(role) => role.name(),
            Self::Everything => "cluster token",
        }
    }
}

#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("cannot draw random bytes from the operating system: {0}")]
    Random(String),
    #[error("`{0}` is not a SHA-256 digest (64 hexadecimal digits)")]
    BadDigest(String),
}

/// Fresh random bytes, hex-encoded.
pub fn random_hex(bytes: usize) -> Result<String, CredentialError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

/// A new credential for `role`: the role in clear (for people reading files), 256 random bits.
pub fn generate(role: Role) -> Result<Token, CredentialError> {
    let secret = format!("ladle-{}-{}", role.name(), random_hex(32)?);
    // Hex digits and dashes are printable ASCII, which Token::new accepts.
    Token::new(secret).map_err(|e| CredentialError::Random(e.to_string()))
}

/// The digest the scheduler keeps of a credential.
pub fn digest(secret: &[u8]) -> String {
    hex(&Sha256::digest(secret))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The credentials a scheduler accepts, by digest.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    by_digest: HashMap<String, Role>,
    /// The legacy single token: it serves every role.
    everything: Option<Token>,
}

impl Accepted {
    /// Accepts the credentials whose digests are listed, each for its role.
    pub fn from_digests(
        digests: impl IntoIterator<Item = (Role, String)>,
    ) -> Result<Self, CredentialError> {
        let mut by_digest = HashMap::new();
        for (role, digest) in digests {
            let digest = digest.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CredentialError::BadDigest(digest));
            }
            by_digest.insert(digest, role);
        }
        Ok(Self {
            by_digest,
            everything: None,
        })
    }

    /// Also accepts one token for every role (the `token` setting, and embedded clusters).
    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.everything = token;
        self
    }

    /// No credential configured at all: the scheduler lets anyone in (loopback only).
    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty() && self.everything.is_none()
    }

    /// Whether roles are told apart (a cluster file), or one token serves all.
    pub fn has_roles(&self) -> bool {
        !self.by_digest.is_empty()
    }

    /// What a presented credential grants, if it is one of ours.
    pub fn grant_of(&self, presented: &[u8]) -> Option<Grant> {
        if let Some(token) = &self.everything
            && token.matches(presented)
        {
            return Some(Grant::Everything);
        }
        // Looking up a digest leaks nothing useful about the secret through timing.
        self.by_digest
            .get(&digest(presented))
            .copied()
            .map(Grant::Role)
    }

    /// The legacy token, when one serves every role (an agent too).
    pub fn token(&self) -> Option<&Token> {
        self.everything.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_they_say() {
        use Permission::*;
        assert!(Role::Agent.allows(Attach) && !Role::Agent.allows(Submit));
        assert!(!Role::Agent.allows(Manage) && !Role::Agent.allows(Read));
        assert!(Role::Driver.allows(Submit) && !Role::Driver.allows(Manage));
        assert!(!Role::Driver.allows(Attach));
        assert!(Role::Admin.allows(Manage) && !Role::Admin.allows(Attach));
        assert!(Role::View.allows(Read) && !Role::View.allows(Submit));
        assert!(!Role::View.allows(Blobs));
    }

    #[test]
    fn accepts_generated_credentials_by_digest_only() {
        let agent = generate(Role::Agent).unwrap();
        let driver = generate(Role::Driver).unwrap();
        assert!(agent.as_str().starts_with("ladle-agent-"));
        assert_ne!(agent, generate(Role::Agent).unwrap());
        let accepted = Accepted::from_digests([
            (Role::Agent, digest(agent.as_str().as_bytes())),
            (Role::Driver, digest(driver.as_str().as_bytes())),
        ])
        .unwrap();
        assert_eq!(
            accepted.grant_of(agent.as_str().as_bytes()),
            Some(Grant::Role(Role::Agent))
        );
        assert_eq!(
            accepted.grant_of(driver.as_str().as_bytes()),
            Some(Grant::Role(Role::Driver))
        );
        assert_eq!(accepted.grant_of(b"ladle-admin-guess"), None);
        assert!(Accepted::from_digests([(Role::View, "abc".into())]).is_err());
    }
}

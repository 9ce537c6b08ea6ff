//! The cluster's shared token: every agent and client presents it on every call.

use std::{fmt, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    EmptyFile { path: String },
    #[error("the token is empty: leave it unset to accept anyone, or give it a value")]
    Empty,
    #[error("both `token` and `token_file` are set: keep one")]
    Both,
    #[error("the token holds characters that cannot travel in a header (use printable ASCII)")]
    NotAscii,
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Result<Self, TokenError> {
        let value = value.into();
        if value.is_empty() {
            return Err(TokenError::Empty);
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotAscii);
        }
        Ok(Self(value))
    }

    /// The token from the settings' `token` or `token_file` (at most one of them).
    pub fn resolve(token: Option<&str>, file: Option<&Path>) -> Result<Option<Self>, TokenError> {
        match (token, file) {
            (Some(_), Some(_)) => Err(TokenError::Both),
            (Some(value), None) => Self::new(value).map(Some),
            (None, Some(path)) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(TokenError::EmptyFile { path: shown });
                }
                Self::new(value).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in constant time, so the token cannot be guessed byte by byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq::constant_time_eq(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_trims_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let token = Token::resolve(None, Some(&path)).unwrap().unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn refuses_ambiguous_or_empty_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            Token::resolve(Some("a"), Some(&path)),
            Err(TokenError::Both)
        ));
        assert!(matches!(
            Token::resolve(None, Some(&path)),
            Err(TokenError::EmptyFile { .. })
        ));
        assert!(matches!(
            Token::resolve(Some(""), None),
            Err(TokenError::Empty)
        ));
        let missing = dir.path().join("missing");
        let err = Token::resolve(None, Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        assert!(Token::resolve(None, None).unwrap().is_none());
    }
}

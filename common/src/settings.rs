//! Layered settings for every binary: built-in defaults < a TOML file < `LADLE_*` environment
//! variables < command-line flags.
//!
//! A misspelt key or a bad value is an error that names the key, so an operator never runs with
//! a silent default. Environment variables are shared by all of Ladle's programs in one shell
//! (`LADLE_TOKEN` serves the scheduler, its agents and the CLI alike), so each binary takes only
//! the variables that name one of its own keys and leaves the others alone.

use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Value};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// The prefix of every environment variable that sets a key: `LADLE_PORT` sets `port`,
/// `LADLE_LABELS__ZONE` sets `labels.zone`.
pub const ENV_PREFIX: &str = "LADLE_";
const ENV_NESTING: &str = "__";

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read configuration file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration{origin}: key `{key}`: {message}")]
    Invalid {
        key: String,
        message: String,
        origin: String,
    },
    #[error("invalid configuration: {0}")]
    Other(String),
}

impl SettingsError {
    /// The exit status a binary uses when its settings are wrong: 2, as for a usage error.
    pub const EXIT_CODE: u8 = 2;
}

/// Where the layers above the defaults come from.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    pub file: Option<&'a Path>,
    /// Flags given on the command line, as (key, value); they win over everything else.
    pub flags: Vec<(&'static str, Value)>,
    /// Environment variables to consider; `None` reads the process environment.
    pub env: Option<Vec<(String, String)>>,
}

/// Builds `T` from its defaults and the given sources.
pub fn load<T>(defaults: &T, sources: Sources<'_>) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned,
{
    let keys = serde_aux::serde_introspection::serde_introspect::<T>();
    let mut builder = Config::builder()
        .add_source(Config::try_from(defaults).map_err(|e| SettingsError::Other(e.to_string()))?);

    if let Some(path) = sources.file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        // Parse once here so a syntax error names the file, not just "TOML".
        if let Err(err) = text.parse::<toml::Table>() {
            return Err(SettingsError::Syntax {
                path: path.to_owned(),
                message: err.to_string().trim().to_owned(),
            });
        }
        builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
    }

    let vars = sources.env.unwrap_or_else(|| std::env::vars().collect());
    let ours: config::Map<String, String> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let top = key.split(ENV_NESTING).next().unwrap_or_default();
            keys.contains(&top).then_some((key, value))
        })
        .collect();
    if !ours.is_empty() {
        builder = builder.add_source(
            Environment::default()
                .separator(ENV_NESTING)
                .source(Some(ours)),
        );
    }

    for (key, value) in sources.flags {
        builder = builder
            .set_override(key, value)
            .map_err(|e| SettingsError::Other(e.to_string()))?;
    }

    let merged = builder
        .build()
        .map_err(|e| SettingsError::Other(e.to_string()))?;
    let origin = match sources.file {
        Some(path) => format!(" (from {}, the environment or flags)", path.display()),
        None => String::new(),
    };
    serde_path_to_error::deserialize(merged).map_err(|err| {
        let key = err.path().to_string();
        let message = err.into_inner().to_string();
        SettingsError::Invalid {
            key: unknown_field(&message).map_or(key, |field| field.to_owned()),
            message,
            origin,
        }
    })
}

/// serde reports an unknown key at the level of its parent; name the key itself instead.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Keys of a settings struct, for documentation and for picking out environment variables.
pub fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        port: u16,
        name: String,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        labels: BTreeMap<String, String>,
    }

    fn defaults() -> Demo {
        Demo {
            port: 7070,
            name: "default".into(),
            timeout: Duration::from_secs(5),
            labels: BTreeMap::new(),
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn no_env() -> Option<Vec<(String, String)>> {
        Some(vec![])
    }

    #[test]
    fn layers_in_order() {
        let f = file("port = 8000\nname = \"from-file\"\ntimeout = \"2s\"\n");
        let env = vec![
            ("LADLE_NAME".to_owned(), "from-env".to_owned()),
            ("LADLE_LABELS__ZONE".to_owned(), "a".to_owned()),
            ("LADLE_SOMETHING_ELSE".to_owned(), "ignored".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let got: Demo = load(
            &defaults(),
            Sources {
                file: Some(f.path()),
                flags: vec![("port", Value::from(9000))],
                env: Some(env),
            },
        )
        .unwrap();
        assert_eq!(got.port, 9000);
        assert_eq!(got.name, "from-env");
        assert_eq!(got.timeout, Duration::from_secs(2));
        assert_eq!(got.labels.get("zone").map(String::as_str), Some("a"));
    }

    #[test]
    fn names_an_unknown_key() {
        let f = file("prot = 1\n");
        let err = load(
            &defaults(),
            Sources {
                file: Some(f.path()),
                env: no_env(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, .. } if key == "prot"),
            "{err}"
        );
    }

    #[test]
    fn names_a_key_with_a_bad_value() {
        let f = file("port = 70000\n");
        let err = load(
            &defaults(),
            Sources {
                file: Some(f.path()),
                env: no_env(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, .. } if key == "port"),
            "{err}"
        );
        let env = vec![("LADLE_TIMEOUT".to_owned(), "soon".to_owned())];
        let err = load(
            &defaults(),
            Sources {
                env: Some(env),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, .. } if key == "timeout"),
            "{err}"
        );
    }

    #[test]
    fn names_an_unreadable_or_broken_file() {
        let err = load(
            &defaults(),
            Sources {
                file: Some(Path::new("/nonexistent/ladle.toml")),
                env: no_env(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ladle.toml"), "{err}");
        let f = file("port = = 3\n");
        let err = load(
            &defaults(),
            Sources {
                file: Some(f.path()),
                env: no_env(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, SettingsError::Syntax { .. }), "{err}");
    }
}

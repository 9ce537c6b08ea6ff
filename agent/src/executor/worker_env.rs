//! What of the agent's environment a worker process must not inherit. A worker runs the job's
//! code, which is anyone's who can submit to the cluster: with the agent's token it could join
//! as an agent, open sessions, or talk to the scheduler's management API.

use std::ffi::OsString;

use ladle_common::settings::ENV_PREFIX;

/// Parts of a variable's name that mark it as holding a credential or saying where one is,
/// compared without underscores so that nested settings (`LADLE_TLS__CLIENT_CERT`) match too.
const CREDENTIAL_MARKS: [&str; 7] = [
    "TOKEN",
    "KEY",
    "SECRET",
    "CREDENTIAL",
    "PASSWORD",
    "CLUSTERFILE",
    "CLIENTCERT",
];

/// Whether a worker must not see the variable `name`: a `LADLE_*` variable whose name speaks of
/// a token, key, secret, credential, password, cluster file or client certificate. The settings
/// loader lower-cases what follows the prefix, so case does not save a name from the rule.
pub fn is_credential_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let Some(rest) = upper.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    let squeezed: String = rest.chars().filter(|&c| c != '_').collect();
    CREDENTIAL_MARKS.iter().any(|mark| squeezed.contains(mark))
}

/// The variables of `vars` (names as the process holds them) that a worker must not inherit.
/// A name that is not valid UTF-8 is judged by its readable part: the prefix and the marks are
/// ASCII, so replacing the rest loses nothing the rule looks at.
pub fn credential_vars(vars: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    vars.into_iter()
        .filter(|name| is_credential_var(&name.to_string_lossy()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use ladle_common::worker_protocol as wp;

    use super::*;

    #[test]
    fn credentials_are_recognised_and_what_a_worker_needs_is_not() {
        for name in [
            "LADLE_TOKEN",
            "LADLE_TOKEN_FILE",
            "LADLE_CLUSTER_FILE",
            "LADLE_TLS_KEY",
            "LADLE_TLS_CLIENT_KEY",
            "LADLE_TLS_CLIENT_CERT",
            "LADLE_TLS__CLIENT_CERT",
            "LADLE_ADMIN_SECRET",
            "LADLE_S3_CREDENTIALS",
            "LADLE_DB_PASSWORD",
            "LADLE_API_KEY_FILE",
            "ladle_token",
            "LADLE_Token_File",
        ] {
            assert!(is_credential_var(name), "{name} is a credential");
        }
        for name in [
            wp::SOCKET_ENV,
            wp::THREADS_ENV,
            wp::JOB_ENV,
            wp::GPU_ENV,
            wp::AGENT_ENV,
            wp::MAX_VALUE_ENV,
            "LADLE_SCHEDULER",
            "LADLE_CLUSTER",
            "LADLE_RUNTIME",
            "CUDA_VISIBLE_DEVICES",
            "RUST_LOG",
            "PATH",
            "HOME",
            // Only Ladle's own variables are the agent's to withhold.
            "AWS_SECRET_ACCESS_KEY",
            "MY_LADLE_TOKEN",
            "LADLE",
        ] {
            assert!(!is_credential_var(name), "{name} is passed on");
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_still_judged() {
        let odd = OsString::from_vec(b"LADLE_TOKEN_\xff".to_vec());
        let plain = OsString::from("LADLE_WORKER_JOB");
        assert_eq!(credential_vars([odd.clone(), plain]), vec![odd]);
    }
}

//! Scheduler addresses as users write them: `host:port`, `http://host:port`.

use thiserror::Error;

#[derive(Debug, Error)]
#[error("`{input}` is not a scheduler address: {why} (expected http://HOST:PORT)")]
pub struct AddressError {
    input: String,
    why: &'static str,
}

/// Normalises a scheduler address to a URL tonic accepts (`http://host:port`).
pub fn normalize(input: &str) -> Result<String, AddressError> {
    let trimmed = input.trim();
    let err = |why| AddressError {
        input: input.to_owned(),
        why,
    };
    if trimmed.is_empty() {
        return Err(err("it is empty"));
    }
    let url = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| err("only http:// and https:// are understood"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(err(
            "it must name a host and a port, and nothing after them",
        ));
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, port)| port)
        .ok_or_else(|| err("it has no port"))?;
    if port.parse::<u16>().is_err() {
        return Err(err("its port is not a number from 0 to 65535"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn adds_a_scheme_and_keeps_a_given_one() {
        assert_eq!(normalize("10.0.0.1:7070").unwrap(), "http://10.0.0.1:7070");
        assert_eq!(
            normalize("http://sched:7070/").unwrap(),
            "http://sched:7070"
        );
        assert_eq!(normalize("[::1]:7070").unwrap(), "http://[::1]:7070");
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(normalize("").unwrap_err().to_string().contains("empty"));
        assert!(
            normalize("sched")
                .unwrap_err()
                .to_string()
                .contains("no port")
        );
        assert!(
            normalize("sched:70000")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
        assert!(
            normalize("ftp://a:1")
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
    }
}

/// Fuzz targets of [`normalize`]: addresses come from files, environment variables and the
/// network (announcements). 1024 cases each, microseconds apiece; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{config, mutations_of_any};
    use proptest::prelude::*;

    use super::normalize;

    /// No panic; what is accepted is a URL with a scheme and a port, which it accepts again
    /// unchanged.
    fn check(input: &str) -> Result<(), TestCaseError> {
        if let Ok(url) = normalize(input) {
            prop_assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{url}"
            );
            let port = url.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            prop_assert!(matches!(port, Some(Ok(_))), "{url}");
            prop_assert_eq!(normalize(&url).ok(), Some(url));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn address_normalizer_never_panics_on_arbitrary_text(
            input in prop_oneof![any::<String>(), "(https?://|[a-z]*:/*)?[a-z0-9.:\\[\\]/ %-]{0,40}"],
        ) {
            check(&input)?;
        }

        #[test]
        fn address_normalizer_never_panics_on_damaged_addresses(
            bytes in mutations_of_any(vec![
                b"http://10.0.0.1:7070".to_vec(),
                b"[::1]:7070/".to_vec(),
                b" https://sched.example:65535 ".to_vec(),
            ]),
        ) {
            check(&String::from_utf8_lossy(&bytes))?;
        }
    }
}

//! Reading and checking `config.toml`.

use std::path::{Path, PathBuf};

use super::{Config, Secret};

/// A configuration mistake, with the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config{location}: {message}")]
    Parse { location: String, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid config key `{key}` at `{path}` line {line}: {message}")]
    InvalidAt {
        key: String,
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot read `{key}` file `{path}`")]
    ReadSecret {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = load_str(&text).map_err(|err| match err {
        ConfigError::Parse { location, message } => ConfigError::Parse {
            location: format!(" `{}`{location}", path.display()),
            message,
        },
        ConfigError::Invalid { key, message } => match line_of_key(&text, &key) {
            Some(line) => ConfigError::InvalidAt {
                key,
                path: path.to_owned(),
                line,
                message,
            },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    })?;
    config.read_secret_files()?;
    Ok(config)
}

/// Parses and validates configuration text; files it names are not read.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|err| parse_error(text, &err))?;
    config.validate()?;
    Ok(config)
}

fn parse_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let location = match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" at line {line}")
        }
        None => String::new(),
    };
    ConfigError::Parse {
        location,
        message: err.message().trim().to_owned(),
    }
}

/// Returns the 1-based line of `key`, such as `delivery.concurrency` or
/// `endpoints[1].url`, written as `name = value` below its table header.
/// When that line is missing, it returns the header's line. Keys written as
/// dotted keys or in inline tables are not found.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, field) = match key.strip_suffix(']') {
        Some(_) => (key, None),
        None => match key.rsplit_once('.') {
            Some((table, field)) => (table, Some(field)),
            None => return None,
        },
    };
    let (header, occurrence) = match table.split_once('[') {
        Some((name, index)) => (
            format!("[[{name}]]"),
            index.trim_end_matches(']').parse::<usize>().ok()?,
        ),
        None => (format!("[{table}]"), 0),
    };

    let lines: Vec<&str> = text.lines().collect();
    let header_index = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| is_header(line, &header))
        .nth(occurrence)
        .map(|(index, _)| index)?;
    let Some(field) = field else {
        return Some(header_index + 1);
    };
    let field_index = lines[header_index + 1..]
        .iter()
        .take_while(|line| !line.trim_start().starts_with('['))
        .position(|line| assigns(line, field));
    Some(header_index + 1 + field_index.map_or(0, |offset| offset + 1))
}

/// Tells whether `line` is the table header `header`, with an optional comment.
fn is_header(line: &str, header: &str) -> bool {
    line.trim()
        .strip_prefix(header)
        .is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with('#'))
}

/// Tells whether `line` assigns a value to the bare key `field`.
fn assigns(line: &str, field: &str) -> bool {
    line.trim_start()
        .strip_prefix(field)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Config {
    /// Checks the constraints that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source.url.trim().is_empty() {
            return Err(invalid(
                "source.url",
                "is empty; set the URL of the application database",
            ));
        }
        self.parse_postgres_urls()?;
        validate_identifier("source.slot", &self.source.slot)?;
        validate_identifier("source.publication", &self.source.publication)?;
        validate_identifier("queue.schema", &self.queue.schema)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid("log.filter", format!("`{}` is not a valid filter: {err}; write it as RUST_LOG, such as \"info,walhook=debug\"", self.log.filter)));
        }
        if self.delivery.concurrency == 0 {
            return Err(invalid("delivery.concurrency", "must be at least 1"));
        }
        if self.delivery.per_endpoint_concurrency == 0 {
            return Err(invalid(
                "delivery.per_endpoint_concurrency",
                "must be at least 1",
            ));
        }
        if self.delivery.max_batch == 0 {
            return Err(invalid("delivery.max_batch", "must be at least 1"));
        }
        if self.delivery.timeout.is_zero() {
            return Err(invalid("delivery.timeout", "must be longer than 0s"));
        }
        let mut endpoint_keys = std::collections::HashMap::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let key = format!("endpoints[{index}]");
            if let Some(id) = &endpoint.id {
                validate_endpoint_id(&format!("{key}.id"), id)?;
            }
            let subscription = crate::routing::SubscriptionKey::of_endpoint(endpoint);
            if let Some(first) = endpoint_keys.insert(subscription, index) {
                return Err(invalid(
                    &key,
                    format!("has the same `id` or, without one, the same `url` as endpoints[{first}]; give each entry a distinct `id`"),
                ));
            }
            let url = url::Url::parse(&endpoint.url).map_err(|err| {
                invalid(&format!("{key}.url"), format!("`{}`: {err}", endpoint.url))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(
                    &format!("{key}.url"),
                    "must start with http:// or https://",
                ));
            }
            if let Some(secret) = &endpoint.secret {
                validate_secret(&format!("{key}.secret"), secret)?;
            }
            if endpoint.secret.is_none() && endpoint.secret_file.is_none() {
                return Err(invalid(
                    &key,
                    "needs `secret_file` (or `secret`) to sign its webhooks",
                ));
            }
            for event in &endpoint.events {
                if crate::payload::EventKind::from_name(event).is_none() {
                    return Err(invalid(
                        &format!("{key}.events"),
                        format!("unknown event `{event}`; use the names of the webhook documentation, such as `STAGE_CHANGED`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads `source.password_file` and every `endpoints[].secret_file`.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.source.password_file {
            self.source.password = Some(read_secret("source.password_file", path)?);
        }
        for (index, endpoint) in self.endpoints.iter_mut().enumerate() {
            if let Some(path) = &endpoint.secret_file {
                let key = format!("endpoints[{index}].secret_file");
                let secret = read_secret(&key, path)?;
                validate_secret(&key, &secret)?;
                endpoint.secret = Some(secret);
            }
        }
        Ok(())
    }
}

/// Checks that `secret` contains one or more `whsec_` signing secrets.
fn validate_secret(key: &str, secret: &Secret) -> Result<(), ConfigError> {
    crate::delivery::signing::parse_secrets(secret)
        .map(|_| ())
        .map_err(|err| invalid(key, err.to_string()))
}

fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let path = &crate::ops::credential_path(path);
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecret {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned()))
}

fn validate_endpoint_id(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not a valid id; use lowercase letters, digits, `_` and `-`, at most 63 bytes"),
        ))
    }
}

fn validate_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !value.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not a plain identifier; use lowercase letters, digits and `_`, at most 63 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
url = "postgres://walhook@127.0.0.1/app"

[tables.jobs]
table = "public.jobs"
id = "id"
account = "account_id"
company = "company_id"
stage = "stage_id"
stage_changed_at = "stage_changed_at"

[subscriptions]
table = "public.webhook_subscriptions"
id = "id"
company = "company_id"
program = "program_id"
url = "url"
secret = "secret"
events = "events"
enabled = "enabled"
"#;

    fn error_of(text: &str) -> String {
        load_str(text).expect_err("config is invalid").to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = load_str(MINIMAL).expect("minimal config is valid");
        assert_eq!(config.source.slot, "walhook");
        assert_eq!(config.delivery.retry_schedule.len(), 8);
        assert_eq!(config.delivery.max_batch, 100);
        assert!(!config.delivery.allow_private_targets);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("[tables.jobs]", "[tables.jobs]\nstage_column = \"x\"");
        let message = error_of(&text);
        assert!(message.contains("stage_column"), "{message}");
        assert!(message.contains("line 6"), "{message}");
    }

    #[test]
    fn invalid_duration_names_value() {
        let text = format!("{MINIMAL}\n[delivery]\ntimeout = \"fifteen\"\n");
        let message = error_of(&text);
        assert!(message.contains("`fifteen`"), "{message}");
    }

    #[test]
    fn zero_batch_is_rejected() {
        let text = format!("{MINIMAL}\n[delivery]\nmax_batch = 0\n");
        assert!(error_of(&text).contains("delivery.max_batch"));
    }

    #[test]
    fn slot_must_be_plain_identifier() {
        let text = MINIMAL.replace("[source]\n", "[source]\nslot = \"Walhook-1\"\n");
        assert!(error_of(&text).contains("source.slot"));
    }

    #[test]
    fn endpoint_event_names_are_checked() {
        let text = format!(
            "{MINIMAL}\n[[endpoints]]\nurl = \"https://hooks.example.com/x\"\nsecret = \"whsec_AAAA\"\nevents = [\"JOB_DELETED\"]\n"
        );
        assert!(error_of(&text).contains("`JOB_DELETED`"));
    }

    #[test]
    fn invalid_key_line_is_found() {
        let text = format!("{MINIMAL}\n[delivery]\ntimeout = \"5s\"\nconcurrency = 0\n");
        let line = text
            .lines()
            .position(|l| l == "concurrency = 0")
            .map(|i| i + 1);
        assert_eq!(line_of_key(&text, "delivery.concurrency"), line);
    }

    #[test]
    fn endpoint_key_line_counts_entries() {
        let text = "[[endpoints]] # first\nurl = \"a\"\n\n[[endpoints]]\nid = \"x\"\nurl = \"b\"\n";
        assert_eq!(line_of_key(text, "endpoints[1].url"), Some(6));
        assert_eq!(line_of_key(text, "endpoints[0]"), Some(1));
        assert_eq!(
            line_of_key(text, "endpoints[1].events"),
            Some(4),
            "header line"
        );
        assert_eq!(line_of_key(text, "endpoints[2].url"), None);
    }

    #[test]
    fn load_names_line_of_invalid_key() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("config.toml");
        let text = format!("{MINIMAL}\n[delivery]\nconcurrency = 0\n");
        std::fs::write(&path, &text).expect("config written");
        let message = load(&path).expect_err("config is invalid").to_string();
        let line = text
            .lines()
            .position(|l| l == "concurrency = 0")
            .map_or(0, |i| i + 1);
        assert!(message.contains("`delivery.concurrency`"), "{message}");
        assert!(message.contains(&format!("line {line}")), "{message}");
    }

    #[test]
    fn endpoints_need_distinct_keys() {
        let endpoint =
            "\n[[endpoints]]\nurl = \"https://hooks.example.com/x\"\nsecret = \"whsec_AAAA\"\n";
        let text = format!("{MINIMAL}{endpoint}{endpoint}");
        assert!(error_of(&text).contains("endpoints[1]"));
        let named = format!("{MINIMAL}{endpoint}id = \"first\"\n{endpoint}");
        assert!(load_str(&named).is_ok(), "an id tells the entries apart");
    }

    #[test]
    fn endpoint_id_is_checked() {
        let text = format!("{MINIMAL}\n[[endpoints]]\nid = \"Billing Hook\"\nurl = \"https://hooks.example.com/x\"\nsecret = \"whsec_AAAA\"\n");
        assert!(error_of(&text).contains("endpoints[0].id"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let text = format!("{MINIMAL}\n[[endpoints]]\nurl = \"https://hooks.example.com/x\"\nsecret = \"whsec_dG9wc2VjcmV0\"\n");
        let config = load_str(&text).expect("valid config");
        assert!(!format!("{config:?}").contains("dG9wc2VjcmV0"));
    }

    #[test]
    fn endpoint_secret_must_decode() {
        for secret in ["", "whsec_notbase64!!!"] {
            let text = format!("{MINIMAL}\n[[endpoints]]\nurl = \"https://hooks.example.com/x\"\nsecret = \"{secret}\"\n");
            let error = error_of(&text);
            assert!(error.contains("endpoints[0].secret"), "{error}");
            assert!(error.contains("whsec_<base64>"), "{error}");
        }
    }
}

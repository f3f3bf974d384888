//! PostgreSQL connection strings with libpq's TLS keys.
//!
//! tokio-postgres 0.7 rejects `sslmode=verify-ca`, `verify-full` and keys
//! such as `sslrootcert`, which libpq accepts. So [`parse_connection_string`]
//! takes the TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslsni`) out of the URL's query or the `key=value` list, and hands the
//! rest to [`tokio_postgres::Config`]. Both forms are those of libpq's
//! "Connection Strings" documentation (libpq-connect.html).

use std::path::PathBuf;

use url::form_urlencoded;

use crate::tls::{SslMode, TlsOptions, TlsSettings};

/// TLS keys of libpq that walhook does not implement; naming one is an error.
const UNSUPPORTED_KEYS: [&str; 7] = [
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcompression",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

/// A connection target: the tokio-postgres settings and their TLS settings.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    /// Everything but TLS; its `ssl_mode` is `prefer`, `require` or `disable`
    /// to match [`PostgresTarget::tls`].
    pub config: tokio_postgres::Config,
    /// The TLS mode and the rustls configuration.
    pub tls: TlsSettings,
}

impl From<tokio_postgres::Config> for PostgresTarget {
    /// Uses the config's own `sslmode` without any certificate check and
    /// without reading the default files under `~/.postgresql`.
    fn from(config: tokio_postgres::Config) -> PostgresTarget {
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        PostgresTarget {
            config,
            tls: TlsSettings::unverified(mode),
        }
    }
}

/// A connection string split into its tokio-postgres part and its TLS keys.
#[derive(Debug)]
pub struct ParsedConnectionString {
    /// The settings without the TLS keys.
    pub config: tokio_postgres::Config,
    /// The TLS keys.
    pub tls: TlsOptions,
}

impl ParsedConnectionString {
    /// Reads the certificate files and returns the target.
    ///
    /// # Errors
    ///
    /// The message of [`crate::tls::TlsSetupError`].
    pub fn load(self) -> Result<PostgresTarget, String> {
        let tls = TlsSettings::load(&self.tls).map_err(|err| err.to_string())?;
        Ok(PostgresTarget {
            config: self.config,
            tls,
        })
    }
}

/// Parses a `postgres://` URL or a `key=value` string, reading no file.
///
/// # Errors
///
/// A message naming the offending key or value.
pub fn parse_connection_string(text: &str) -> Result<ParsedConnectionString, String> {
    let trimmed = text.trim();
    let (rest, pairs) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(trimmed)
        } else {
            split_key_values(trimmed)?
        };
    let tls = tls_options(&pairs)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|err| format!("{err}"))?;
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(ParsedConnectionString { config, tls })
}

fn is_tls_key(key: &str) -> bool {
    matches!(
        key,
        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslsni"
    ) || UNSUPPORTED_KEYS.contains(&key)
}

/// Splits the TLS parameters off a URL's query, keeping the others in order.
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let Some((path, query)) = base.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut remaining = form_urlencoded::Serializer::new(String::new());
    let mut tls = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if is_tls_key(&key) {
            tls.push((key.into_owned(), value.into_owned()));
        } else {
            remaining.append_pair(&key, &value);
        }
    }
    let remaining = remaining.finish();
    let mut rest = path.to_owned();
    if !remaining.is_empty() {
        rest.push('?');
        rest.push_str(&remaining);
    }
    if let Some(fragment) = fragment {
        rest.push('#');
        rest.push_str(fragment);
    }
    (rest, tls)
}

/// Splits the TLS keys off a `key=value` string, re-quoting the others.
fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut remaining = Vec::new();
    let mut tls = Vec::new();
    for (key, value) in parse_key_values(text)? {
        if is_tls_key(&key) {
            tls.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            remaining.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((remaining.join(" "), tls))
}

/// Parses `key = value` pairs, where a value may be single-quoted with
/// backslash escapes, as libpq reads them.
fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing `=` after `{key}`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of `{key}`")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn tls_options(pairs: &[(String, String)]) -> Result<TlsOptions, String> {
    let mut options = TlsOptions {
        sni: true,
        ..TlsOptions::default()
    };
    let path = |value: &str| (!value.is_empty()).then(|| PathBuf::from(value));
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => options.mode = SslMode::parse(value)?,
            "sslrootcert" if value == "system" => {
                // TODO: `sslrootcert=system` (libpq 16: the operating system's
                // CAs and verify-full) is not implemented.
                return Err(
                    "sslrootcert `system` is not supported: give the path of a PEM file with \
                     the CA certificates"
                        .to_owned(),
                );
            }
            "sslrootcert" => options.root_cert = path(value),
            "sslcert" => options.client_cert = path(value),
            "sslkey" => options.client_key = path(value),
            "sslsni" => {
                options.sni = match value.as_str() {
                    "1" => true,
                    "0" => false,
                    other => return Err(format!("invalid sslsni `{other}`: use 0 or 1")),
                }
            }
            other => return Err(format!("`{other}` is not supported: remove it")),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedConnectionString {
        parse_connection_string(text).expect("a valid connection string")
    }

    #[test]
    fn url_tls_keys_are_taken_out() {
        let parsed = parse(
            "postgres://u:p@db.example.com:5433/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem\
             &application_name=x&sslcert=/c.pem&sslkey=/c.key",
        );

        assert_eq!(parsed.tls.mode, SslMode::VerifyFull);
        assert_eq!(parsed.tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(parsed.tls.client_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(parsed.tls.client_key, Some(PathBuf::from("/c.key")));
        assert_eq!(parsed.config.get_application_name(), Some("x"));
        assert_eq!(parsed.config.get_dbname(), Some("app"));
        assert_eq!(parsed.config.get_ports(), &[5433]);
        assert_eq!(
            parsed.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require,
            "verify-full needs TLS"
        );
    }

    #[test]
    fn key_values_tls_keys_are_taken_out() {
        let parsed = parse(
            "host=127.0.0.1 user=walhook password='p w' sslmode = verify-ca \
             sslrootcert='/etc/my ca.pem' dbname=app",
        );

        assert_eq!(parsed.tls.mode, SslMode::VerifyCa);
        assert_eq!(parsed.tls.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(parsed.config.get_user(), Some("walhook"));
        assert_eq!(parsed.config.get_dbname(), Some("app"));
    }

    #[test]
    fn quoted_password_survives_requoting() {
        let parsed = parse("host=h user=u password='a\\'b\\\\c d'");

        assert_eq!(parsed.config.get_password(), Some(&b"a'b\\c d"[..]));
    }

    #[test]
    fn default_mode_is_prefer() {
        let parsed = parse("postgres://u@h/app");

        assert_eq!(parsed.tls.mode, SslMode::Prefer);
        assert!(parsed.tls.sni, "libpq sends SNI by default");
    }

    #[test]
    fn unsupported_tls_key_is_named() {
        let err = parse_connection_string("postgres://u@h/app?sslcrl=/x.crl")
            .expect_err("sslcrl is not implemented");

        assert!(err.contains("`sslcrl`"), "names the key: {err}");
    }

    #[test]
    fn unknown_sslmode_is_named() {
        let err =
            parse_connection_string("host=h sslmode=verify").expect_err("verify is not a mode");

        assert!(err.contains("`verify`"), "names the value: {err}");
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let err =
            parse_connection_string("host=h password='abc").expect_err("the quote is not closed");

        assert!(err.contains("`password`"), "names the key: {err}");
    }
}

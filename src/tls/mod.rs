//! TLS to PostgreSQL, with `sslmode` and the certificate files as libpq reads them.
//!
//! Both the replication connection and the ordinary connections of
//! tokio-postgres use the rustls [`ClientConfig`] that [`TlsSettings::load`]
//! builds. What each mode checks (PostgreSQL's "SSL Support" documentation,
//! libpq-ssl.html):
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | when the server offers it; plain otherwise, and after a failure over TLS | chain, if a root certificate file exists |
//! | `require` | always | chain, if a root certificate file exists (libpq's behaviour) |
//! | `verify-ca` | always | chain |
//! | `verify-full` | always | chain and host name |
//!
//! The root certificate file is `sslrootcert`, or `~/.postgresql/root.crt`
//! when that exists. The client certificate is `sslcert` and `sslkey`, or
//! `~/.postgresql/postgresql.crt` and `postgresql.key` when the certificate
//! exists. Unlike libpq, an `sslrootcert`, `sslcert` or `sslkey` that names a
//! missing file is an error in every mode, because silently connecting
//! without the named check hides a typo. Host names are checked against the
//! subject alternative names only; rustls ignores the common name.

mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use verify::ServerVerifier;
pub use verify::{tls_server_end_point, CertificateRejected};

/// libpq's `sslmode`, without `allow`, which walhook rejects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, and fall back to a plain connection.
    #[default]
    Prefer,
    /// Use TLS; check the chain only when a root certificate file exists.
    Require,
    /// Use TLS and check the chain against the root certificate file.
    VerifyCa,
    /// Use TLS, check the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// Parses the value of `sslmode`.
    ///
    /// # Errors
    ///
    /// The message to show for `allow` and unknown values.
    pub fn parse(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => {
                Err("sslmode `allow` is not supported: use `prefer` or `disable`".to_owned())
            }
            other => Err(format!(
                "invalid sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }

    /// Returns the name as written in connection settings.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Returns true when a connection without TLS is not acceptable.
    pub fn is_required(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS keys of a connection string, before any file is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`; `prefer` when absent, as in libpq.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CAs that may sign the server certificate.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM file of the client certificate chain.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// `sslsni`: whether the host name is sent in the handshake (Server Name Indication).
    pub sni: bool,
}

/// A failure to read or use the certificate files of [`TlsOptions`].
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read or contains no valid PEM item.
    #[error("cannot read `{key}` file `{path}`: {reason}")]
    ReadFile {
        /// The connection string key, such as `sslrootcert`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The reason the file cannot be used.
        reason: String,
    },

    /// A verifying mode lacks a root certificate file.
    #[error(
        "sslmode `{mode}` needs a root certificate file, and `{default}` does not exist: set \
         sslrootcert to the CA file that signed the server certificate, or use sslmode=require"
    )]
    MissingRootCert {
        /// The mode.
        mode: SslMode,
        /// The default path that was looked for.
        default: String,
    },

    /// `sslkey` is group- or world-accessible.
    #[error(
        "private key file `{path}` has group or world access: run chmod 0600 on it \
         (0640 is accepted when root owns it)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
    },

    /// rustls rejected the root certificates or the client certificate and key.
    #[error("invalid `{key}`: {source}")]
    Rustls {
        /// The connection string key, such as `sslkey`.
        key: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// The loaded TLS configuration of one connection string.
#[derive(Clone)]
pub struct TlsSettings {
    mode: SslMode,
    /// `None` for `disable`.
    client_config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client configuration may hold a private key, so only the mode is shown.
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Settings that never use TLS.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            client_config: None,
        }
    }

    /// Settings for `prefer` or `require` that check no certificate and read no file.
    pub fn unverified(mode: SslMode) -> TlsSettings {
        if mode == SslMode::Disable {
            return TlsSettings::disabled();
        }
        let provider = provider();
        let verifier = ServerVerifier::accept_any(Arc::clone(&provider));
        let config = builder(&provider)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        TlsSettings {
            mode,
            client_config: Some(Arc::new(config)),
        }
    }

    /// Reads the certificate files and builds the rustls configuration.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError`] for a named file that is missing or invalid, a
    /// verifying mode without root certificates, or a private key with group
    /// or world access.
    pub fn load(options: &TlsOptions) -> Result<TlsSettings, TlsSetupError> {
        if options.mode == SslMode::Disable {
            return Ok(TlsSettings::disabled());
        }
        let provider = provider();
        let verifier = match root_cert_path(options)? {
            Some(path) => {
                let roots = read_roots(&path)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|err| TlsSetupError::ReadFile {
                            key: "sslrootcert",
                            path: path.clone(),
                            reason: err.to_string(),
                        })?;
                let check_host = options.mode == SslMode::VerifyFull;
                ServerVerifier::with_roots(webpki, path, check_host, provider.clone())
            }
            None => ServerVerifier::accept_any(provider.clone()),
        };

        let builder = builder(&provider)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match client_cert_paths(options)? {
            Some((cert, key)) => {
                let chain = read_certs("sslcert", &cert)?;
                let key = read_key(&key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsSetupError::Rustls {
                        key: "sslkey",
                        source,
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = options.sni;
        Ok(TlsSettings {
            mode: options.mode,
            client_config: Some(Arc::new(config)),
        })
    }

    /// Returns the `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Returns the rustls configuration, `None` for `disable`.
    pub fn client_config(&self) -> Option<&Arc<ClientConfig>> {
        self.client_config.as_ref()
    }
}

/// Describes a failed TLS handshake for the operator: the verifier's own
/// words for a rejected certificate, rustls' otherwise.
pub fn describe_handshake_error(error: &std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::Other(other)) => match other.0.downcast_ref::<CertificateRejected>() {
            Some(rejected) => rejected.to_string(),
            None => other.0.to_string(),
        },
        Some(other) => other.to_string(),
        None => error.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder(
    provider: &Arc<CryptoProvider>,
) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
}

/// Returns `~/.postgresql/<file>`, with `~` from `HOME` or the password database.
fn default_path(file: &str) -> Option<PathBuf> {
    let home = match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()?
                .dir
        }
    };
    Some(home.join(".postgresql").join(file))
}

fn root_cert_path(options: &TlsOptions) -> Result<Option<PathBuf>, TlsSetupError> {
    if let Some(path) = &options.root_cert {
        return Ok(Some(path.clone()));
    }
    let default = default_path("root.crt");
    if let Some(path) = default.as_ref().filter(|path| path.is_file()) {
        return Ok(Some(path.clone()));
    }
    if matches!(options.mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err(TlsSetupError::MissingRootCert {
            mode: options.mode,
            default: default.map_or_else(
                || "~/.postgresql/root.crt".to_owned(),
                |path| path.display().to_string(),
            ),
        });
    }
    Ok(None)
}

/// Returns the client certificate and key files: the configured ones, or the
/// defaults when the default certificate exists.
fn client_cert_paths(options: &TlsOptions) -> Result<Option<(PathBuf, PathBuf)>, TlsSetupError> {
    let cert = match &options.client_cert {
        Some(path) => path.clone(),
        None => match default_path("postgresql.crt").filter(|path| path.is_file()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let key = match &options.client_key {
        Some(path) => path.clone(),
        None => default_path("postgresql.key").unwrap_or_else(|| cert.with_extension("key")),
    };
    Ok(Some((cert, key)))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("sslrootcert", path)? {
        roots.add(cert).map_err(|source| TlsSetupError::Rustls {
            key: "sslrootcert",
            source,
        })?;
    }
    Ok(roots)
}

fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let read_error = |reason: String| TlsSetupError::ReadFile {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| read_error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| read_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(read_error("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    check_key_permissions(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|err| TlsSetupError::ReadFile {
        key: "sslkey",
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

/// Rejects a key file that others can read, as libpq does: at most 0600, or
/// 0640 when root owns the file.
fn check_key_permissions(path: &Path) -> Result<(), TlsSetupError> {
    use std::os::unix::fs::MetadataExt;

    let metadata = std::fs::metadata(path).map_err(|err| TlsSetupError::ReadFile {
        key: "sslkey",
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let mode = metadata.mode();
    let allowed = if metadata.uid() == 0 { 0o037 } else { 0o077 };
    if mode & allowed != 0 {
        return Err(TlsSetupError::KeyPermissions {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_round_trip() {
        for name in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let mode = SslMode::parse(name).expect("a libpq mode");
            assert_eq!(mode.as_str(), name);
        }
    }

    #[test]
    fn sslmode_allow_is_rejected_with_fix() {
        let err = SslMode::parse("allow").expect_err("allow is not supported");

        assert!(err.contains("use `prefer`"), "names the fix: {err}");
    }

    #[test]
    fn verify_ca_without_root_cert_names_default() {
        let options = TlsOptions {
            mode: SslMode::VerifyCa,
            root_cert: None,
            ..TlsOptions::default()
        };
        // The test machine may have a ~/.postgresql/root.crt, which satisfies the mode.
        if default_path("root.crt").is_some_and(|path| path.is_file()) {
            return;
        }

        let err = TlsSettings::load(&options).expect_err("no root certificate");

        assert!(
            err.to_string().contains("root.crt"),
            "names the default file: {err}"
        );
    }

    #[test]
    fn missing_root_cert_file_is_an_error() {
        let options = TlsOptions {
            mode: SslMode::Require,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsOptions::default()
        };

        let err = TlsSettings::load(&options).expect_err("the named file is missing");

        assert!(
            err.to_string().contains("`/nonexistent/ca.pem`"),
            "names the file: {err}"
        );
    }

    #[test]
    fn group_readable_key_is_rejected() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().expect("temporary directory");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "not a key").expect("write key file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod key file");

        let result = check_key_permissions(&key);

        // Root-owned files may be 0640, but 0644 is world-readable either way.
        assert!(matches!(result, Err(TlsSetupError::KeyPermissions { .. })));
    }
}

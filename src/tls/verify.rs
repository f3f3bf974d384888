//! Server certificate verification for each `sslmode`, and the channel
//! binding data of the server certificate.
//!
//! rustls verifies the chain and the host name together. libpq's modes need
//! them apart: `verify-full` checks both, `verify-ca` (and `prefer` or
//! `require` with a root certificate file) checks only the chain, and
//! `require` without a root certificate file checks nothing. So
//! [`ServerVerifier`] runs rustls' WebPKI verifier and drops its host name
//! error when the mode does not check the name. WebPKI checks the chain first
//! and the name after it (rustls 0.23 `WebPkiServerVerifier`), so a name error
//! means the chain was valid. Handshake signatures are always verified, so the
//! peer proves that it has the private key of the certificate it sent.
//!
//! The `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS is a hash
//! of the server's DER certificate, with the hash of the certificate's
//! signature algorithm, where MD5 and SHA-1 become SHA-256 (RFC 5929, section
//! 4.1). Certificates signed without a separate hash, such as Ed25519, have no
//! binding data, so SCRAM runs without it.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// A server certificate that the verifier rejected, worded for the operator.
///
/// It reaches the caller inside `rustls::Error::Other`; [`super::describe_handshake_error`]
/// unwraps it again.
#[derive(Debug, thiserror::Error)]
pub enum CertificateRejected {
    /// The certificate's names do not include the host connected to.
    #[error(
        "certificate for {presented} does not match host `{host}`: use sslmode=verify-ca, \
         or connect by a name that the certificate lists"
    )]
    HostMismatch {
        /// The host of the connection settings.
        host: String,
        /// The certificate's subject alternative names, in backticks.
        presented: String,
    },

    /// The chain does not end at a certificate of the root certificate file.
    #[error(
        "certificate of `{host}` is not signed by a CA in sslrootcert `{root_cert}`: set \
         sslrootcert to the CA file that signed the server certificate"
    )]
    UnknownIssuer {
        /// The host of the connection settings.
        host: String,
        /// The root certificate file.
        root_cert: PathBuf,
    },

    /// Any other chain failure, such as an expired certificate.
    #[error("certificate of `{host}` is invalid: {reason}")]
    Invalid {
        /// The host of the connection settings.
        host: String,
        /// rustls' description of the failure.
        reason: String,
    },
}

/// A server certificate verifier for one `sslmode`.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    /// The chain verifier and its root certificate file; `None` accepts any certificate.
    webpki: Option<(Arc<WebPkiServerVerifier>, PathBuf)>,
    /// Whether the certificate must name the host (`verify-full`).
    check_host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    /// Creates a verifier that accepts any certificate, for `require` and `prefer`
    /// without a root certificate file.
    pub(super) fn accept_any(provider: Arc<CryptoProvider>) -> ServerVerifier {
        ServerVerifier {
            webpki: None,
            check_host: false,
            provider,
        }
    }

    /// Creates a verifier of the chain against `webpki`'s roots, and of the
    /// host name when `check_host`.
    pub(super) fn with_roots(
        webpki: Arc<WebPkiServerVerifier>,
        root_cert: PathBuf,
        check_host: bool,
        provider: Arc<CryptoProvider>,
    ) -> ServerVerifier {
        ServerVerifier {
            webpki: Some((webpki, root_cert)),
            check_host,
            provider,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((webpki, root_cert)) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        let result =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        let host = server_name.to_str().into_owned();
        match result {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(error)) => match error {
                CertificateError::NotValidForName if !self.check_host => {
                    Ok(ServerCertVerified::assertion())
                }
                CertificateError::NotValidForNameContext { .. } if !self.check_host => {
                    Ok(ServerCertVerified::assertion())
                }
                CertificateError::NotValidForNameContext { presented, .. } => {
                    Err(reject(CertificateRejected::HostMismatch {
                        host,
                        presented: list_names(&presented),
                    }))
                }
                CertificateError::NotValidForName => {
                    Err(reject(CertificateRejected::HostMismatch {
                        host,
                        presented: "another name".to_owned(),
                    }))
                }
                // BadSignature: a root of the file has the issuer's name but did not sign it.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Err(reject(CertificateRejected::UnknownIssuer {
                        host,
                        root_cert: root_cert.clone(),
                    }))
                }
                other => Err(reject(CertificateRejected::Invalid {
                    host,
                    reason: rustls::Error::InvalidCertificate(other).to_string(),
                })),
            },
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn reject(rejected: CertificateRejected) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(rejected)))
}

/// Formats rustls' presented names, such as `DnsName("localhost")`, as `` `localhost` ``.
fn list_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no name (no subjectAltName extension)".to_owned();
    }
    let names: Vec<String> = presented
        .iter()
        .map(|name| {
            let bare = name
                .split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .unwrap_or(name);
            format!("`{}`", bare.trim_matches('"'))
        })
        .collect();
    names.join(", ")
}

/// Signature algorithms whose binding hash is SHA-256: RSA with SHA-1 or
/// SHA-256, ECDSA with SHA-256.
const SHA256_ALGORITHMS: [&str; 3] = [
    "1.2.840.113549.1.1.5",
    "1.2.840.113549.1.1.11",
    "1.2.840.10045.4.3.2",
];

/// Signature algorithms whose binding hash is SHA-384: RSA and ECDSA with SHA-384.
const SHA384_ALGORITHMS: [&str; 2] = ["1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"];

/// Signature algorithms whose binding hash is SHA-512: RSA and ECDSA with SHA-512.
const SHA512_ALGORITHMS: [&str; 2] = ["1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"];

/// Returns the `tls-server-end-point` binding data of a DER certificate, or
/// `None` when it cannot be parsed or its signature algorithm has no hash.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let cert = Certificate::from_der(cert_der).ok()?;
    let algorithm: ObjectIdentifier = cert.signature_algorithm.oid;
    let name = algorithm.to_string();
    if SHA256_ALGORITHMS.contains(&name.as_str()) {
        Some(Sha256::digest(cert_der).to_vec())
    } else if SHA384_ALGORITHMS.contains(&name.as_str()) {
        Some(Sha384::digest(cert_der).to_vec())
    } else if SHA512_ALGORITHMS.contains(&name.as_str()) {
        Some(Sha512::digest(cert_der).to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_rustls_wrapping() {
        let presented = vec![
            "DnsName(\"localhost\")".to_owned(),
            "IpAddress(10.0.0.1)".to_owned(),
        ];

        assert_eq!(list_names(&presented), "`localhost`, `10.0.0.1`");
    }

    #[test]
    fn no_names_are_stated() {
        assert!(list_names(&[]).starts_with("no name"));
    }

    #[test]
    fn garbage_has_no_binding() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}

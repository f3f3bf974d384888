//! The `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS.
//!
//! The binding data is a hash of the server's DER certificate, with the hash
//! of the certificate's signature algorithm, where MD5 and SHA-1 become
//! SHA-256 (RFC 5929, section 4.1). Certificates signed without a separate
//! hash, such as Ed25519, have no binding data, so SCRAM runs without it.

use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

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
    fn garbage_has_no_binding() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}

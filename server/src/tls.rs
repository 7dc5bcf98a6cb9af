//! The TLS and WSS listeners' certificate chain and private key, read and checked at start-up:
//! a key that does not belong to the certificate, a certificate out of its validity period, a
//! file with no certificate or key stops the server before it listens, with a message naming the
//! file, instead of every client's handshake failing later.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use x509_parser::time::ASN1Time;

/// Loads `--tls-cert` (PEM, the server's certificate first) and `--tls-key` (PEM).
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor> {
    let cert_file = format!("--tls-cert {}", cert_path.display());
    let key_file = format!("--tls-key {}", key_path.display());
    let certs = CertificateDer::pem_slice_iter(&read(cert_path, &cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{cert_file}: bad PEM"))?;
    if certs.is_empty() {
        bail!("{cert_file} holds no certificate (no PEM \"BEGIN CERTIFICATE\" block)");
    }
    let now = ASN1Time::now();
    for (i, cert) in certs.iter().enumerate() {
        let which = match i {
            0 => "the certificate".to_string(),
            _ => format!("certificate {} of the chain", i + 1),
        };
        check_validity(cert, now, &format!("{cert_file}: {which}"))?;
    }
    let key = match PrivateKeyDer::from_pem_slice(&read(key_path, &key_file)?) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => bail!(
            "{key_file} holds no private key (no PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\" block)"
        ),
        Err(e) => bail!("{key_file}: bad PEM: {e}"),
    };
    // rustls compares the key's public half with the certificate's (`CertifiedKey::keys_match`);
    // with the ring provider every key it loads has a public half, so a mismatch is always found.
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => anyhow!(
                    "{key_file} is not the private key of the certificate in {cert_file} \
                     (their public keys differ)"
                ),
                e => anyhow!("{key_file} with {cert_file}: {e}"),
            })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what}"))
}

/// `which`: "--tls-cert <file>: the certificate", the start of the message.
fn check_validity(cert: &CertificateDer, now: ASN1Time, which: &str) -> Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert)
        .with_context(|| format!("{which} is not an X.509 certificate"))?;
    let validity = cert.validity();
    if now > validity.not_after {
        bail!("{which} expired on {}", rfc3339(validity.not_after));
    }
    if now < validity.not_before {
        bail!("{which} is not valid before {}", rfc3339(validity.not_before));
    }
    Ok(())
}

/// `2026-01-01T00:00:00Z`. Certificates' times are UTC (RFC 5280, 4.1.2.5).
fn rfc3339(t: ASN1Time) -> String {
    let t = t.to_datetime().to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

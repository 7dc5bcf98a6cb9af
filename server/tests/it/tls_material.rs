//! Bad TLS material stops the server at start-up, before it listens, with a message that names
//! the file and what is wrong with it. No node is needed: the checks come before the index is
//! opened.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use rcgen::{date_time_ymd, CertificateParams, KeyPair};

/// A certificate for localhost valid from `not_before` to `not_after` (years, 1 January), and its
/// key, as PEM.
fn certificate(not_before: i32, not_after: i32) -> Result<(String, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params.not_before = date_time_ymd(not_before, 1, 1);
    params.not_after = date_time_ymd(not_after, 1, 1);
    Ok((params.self_signed(&key)?.pem(), key))
}

/// Runs the server with these files as `--tls-cert` and `--tls-key`; it must exit with an error,
/// before listening. Returns what it printed.
fn start_up_error(dir: &Path, cert: &Path, key: &Path) -> Result<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blkindex-server"))
        .args(["--network", "regtest", "--datadir"])
        .arg(dir)
        .arg("--db")
        .arg(dir.join("db"))
        .args(["--electrum-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0", "--tls-cert"])
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the server did not exit with {} and {}", cert.display(), key.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err)?;
    assert!(!status.success(), "{status}: {err}");
    assert!(!err.contains("serving Electrum"), "it listened first: {err}");
    Ok(err)
}

#[test]
fn bad_tls_material_is_refused_at_start_up_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let (good, good_key) = certificate(2020, 4000)?;
    let (expired, expired_key) = certificate(2025, 2026)?;
    let (early, early_key) = certificate(2100, 2101)?;
    let cert = file("cert.pem", &good)?;
    let key = file("key.pem", &good_key.serialize_pem())?;
    let other_key = file("other-key.pem", &KeyPair::generate()?.serialize_pem())?;
    let missing = dir.path().join("missing.pem");
    let show = |p: &Path| p.display().to_string();

    let cases: Vec<(&str, PathBuf, PathBuf, String)> = vec![
        (
            "a key of another certificate",
            cert.clone(),
            other_key.clone(),
            format!(
                "--tls-key {} is not the private key of the certificate in --tls-cert {} (their public keys differ)",
                show(&other_key),
                show(&cert)
            ),
        ),
        (
            "an expired certificate",
            file("expired.pem", &expired)?,
            file("expired-key.pem", &expired_key.serialize_pem())?,
            format!(
                "--tls-cert {}: the certificate expired on 2026-01-01T00:00:00Z",
                show(&dir.path().join("expired.pem"))
            ),
        ),
        (
            "a certificate not valid yet",
            file("early.pem", &early)?,
            file("early-key.pem", &early_key.serialize_pem())?,
            format!(
                "--tls-cert {}: the certificate is not valid before 2100-01-01T00:00:00Z",
                show(&dir.path().join("early.pem"))
            ),
        ),
        (
            "an expired certificate behind the server's",
            file("chain.pem", &format!("{good}{expired}"))?,
            key.clone(),
            format!(
                "--tls-cert {}: certificate 2 of the chain expired on 2026-01-01T00:00:00Z",
                show(&dir.path().join("chain.pem"))
            ),
        ),
        (
            "a key where the certificate belongs",
            key.clone(),
            key.clone(),
            format!("--tls-cert {} holds no certificate", show(&key)),
        ),
        (
            "a certificate where the key belongs",
            cert.clone(),
            cert.clone(),
            format!("--tls-key {} holds no private key", show(&cert)),
        ),
        (
            "no certificate file",
            missing.clone(),
            key.clone(),
            format!("cannot read --tls-cert {}: No such file or directory", show(&missing)),
        ),
        (
            "no key file",
            cert.clone(),
            missing.clone(),
            format!("cannot read --tls-key {}: No such file or directory", show(&missing)),
        ),
    ];
    for (what, cert, key, want) in cases {
        let err = start_up_error(dir.path(), &cert, &key)?;
        assert!(err.contains(&want), "{what}: wanted {want:?} in:\n{err}");
    }

    // Good material passes: the server goes on and stops only at the next step, the missing node.
    let err = start_up_error(dir.path(), &cert, &key)?;
    assert!(!err.contains("--tls"), "good material refused: {err}");
    assert!(err.contains("blocks directory"), "{err}");
    Ok(())
}

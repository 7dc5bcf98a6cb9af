//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): the binary header a balancer
//! puts before a connection's first byte, naming the client it relays. Only the header's shape
//! is decoded here, from bytes; reading them (with a byte cap and a deadline) is `listen`'s.
//! Version 1 (the text form) is not accepted. Spec:
//! <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>, section 2.2.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family and protocol, length.
pub const PREFIX_LEN: usize = 16;
/// The most bytes after the prefix we take: a Unix address pair (216 bytes) and some TLVs.
/// HAProxy sends 12 (IPv4) or 36 (IPv6) plus the TLVs it is told to add.
pub const MAX_BODY: usize = 512;

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The first bytes are not the version 2 signature (no header, version 1, or garbage).
    NoSignature,
    /// A version other than 2, or a command other than LOCAL (0) and PROXY (1).
    Version(u8),
    /// More bytes announced than `MAX_BODY`.
    TooLong(usize),
    /// An address family's addresses do not fit in the announced length.
    Short { family: u8, len: usize },
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NoSignature => write!(f, "no PROXY protocol v2 header"),
            ProxyError::Version(b) => write!(f, "PROXY header: version/command byte {b:#04x}"),
            ProxyError::TooLong(n) => write!(f, "PROXY header: {n} bytes announced, at most {MAX_BODY}"),
            ProxyError::Short { family, len } => {
                write!(f, "PROXY header: family {family:#04x} does not fit in {len} bytes")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// The prefix checked: how many bytes follow it (at most `MAX_BODY`).
pub fn body_len(prefix: &[u8; PREFIX_LEN]) -> Result<usize, ProxyError> {
    if prefix[..12] != SIGNATURE {
        return Err(ProxyError::NoSignature);
    }
    if prefix[12] >> 4 != 2 || prefix[12] & 0x0f > 1 {
        return Err(ProxyError::Version(prefix[12]));
    }
    let len = u16::from_be_bytes([prefix[14], prefix[15]]) as usize;
    if len > MAX_BODY {
        return Err(ProxyError::TooLong(len));
    }
    Ok(len)
}

/// The client the header names: Some for a PROXY command over TCP or UDP on IPv4 or IPv6; None
/// for LOCAL (the balancer's own connection: a health check) and for families without an IP
/// address (UNSPEC, Unix), where the connection's own address stands. TLVs after the addresses
/// are skipped.
pub fn source(prefix: &[u8; PREFIX_LEN], body: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let (command, family) = (prefix[12] & 0x0f, prefix[13]);
    if command == 0 {
        return Ok(None);
    }
    let short = || ProxyError::Short { family, len: body.len() };
    match family >> 4 {
        1 => {
            let b: &[u8; 12] = body.get(..12).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[8], b[9]]))))
        }
        2 => {
            let b: &[u8; 36] = body.get(..36).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes"));
            Ok(Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[32], b[33]]))))
        }
        _ => Ok(None),
    }
}

/// A whole header decoded from `bytes` (the prefix, then the body): its length and client.
#[cfg(test)]
fn decode(bytes: &[u8]) -> Result<(usize, Option<SocketAddr>), ProxyError> {
    let prefix: &[u8; PREFIX_LEN] =
        bytes.get(..PREFIX_LEN).and_then(|p| p.try_into().ok()).ok_or(ProxyError::NoSignature)?;
    let len = body_len(prefix)?;
    let body =
        bytes.get(PREFIX_LEN..PREFIX_LEN + len).ok_or(ProxyError::Short { family: prefix[13], len })?;
    Ok((PREFIX_LEN + len, source(prefix, body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([ver_cmd, family]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    fn check(bytes: &[u8], expected: Result<(usize, Option<&str>), ProxyError>) {
        let expected = expected.map(|(n, a)| (n, a.map(|a| a.parse::<SocketAddr>().unwrap())));
        assert_eq!(decode(bytes), expected, "{bytes:02x?}");
    }

    #[test]
    fn addresses_of_each_family() {
        let v4 = [192, 0, 2, 7, 127, 0, 0, 1, 0xc3, 0x50, 0xc3, 0x51];
        check(&header(0x21, 0x11, &v4), Ok((28, Some("192.0.2.7:50000"))));
        // UDP over IPv4 names an address the same way.
        check(&header(0x21, 0x12, &v4), Ok((28, Some("192.0.2.7:50000"))));
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend([0; 11]);
        v6.push(9);
        v6.extend([0; 16]);
        v6.extend([0x01, 0xbb, 0xc3, 0x51]);
        check(&header(0x21, 0x21, &v6), Ok((52, Some("[2001:db8::9]:443"))));
        // TLVs after the addresses are skipped, their bytes counted.
        let with_tlv = [&v4[..], &[0x04, 0x00, 0x02, 0xaa, 0xbb]].concat();
        check(&header(0x21, 0x11, &with_tlv), Ok((33, Some("192.0.2.7:50000"))));
        // LOCAL (a balancer's health check), UNSPEC and Unix: the connection's own address.
        check(&header(0x20, 0x00, &[]), Ok((16, None)));
        check(&header(0x20, 0x11, &v4), Ok((28, None)));
        check(&header(0x21, 0x00, &[]), Ok((16, None)));
        check(&header(0x21, 0x31, &[0; 216]), Ok((232, None)));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let v4 = [192, 0, 2, 7, 127, 0, 0, 1, 0xc3, 0x50, 0xc3, 0x51];
        // No header at all: a client speaking JSON straight away, version 1's text, nothing.
        check(br#"{"id":1,"method":"server.version","params":[]}"#, Err(ProxyError::NoSignature));
        check(b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 50001\r\n", Err(ProxyError::NoSignature));
        check(b"", Err(ProxyError::NoSignature));
        let mut bad = header(0x21, 0x11, &v4);
        bad[11] = b'X';
        check(&bad, Err(ProxyError::NoSignature));
        // Versions and commands that do not exist.
        check(&header(0x11, 0x11, &v4), Err(ProxyError::Version(0x11)));
        check(&header(0x22, 0x11, &v4), Err(ProxyError::Version(0x22)));
        check(&header(0x2f, 0x11, &v4), Err(ProxyError::Version(0x2f)));
        // A length over the cap is refused from the prefix, before its bytes are read.
        let mut long = header(0x21, 0x11, &v4);
        long[14..16].copy_from_slice(&(MAX_BODY as u16 + 1).to_be_bytes());
        check(&long, Err(ProxyError::TooLong(MAX_BODY + 1)));
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        check(&long, Err(ProxyError::TooLong(65535)));
        // Addresses that do not fit in what was announced.
        check(&header(0x21, 0x11, &v4[..11]), Err(ProxyError::Short { family: 0x11, len: 11 }));
        check(&header(0x21, 0x21, &[0; 35]), Err(ProxyError::Short { family: 0x21, len: 35 }));
        check(&header(0x21, 0x21, &[]), Err(ProxyError::Short { family: 0x21, len: 0 }));
        // Every truncation of a good header is refused, never a panic.
        let good = header(0x21, 0x21, &[7; 36]);
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn any_bytes_after_a_signature_decode_or_are_refused() {
        // Every version/command and family byte, with bodies of every length up to a v6 pair.
        for ver_cmd in 0..=255u8 {
            for family in (0..=255u8).step_by(3) {
                for len in [0, 1, 11, 12, 35, 36, 40] {
                    let h = header(ver_cmd, family, &vec![0xa5; len]);
                    if let Ok((n, _)) = decode(&h) {
                        assert_eq!(n, h.len());
                    }
                }
            }
        }
    }
}

//! Banned client addresses: IPv4 and IPv6 subnets (CIDR), checked at accept, kept in a JSON file
//! (a list of strings) that is replaced atomically on every change, so a ban outlives restarts
//! and a crash never leaves half a file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result};

/// Most subnets kept: the list is scanned at every accept.
pub const MAX_BANS: usize = 10_000;

/// What a per-address limit (connections, silent-payment scans) counts a client under: its IPv4
/// address (also when it comes mapped into IPv6), or its IPv6 /64 (one host is given a whole /64).
pub fn client_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

/// An IP subnet: an address with its host bits zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Whether `ip` is in the subnet. An IPv4 client seen on an IPv6 socket (`::ffff:a.b.c.d`)
    /// is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask4(u32::from(ip), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask6(u128::from(ip), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

/// `bits` with all but the first `prefix` bits cleared (a shift by the full width is None).
fn mask4(bits: u32, prefix: u8) -> u32 {
    bits & !(u32::MAX.checked_shr(prefix as u32).unwrap_or(0))
}

fn mask6(bits: u128, prefix: u8) -> u128 {
    bits & !(u128::MAX.checked_shr(prefix as u32).unwrap_or(0))
}

/// "1.2.3.4" (one address), "1.2.3.0/24", "2001:db8::/32"; host bits are cleared
/// ("10.1.2.3/8" is 10.0.0.0/8).
impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address or subnet"))?;
        // IPv4-mapped IPv6 addresses are banned as the IPv4 address they carry.
        let (ip, max, offset) = match (ip, ip.to_canonical()) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) => (v4, 32, 96),
            (IpAddr::V4(_), v4) => (v4, 32, 0),
            (v6, _) => (v6, 128, 0),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let p: u8 = p
                    .parse()
                    .ok()
                    .filter(|p: &u8| p.checked_sub(offset).is_some_and(|p| p <= max))
                    .ok_or_else(|| {
                    format!("{s:?}: the prefix length must be {offset} to {}", max + offset)
                })?;
                p - offset
            }
        };
        let addr = match ip {
            IpAddr::V4(a) => IpAddr::V4(mask4(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask6(u128::from(a), prefix).into()),
        };
        Ok(Subnet { addr, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ban list and the file it is kept in.
pub struct Bans {
    subnets: RwLock<Vec<Subnet>>,
    path: PathBuf,
    /// Held while the file is written, so two changes never interleave their writes.
    writing: Mutex<()>,
}

impl Bans {
    /// The list kept in `path` (none yet if the file does not exist).
    pub fn load(path: &Path) -> Result<Self> {
        let subnets = match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<String> = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a JSON list of subnets", path.display()))?;
                list.iter()
                    .map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("{}: {e}", path.display())))
                    .collect::<Result<Vec<Subnet>>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Bans { subnets: RwLock::new(subnets), path: path.to_path_buf(), writing: Mutex::new(()) })
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.subnets.read().unwrap().iter().any(|s| s.contains(ip))
    }

    pub fn list(&self) -> Vec<Subnet> {
        self.subnets.read().unwrap().clone()
    }

    /// Adds `subnet` (false if it was there already) and saves the list.
    pub fn ban(&self, subnet: Subnet) -> Result<bool> {
        self.change(|list| {
            if list.contains(&subnet) {
                return Ok(false);
            }
            anyhow::ensure!(list.len() < MAX_BANS, "the ban list is full ({MAX_BANS} subnets)");
            list.push(subnet);
            Ok(true)
        })
    }

    /// Removes `subnet` (false if it was not banned) and saves the list.
    pub fn unban(&self, subnet: Subnet) -> Result<bool> {
        self.change(|list| {
            let before = list.len();
            list.retain(|s| *s != subnet);
            Ok(list.len() != before)
        })
    }

    /// Applies `f` to a copy of the list, writes the file, then makes the copy current: a ban
    /// that could not be saved is not in force either, so what runs is what a restart loads.
    fn change(&self, f: impl FnOnce(&mut Vec<Subnet>) -> Result<bool>) -> Result<bool> {
        let _writing = self.writing.lock().unwrap();
        let mut list = self.list();
        if !f(&mut list)? {
            return Ok(false);
        }
        let text = serde_json::to_string_pretty(&list.iter().map(Subnet::to_string).collect::<Vec<_>>())?;
        write_atomically(&self.path, text.as_bytes())?;
        *self.subnets.write().unwrap() = list;
        Ok(true)
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// (subnet, address, whether the address is in the subnet)
    #[test]
    fn subnets_contain_exactly_their_addresses() {
        let cases = [
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "9.255.255.255", false),
            ("192.168.1.0/24", "192.168.1.77", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("192.168.1.0/31", "192.168.1.1", true),
            ("192.168.1.0/31", "192.168.1.2", false),
            ("128.0.0.0/1", "255.1.2.3", true),
            ("128.0.0.0/1", "127.255.255.255", false),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("0.0.0.0/0", "::1", false),
            ("::1", "::1", true),
            ("::1/128", "::2", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8:0:1::/64", "2001:db8:0:1:ffff:ffff:ffff:ffff", true),
            ("2001:db8:0:1::/64", "2001:db8:0:2::", false),
            ("::/127", "::1", true),
            ("::/127", "::2", false),
            ("8000::/1", "ffff::", true),
            ("8000::/1", "7fff::", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "1.2.3.4", false),
            // An IPv4 client on a dual-stack socket.
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("127.0.0.1/32", "::ffff:127.0.0.2", false),
            // A mapped address given as the subnet is the IPv4 one.
            ("::ffff:10.0.0.0/104", "10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "11.1.2.3", false),
        ];
        for (subnet, addr, want) in cases {
            assert_eq!(net(subnet).contains(ip(addr)), want, "{subnet} ∋ {addr}");
        }
    }

    #[test]
    fn subnets_parse_to_their_canonical_form_or_are_refused() {
        for (given, canonical) in [
            ("1.2.3.4", "1.2.3.4/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("255.255.255.255/0", "0.0.0.0/0"),
            ("192.168.1.1/31", "192.168.1.0/31"),
            ("::1", "::1/128"),
            ("2001:db8::5/32", "2001:db8::/32"),
            ("2001:db8::1/127", "2001:db8::/127"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
        ] {
            assert_eq!(net(given).to_string(), canonical, "{given}");
            assert_eq!(net(canonical), net(given));
        }
        for bad in [
            "",
            "x",
            "1.2.3",
            "1.2.3.4/",
            "/8",
            "1.2.3.4/33",
            "1.2.3.4/-1",
            "1.2.3.4/ 8",
            "::/129",
            "::ffff:1.2.3.4/95",
            "1.2.3.4/8/8",
            "example.com",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_list_survives_a_reload_and_its_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banned.json");
        let bans = Bans::load(&path).unwrap();
        assert!(bans.list().is_empty());
        assert!(bans.ban(net("127.0.0.1")).unwrap());
        assert!(!bans.ban(net("127.0.0.1/32")).unwrap());
        assert!(bans.ban(net("2001:db8::/32")).unwrap());
        assert!(bans.is_banned(ip("127.0.0.1")) && bans.is_banned(ip("2001:db8::7")));
        assert!(!bans.is_banned(ip("127.0.0.2")));
        assert!(!path.with_extension("json.tmp").exists());
        let again = Bans::load(&path).unwrap();
        assert_eq!(again.list(), vec![net("127.0.0.1"), net("2001:db8::/32")]);
        assert!(again.unban(net("127.0.0.1")).unwrap());
        assert!(!again.unban(net("127.0.0.1")).unwrap());
        assert_eq!(Bans::load(&path).unwrap().list(), vec![net("2001:db8::/32")]);
        std::fs::write(&path, "[\"1.2.3.4/40\"]").unwrap();
        let e = Bans::load(&path).err().unwrap().to_string();
        assert!(e.contains("prefix length"), "{e}");
    }
}

//! Per-network constants: message start (blk-file magic), data-dir layout and default ports.

use std::fmt;
use std::str::FromStr;

use bitcoin::{BlockHash, Network};

/// The networks blkindex knows, with Bitcoin Core's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net(pub Network);

impl Net {
    pub fn magic(self) -> [u8; 4] {
        self.0.magic().to_bytes()
    }

    /// The folder under the data dir that holds this network's files ("" for mainnet).
    pub fn subdir(self) -> &'static str {
        match self.0 {
            Network::Bitcoin => "",
            Network::Testnet => "testnet3",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }

    /// The `bitcoin.conf` section that applies to this network.
    pub fn conf_section(self) -> &'static str {
        match self.0 {
            Network::Bitcoin => "main",
            Network::Testnet => "test",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }

    pub fn default_rpc_port(self) -> u16 {
        match self.0 {
            Network::Bitcoin => 8332,
            Network::Testnet => 18332,
            Network::Testnet4 => 48332,
            Network::Signet => 38332,
            Network::Regtest => 18443,
        }
    }

    pub fn genesis_hash(self) -> BlockHash {
        bitcoin::blockdata::constants::genesis_block(self.0).block_hash()
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Network::Bitcoin => "mainnet",
            Network::Testnet => "testnet3",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let n = match s {
            "mainnet" | "main" | "bitcoin" => Network::Bitcoin,
            "testnet" | "testnet3" | "test" => Network::Testnet,
            "testnet4" => Network::Testnet4,
            "signet" => Network::Signet,
            "regtest" => Network::Regtest,
            other => {
                return Err(format!(
                    "unknown network {other:?} (mainnet, testnet3, testnet4, signet, regtest)"
                ))
            }
        };
        Ok(Net(n))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["mainnet", "testnet3", "testnet4", "signet", "regtest"] {
            assert_eq!(name.parse::<Net>().unwrap().name(), name);
        }
        assert!("litecoin".parse::<Net>().is_err());
    }

    #[test]
    fn magics_differ() {
        let nets = ["mainnet", "testnet3", "testnet4", "signet", "regtest"];
        let magics: std::collections::HashSet<_> =
            nets.iter().map(|n| n.parse::<Net>().unwrap().magic()).collect();
        assert_eq!(magics.len(), nets.len());
        assert_eq!("regtest".parse::<Net>().unwrap().magic(), [0xfa, 0xbf, 0xb5, 0xda]);
    }
}

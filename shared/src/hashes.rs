//! Hashes the index is keyed by.

use std::fmt;
use std::str::FromStr;

use bitcoin::hashes::{sha256, Hash};

/// Electrum's script hash: SHA256 of the output script. Stored in SHA256's own byte order; shown
/// (hex) reversed, as the Electrum protocol does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptHash(pub [u8; 32]);

impl ScriptHash {
    pub fn of(script: &[u8]) -> Self {
        ScriptHash(sha256::Hash::hash(script).to_byte_array())
    }
}

impl fmt::Display for ScriptHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut rev = self.0;
        rev.reverse();
        f.write_str(&hex::encode(rev))
    }
}

impl fmt::Debug for ScriptHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ScriptHash({self})")
    }
}

impl FromStr for ScriptHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut b: [u8; 32] = hex::decode(s)
            .map_err(|e| format!("bad script hash hex: {e}"))?
            .try_into()
            .map_err(|_| "script hash must be 32 bytes".to_string())?;
        b.reverse();
        Ok(ScriptHash(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_address_vector() {
        // The seed's example: P2PKH of the genesis address 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa.
        let script = hex::decode("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac").unwrap();
        assert_eq!(
            ScriptHash::of(&script).to_string(),
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
        );
        let parsed: ScriptHash =
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161".parse().unwrap();
        assert_eq!(parsed, ScriptHash::of(&script));
    }
}

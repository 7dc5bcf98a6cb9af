//! The two integer encodings of Bitcoin's serialization, read from byte slices without copying.
//!
//! `compact_size` is the length prefix of the wire format; `core_varint` is Bitcoin Core's own
//! MSB-first base-128 VARINT used in undo (rev) data and the block index.

/// Why a slice could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unexpected end of data at byte {0}")]
    Eof(usize),
    #[error("non-canonical or oversized integer at byte {0}")]
    BadInt(usize),
    #[error("{what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
}

/// A cursor over a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Eof(self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.take(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32_le(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub fn u64_le(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// Bitcoin's CompactSize.
    pub fn compact_size(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let n = match self.u8()? {
            0xfd => {
                let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64;
                if v < 0xfd {
                    return Err(DecodeError::BadInt(at));
                }
                v
            }
            0xfe => {
                let v = self.u32_le()? as u64;
                if v <= 0xffff {
                    return Err(DecodeError::BadInt(at));
                }
                v
            }
            0xff => {
                let v = self.u64_le()?;
                if v <= 0xffff_ffff {
                    return Err(DecodeError::BadInt(at));
                }
                v
            }
            b => b as u64,
        };
        Ok(n)
    }

    /// A CompactSize used as a count or length, bounded so corrupt data cannot ask for huge buffers.
    pub fn length(&mut self, max: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.compact_size()?;
        if n > max as u64 {
            return Err(DecodeError::Invalid { what: "length too large", at });
        }
        Ok(n as usize)
    }

    /// Bitcoin Core's VARINT (serialize.h): base-128, most significant group first, each
    /// continuation adding one so that every number has exactly one encoding.
    pub fn core_varint(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut n: u64 = 0;
        loop {
            let b = self.u8()?;
            if n > (u64::MAX >> 7) {
                return Err(DecodeError::BadInt(at));
            }
            n = (n << 7) | (b & 0x7f) as u64;
            if b & 0x80 != 0 {
                n = n.checked_add(1).ok_or(DecodeError::BadInt(at))?;
            } else {
                return Ok(n);
            }
        }
    }
}

/// Length of the CompactSize encoding of `n`.
pub fn compact_size_len(n: u64) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends `n` as an unsigned LEB128 (used for the index's own compact values).
pub fn put_leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads an unsigned LEB128 written by [`put_leb128`].
pub fn get_leb128(r: &mut Reader) -> Result<u64, DecodeError> {
    let at = r.pos();
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = r.u8()?;
        n |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(DecodeError::BadInt(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_varint_encode(mut n: u64) -> Vec<u8> {
        // serialize.h WriteVarInt, for the round-trip test.
        let mut tmp = Vec::new();
        loop {
            tmp.push((n & 0x7f) as u8 | if tmp.is_empty() { 0 } else { 0x80 });
            if n <= 0x7f {
                break;
            }
            n = (n >> 7) - 1;
        }
        tmp.reverse();
        tmp
    }

    #[test]
    fn core_varint_known_vectors() {
        // Vectors from Bitcoin Core's serialize_tests (varint encodings).
        for (n, hex_enc) in [(0u64, "00"), (0x7f, "7f"), (0x80, "8000"), (0x1234, "a334"), (0xffff, "82fe7f")]
        {
            assert_eq!(hex::encode(core_varint_encode(n)), hex_enc);
            let bytes = hex::decode(hex_enc).unwrap();
            assert_eq!(Reader::new(&bytes).core_varint().unwrap(), n);
        }
        for n in [1u64, 127, 128, 255, 16511, 16512, 1 << 32, u32::MAX as u64 * 3] {
            assert_eq!(Reader::new(&core_varint_encode(n)).core_varint().unwrap(), n);
        }
    }

    #[test]
    fn core_varint_rejects_overflow_and_eof() {
        assert!(Reader::new(&[0xff; 12]).core_varint().is_err());
        assert!(Reader::new(&[0x80]).core_varint().is_err());
    }

    #[test]
    fn compact_size_canonical() {
        assert_eq!(Reader::new(&[0xfc]).compact_size().unwrap(), 0xfc);
        assert_eq!(Reader::new(&[0xfd, 0xfd, 0x00]).compact_size().unwrap(), 0xfd);
        assert!(Reader::new(&[0xfd, 0x10, 0x00]).compact_size().is_err());
        assert!(Reader::new(&[0xfe, 0, 0, 0]).compact_size().is_err());
        for n in [0u64, 0xfc, 0xfd, 0xffff, 0x10000, 0xffff_ffff, 0x1_0000_0000] {
            let mut v = Vec::new();
            bitcoin::consensus::Encodable::consensus_encode(&bitcoin::VarInt(n), &mut v).unwrap();
            assert_eq!(v.len(), compact_size_len(n));
            assert_eq!(Reader::new(&v).compact_size().unwrap(), n);
        }
    }

    #[test]
    fn leb128_round_trip() {
        for n in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX] {
            let mut v = Vec::new();
            put_leb128(&mut v, n);
            assert_eq!(get_leb128(&mut Reader::new(&v)).unwrap(), n);
        }
    }
}

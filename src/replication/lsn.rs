//! Log sequence numbers: byte positions in the write-ahead log.
//!
//! PostgreSQL prints an LSN as two hexadecimal halves separated by a slash
//! (`16/B374D848`), and the replication protocol sends it as a big-endian
//! 64-bit integer.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// The invalid position `0/0`, which START_REPLICATION reads as "from the slot's
    /// confirmed position".
    pub const ZERO: Lsn = Lsn(0);

    pub const fn from_u64(value: u64) -> Self {
        Lsn(value)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Returns the number of bytes from `earlier` to `self`, or 0 when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error for text that is not an LSN of the form `16/B374D848`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid LSN `{0}`: expected two hexadecimal numbers separated by `/`, such as `16/B374D848`"
)]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| invalid())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trip() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid LSN");
        assert_eq!(lsn.as_u64(), 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
    }

    #[test]
    fn lsn_rejects_garbage() {
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsn_bytes_since_saturates() {
        let early = Lsn::from_u64(10);
        let late = Lsn::from_u64(25);
        assert_eq!(late.bytes_since(early), 15);
        assert_eq!(early.bytes_since(late), 0);
    }
}

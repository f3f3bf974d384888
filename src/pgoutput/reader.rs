//! A cursor over one pgoutput message that reads the protocol's big-endian integers,
//! NUL-terminated strings and length-prefixed byte strings.
//!
//! Each read names the field it reads, so that a short or malformed message produces
//! an error that names the field that was cut off.

use bytes::Bytes;

use super::DecodeError;
use crate::replication::Lsn;

/// A read position in the bytes of one message.
pub(crate) struct Reader<'a> {
    data: &'a Bytes,
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a Bytes) -> Self {
        Reader { data, offset: 0 }
    }

    /// Takes the next `len` bytes as a slice of the input, without copying.
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let remaining = self.data.len() - self.offset;
        if len > remaining {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset,
                needed: len,
                remaining,
            });
        }
        let start = self.offset;
        self.offset += len;
        Ok(self.data.slice(start..self.offset))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.array::<1>(field)?;
        Ok(byte)
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    pub(crate) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(u64::from_be_bytes).map(Lsn::from_u64)
    }

    /// Reads an Int16 count or an Int32 length, which the protocol never sends negative.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        width: Width,
    ) -> Result<usize, DecodeError> {
        let value = match width {
            Width::Int16 => i32::from(self.i16(field)?),
            Width::Int32 => self.i32(field)?,
        };
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength { field, value })
    }

    /// Reads a NUL-terminated UTF-8 string and moves past its terminator.
    pub(crate) fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.offset..];
        let Some(len) = rest.iter().position(|&byte| byte == 0) else {
            return Err(DecodeError::MissingNul {
                field,
                offset: self.offset,
            });
        };
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|source| DecodeError::InvalidUtf8 { field, source })?
            .to_owned();
        self.offset += len + 1;
        Ok(text)
    }

    /// Checks that the whole message was read.
    pub(crate) fn finish(self, tag: u8) -> Result<(), DecodeError> {
        let count = self.data.len() - self.offset;
        if count > 0 {
            return Err(DecodeError::TrailingBytes {
                tag: char::from(tag),
                count,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let remaining = self.data.len() - self.offset;
        let Some(bytes) = self.data.get(self.offset..self.offset + N) else {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset,
                needed: N,
                remaining,
            });
        };
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        self.offset += N;
        Ok(array)
    }
}

/// The wire width of a count or length field.
#[derive(Clone, Copy)]
pub(crate) enum Width {
    Int16,
    Int32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_big_endian_integers() {
        let data = Bytes::from_static(&[
            0x7f, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xfd, 0, 0, 0, 0, 0, 0, 0x01, 0x02,
        ]);
        let mut reader = Reader::new(&data);

        assert_eq!(reader.u8("a").expect("one byte"), 0x7f);
        assert_eq!(reader.i16("b").expect("two bytes"), -2);
        assert_eq!(reader.i32("c").expect("four bytes"), -3);
        assert_eq!(reader.i64("d").expect("eight bytes"), 0x0102);
        assert!(reader.finish(b'X').is_ok(), "every byte was read");
    }

    #[test]
    fn reader_slices_bytes_without_copying() {
        let data = Bytes::from_static(b"abcdef");
        let mut reader = Reader::new(&data);

        reader.bytes(2, "head").expect("two bytes");
        let tail = reader.bytes(4, "tail").expect("four bytes");

        assert_eq!(&tail[..], b"cdef");
        assert_eq!(
            tail.as_ptr(),
            data[2..].as_ptr(),
            "the slice shares the input buffer"
        );
    }

    #[test]
    fn reader_reports_truncated_field() {
        let data = Bytes::from_static(&[1, 2, 3]);
        let mut reader = Reader::new(&data);
        reader.u8("flags").expect("one byte");

        let error = reader.i32("xid").expect_err("only two bytes remain");

        assert_eq!(
            error,
            DecodeError::Truncated {
                field: "xid",
                offset: 1,
                needed: 4,
                remaining: 2
            }
        );
    }

    #[test]
    fn reader_reads_cstring() {
        let data = Bytes::from_static(b"public\0jobs\0");
        let mut reader = Reader::new(&data);

        assert_eq!(reader.cstring("namespace").expect("string"), "public");
        assert_eq!(reader.cstring("name").expect("string"), "jobs");
        assert!(reader.finish(b'R').is_ok(), "both terminators were read");
    }

    #[test]
    fn reader_rejects_cstring_without_nul() {
        let data = Bytes::from_static(b"public");
        let mut reader = Reader::new(&data);

        let error = reader.cstring("namespace").expect_err("no terminator");

        assert_eq!(
            error,
            DecodeError::MissingNul {
                field: "namespace",
                offset: 0
            }
        );
    }

    #[test]
    fn reader_rejects_invalid_utf8() {
        let data = Bytes::from_static(b"j\xffobs\0");
        let mut reader = Reader::new(&data);

        let error = reader.cstring("name").expect_err("invalid UTF-8");

        assert!(
            matches!(error, DecodeError::InvalidUtf8 { field: "name", .. }),
            "unexpected error: {error:?}"
        );
    }

    #[test]
    fn reader_rejects_negative_length() {
        let data = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        let mut reader = Reader::new(&data);

        let error = reader.count("length", Width::Int32).expect_err("negative");

        assert_eq!(
            error,
            DecodeError::NegativeLength {
                field: "length",
                value: -1
            }
        );
    }

    #[test]
    fn reader_reports_trailing_bytes() {
        let data = Bytes::from_static(&[1, 2, 3]);
        let mut reader = Reader::new(&data);
        reader.u8("flags").expect("one byte");

        let error = reader.finish(b'C').expect_err("two bytes unread");

        assert_eq!(error, DecodeError::TrailingBytes { tag: 'C', count: 2 });
    }
}

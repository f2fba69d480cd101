//! The on-disk envelope of every metadata record: versioned, typed and checksummed, so a
//! truncated, corrupted or foreign file is reported as corrupted instead of being decoded
//! into a wrong value.
//!
//! Layout (little endian):
//! `magic "SPCM" | format version u16 | record kind u8 | reserved u8 | payload length u64 |
//! CRC-32 of the payload u32 | payload (postcard)`.

use serde::Serialize;
use serde::de::DeserializeOwned;

const MAGIC: &[u8; 4] = b"SPCM";
/// Bumped whenever the payload encoding changes incompatibly.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 4 + 2 + 1 + 1 + 8 + 4;

/// What a record holds; written into the header so one kind is never read as another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum RecordKind {
    Job = 1,
    IdCounter = 2,
    Checkpoint = 3,
    Savepoint = 4,
    Operation = 5,
    SavepointIndex = 6,
    /// One entry of a job's operation log (filesystem store).
    OperationLog = 7,
    /// One entry of a job's savepoint index log (filesystem store).
    SavepointIndexLog = 8,
}

impl RecordKind {
    fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Job,
            2 => RecordKind::IdCounter,
            3 => RecordKind::Checkpoint,
            4 => RecordKind::Savepoint,
            5 => RecordKind::Operation,
            6 => RecordKind::SavepointIndex,
            7 => RecordKind::OperationLog,
            8 => RecordKind::SavepointIndexLog,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded; the caller adds the path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("file is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("bad magic number (not a savepoint-coordinator metadata file)")]
    BadMagic,
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("record kind {found} where {expected:?} was expected")]
    WrongKind { found: u8, expected: RecordKind },
    #[error("payload is {actual} bytes but the header says {declared} (truncated?)")]
    LengthMismatch { declared: u64, actual: usize },
    #[error("checksum mismatch: header {expected:#010x}, payload {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// Why a value could not be encoded; nothing is written then.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the value does not encode: {0}")]
pub struct EncodeError(String);

/// Encodes `value` as a record of `kind`.
pub fn encode<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>, EncodeError> {
    let payload = postcard::to_stdvec(value).map_err(|e| EncodeError(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The length (header included) of the record that starts `bytes`, as its header
/// declares it, so that records can follow one another in a log. None when `bytes` is
/// shorter than a header or does not start with one.
pub fn record_len(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..HEADER_LEN)?;
    if &header[0..4] != MAGIC {
        return None;
    }
    let declared = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    declared.checked_add(HEADER_LEN as u64)
}

/// Where the next record could start in `bytes`: the offset of the next magic number.
pub fn find_record_start(bytes: &[u8]) -> Option<usize> {
    bytes.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// Decodes a record that must be of `kind`, checking every header field and the checksum.
pub fn decode<T: DeserializeOwned>(kind: RecordKind, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if RecordKind::from_u8(header[6]) != Some(kind) {
        return Err(DecodeError::WrongKind {
            found: header[6],
            expected: kind,
        });
    }
    let declared = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if declared != payload.len() as u64 {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    let expected = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(payload);
    if expected != actual {
        return Err(DecodeError::Checksum { expected, actual });
    }
    postcard::from_bytes(payload).map_err(|e| DecodeError::Payload(e.to_string()))
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_value() {
        let bytes = encode(RecordKind::IdCounter, &(7u64, "job".to_string())).unwrap();
        let back: (u64, String) = decode(RecordKind::IdCounter, &bytes).unwrap();
        assert_eq!(back, (7, "job".to_string()));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(RecordKind::Job, &vec![1u32, 2, 3, 400_000]).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupted = bytes.clone();
                corrupted[i] ^= 1 << bit;
                // The reserved byte carries no meaning; everything else must be checked.
                if i == 7 {
                    continue;
                }
                assert!(
                    decode::<Vec<u32>>(RecordKind::Job, &corrupted).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(RecordKind::Savepoint, &"some metadata".to_string()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode::<String>(RecordKind::Savepoint, &bytes[..len]).is_err());
        }
    }

    #[test]
    fn a_record_of_another_kind_is_refused() {
        let bytes = encode(RecordKind::Checkpoint, &1u64).unwrap();
        assert_eq!(
            decode::<u64>(RecordKind::Savepoint, &bytes),
            Err(DecodeError::WrongKind {
                found: RecordKind::Checkpoint as u8,
                expected: RecordKind::Savepoint
            })
        );
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut bytes = encode(RecordKind::Job, &1u64).unwrap();
        bytes[4] = 9;
        assert_eq!(
            decode::<u64>(RecordKind::Job, &bytes),
            Err(DecodeError::UnsupportedVersion(9))
        );
    }

    /// A value whose serialization fails, like one the format cannot represent.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no representation"))
        }
    }

    #[test]
    fn a_value_that_does_not_serialize_is_an_error_not_a_panic() {
        let error = encode(RecordKind::Savepoint, &Unencodable).unwrap_err();
        assert!(error.to_string().contains("does not encode"), "{error}");
    }
}

//! Fuzzes the metadata envelope decoder with arbitrary files, and the payload decoder
//! behind a well-formed envelope (magic, version, kind, length and checksum all right, as
//! a buggy or hostile writer could produce). Decoding must never panic, and whatever
//! decodes must survive encode -> decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use savepoint_coordinator::coordinator::model::{CompletedSnapshot, SavepointOperation};
use savepoint_coordinator::store::codec::{self, FORMAT_VERSION, RecordKind};
use savepoint_coordinator::store::{JobRecord, SavepointRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

const KINDS: [RecordKind; 6] = [
    RecordKind::Job,
    RecordKind::IdCounter,
    RecordKind::Checkpoint,
    RecordKind::Savepoint,
    RecordKind::Operation,
    RecordKind::SavepointIndex,
];

/// `payload` in an envelope with every header field right (layout: see `store::codec`).
fn envelope(kind: RecordKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(b"SPCM");
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes `bytes` as a `T` record of `kind`; a value that decodes must round-trip.
fn check<T>(kind: RecordKind, bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = codec::decode::<T>(kind, bytes) {
        let again = codec::decode::<T>(
            kind,
            &codec::encode(kind, &value).expect("a decoded value encodes again"),
        );
        assert_eq!(again.as_ref(), Ok(&value), "a decoded value does not round-trip");
    }
}

fn decode_as_everything(bytes: &[u8]) {
    check::<JobRecord>(RecordKind::Job, bytes);
    check::<u64>(RecordKind::IdCounter, bytes);
    check::<CompletedSnapshot>(RecordKind::Checkpoint, bytes);
    check::<CompletedSnapshot>(RecordKind::Savepoint, bytes);
    check::<SavepointOperation>(RecordKind::Operation, bytes);
    // The savepoint index entry of the filesystem store: (record, retired).
    check::<(SavepointRecord, bool)>(RecordKind::SavepointIndex, bytes);
}

fuzz_target!(|data: &[u8]| {
    decode_as_everything(data);
    // The first byte picks the kind of the envelope, the rest is the payload.
    if let Some((first, payload)) = data.split_first() {
        let kind = KINDS[usize::from(*first) % KINDS.len()];
        decode_as_everything(&envelope(kind, payload));
    }
});

//! Property tests of the metadata envelope: every record type round-trips; arbitrary bytes
//! and arbitrary mutations of a valid record never panic the decoder and never decode
//! into a value other than the one encoded (corruption is detected, not believed).

use super::*;
use crate::coordinator::model::{
    CheckpointId, CheckpointPolicy, CompletedSnapshot, FailureReason, JobId, JobSpec, JobStatus,
    KeyGroupRange, OperationOutcome, SavepointOperation, SavepointPolicy, SavepointTrigger,
    SnapshotFailure, SnapshotKind, StateData, StateHandle, SubtaskState, VertexSpec, VertexState,
};
use crate::store::{JobRecord, SavepointRecord};
use proptest::prelude::*;
use std::fmt::Debug;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._/-]{0,16}",
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), 0..1_000u64, any::<u64>()]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        number().prop_map(Duration::from_millis),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn job_id() -> impl Strategy<Value = JobId> {
    text().prop_map(|id| JobId::new(&id))
}

fn state_handle() -> impl Strategy<Value = StateHandle> {
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| StateData::Inline(b.into())),
        (text(), number()).prop_map(|(uri, size_bytes)| StateData::Reference { uri, size_bytes }),
    ];
    let key_groups = prop::option::of(
        (any::<u32>(), any::<u32>()).prop_map(|(start, end)| KeyGroupRange { start, end }),
    );
    (text(), data, key_groups).prop_map(|(name, data, key_groups)| StateHandle {
        name,
        data,
        key_groups,
    })
}

fn vertex_state() -> impl Strategy<Value = VertexState> {
    let subtask = (any::<u32>(), prop::collection::vec(state_handle(), 0..3)).prop_map(
        |(subtask_index, handles)| SubtaskState {
            subtask_index,
            handles,
        },
    );
    (
        text(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(subtask, 0..3),
    )
        .prop_map(
            |(vertex_id, parallelism, max_parallelism, subtasks)| VertexState {
                vertex_id,
                parallelism,
                max_parallelism,
                subtasks,
            },
        )
}

fn completed_snapshot() -> BoxedStrategy<CompletedSnapshot> {
    (
        job_id(),
        number(),
        prop_oneof![
            Just(SnapshotKind::Checkpoint),
            Just(SnapshotKind::Savepoint)
        ],
        (number(), number()),
        prop::collection::vec(vertex_state(), 0..3),
        prop::option::of(text()),
    )
        .prop_map(
            |(job_id, id, kind, (trigger, completion), vertices, claimed_path)| CompletedSnapshot {
                job_id,
                checkpoint_id: CheckpointId(id),
                kind,
                trigger_timestamp_ms: trigger,
                completion_timestamp_ms: completion,
                vertices,
                claimed_path,
            },
        )
        .boxed()
}

fn job_status() -> impl Strategy<Value = JobStatus> {
    prop::sample::select(vec![
        JobStatus::Created,
        JobStatus::Running,
        JobStatus::Failing,
        JobStatus::Failed,
        JobStatus::Cancelling,
        JobStatus::Canceled,
        JobStatus::Finished,
        JobStatus::Suspended,
        JobStatus::Restarting,
    ])
}

fn job_record() -> BoxedStrategy<JobRecord> {
    let vertex =
        (text(), any::<u32>(), any::<u32>()).prop_map(|(id, parallelism, max)| VertexSpec {
            id,
            parallelism,
            max_parallelism: max,
        });
    let names = || prop::collection::vec(text(), 0..3);
    let policy = (
        prop::option::of(duration()),
        duration(),
        duration(),
        (any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(interval, timeout, min_pause, (max_concurrent, retained, tolerable_failures))| {
                CheckpointPolicy {
                    interval,
                    timeout,
                    min_pause,
                    max_concurrent,
                    retained,
                    tolerable_failures,
                }
            },
        );
    let savepoint_policy = (
        prop::option::of(duration()),
        prop::option::of(text()),
        any::<u32>(),
        prop::option::of(duration()),
    )
        .prop_map(|(interval, cron, max_retained, max_age)| SavepointPolicy {
            interval,
            cron,
            max_retained,
            max_age,
        });
    (
        job_id(),
        prop::collection::vec(vertex, 0..3),
        (names(), names(), names()),
        policy,
        prop::option::of(text()),
        savepoint_policy,
        (job_status(), any::<u64>()),
    )
        .prop_map(
            |(
                job_id,
                vertices,
                (trigger, wait_for, commit),
                policy,
                savepoint_dir,
                savepoint_policy,
                (status, fencing_token),
            )| JobRecord {
                spec: JobSpec {
                    job_id,
                    vertices,
                    trigger_vertices: trigger,
                    wait_for_vertices: wait_for,
                    commit_vertices: commit,
                    policy,
                    savepoint_dir,
                    savepoint_policy,
                },
                status,
                fencing_token,
            },
        )
        .boxed()
}

fn savepoint_trigger() -> impl Strategy<Value = SavepointTrigger> {
    prop::sample::select(vec![
        SavepointTrigger::Manual,
        SavepointTrigger::Periodic,
        SavepointTrigger::Stop,
    ])
}

fn operation() -> BoxedStrategy<SavepointOperation> {
    let reason = prop::sample::select(vec![
        FailureReason::Declined,
        FailureReason::Expired,
        FailureReason::StoreIo,
        FailureReason::TaskFailure,
        FailureReason::CoordinatorShutDown,
    ]);
    let outcome = prop_oneof![
        Just(OperationOutcome::Pending),
        (number(), number()).prop_map(|(completion_timestamp_ms, state_size_bytes)| {
            OperationOutcome::Completed {
                completion_timestamp_ms,
                state_size_bytes,
            }
        }),
        (number(), reason, text()).prop_map(|(completion_timestamp_ms, reason, message)| {
            OperationOutcome::Failed {
                completion_timestamp_ms,
                failure: SnapshotFailure::new(reason, message),
            }
        }),
    ];
    (
        (text(), job_id(), number()),
        savepoint_trigger(),
        any::<bool>(),
        text(),
        number(),
        outcome,
    )
        .prop_map(
            |((operation_id, job_id, id), trigger, drain, path, trigger_ms, outcome)| {
                SavepointOperation {
                    operation_id,
                    job_id,
                    checkpoint_id: CheckpointId(id),
                    trigger,
                    drain,
                    path,
                    trigger_timestamp_ms: trigger_ms,
                    outcome,
                }
            },
        )
        .boxed()
}

/// A savepoint index entry as the filesystem store writes it (record, retired flag).
fn index_entry() -> BoxedStrategy<(SavepointRecord, bool)> {
    (
        (job_id(), number(), text()),
        (number(), number(), number()),
        savepoint_trigger(),
        any::<bool>(),
    )
        .prop_map(
            |((job_id, id, path), (trigger_ms, completion_ms, size), trigger, retired)| {
                let record = SavepointRecord {
                    job_id,
                    checkpoint_id: CheckpointId(id),
                    path,
                    trigger_timestamp_ms: trigger_ms,
                    completion_timestamp_ms: completion_ms,
                    state_size_bytes: size,
                    trigger,
                };
                (record, retired)
            },
        )
        .boxed()
}

/// One way of damaging a file.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    /// Overwrites a range with zeros (a torn write).
    Zero(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    let bytes = || prop::collection::vec(any::<u8>(), 1..8);
    prop_oneof![
        3 => (index(), 0..8u8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        2 => (index(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => index().prop_map(Mutation::Truncate),
        1 => bytes().prop_map(Mutation::Append),
        1 => (index(), bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (index(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (index(), 1..16usize).prop_map(|(i, n)| Mutation::Zero(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) => bytes[i.index(len)] = *b,
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::Insert(i, extra) => {
            let at = i.index(len);
            bytes.splice(at..at, extra.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Zero(i, n) => {
            let at = i.index(len);
            bytes[at..(at + n).min(len)].fill(0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// decode(encode(x)) == x, and every damaged copy either fails to decode or still
/// decodes to exactly x.
fn survives_round_trip_and_damage<T>(
    kind: RecordKind,
    value: &T,
    mutations: &[Mutation],
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(kind, value).expect("generated values encode");
    prop_assert_eq!(
        &decode::<T>(kind, &bytes).expect("own encoding decodes"),
        value
    );
    let mut damaged = bytes.clone();
    for mutation in mutations {
        apply(&mut damaged, mutation);
        if let Ok(decoded) = decode::<T>(kind, &damaged) {
            prop_assert_eq!(
                &decoded,
                value,
                "damaged record decoded to another value (mutations {:?})",
                mutations
            );
        }
    }
    Ok(())
}

/// Wraps `payload` in a well-formed envelope with a correct checksum, as a file written
/// by a buggy or hostile writer would be: only the payload decoder stands in the way.
fn envelope(kind: RecordKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes `bytes` as every record type; only the absence of a panic is checked.
fn decode_as_everything(bytes: &[u8]) {
    let _ = decode::<CompletedSnapshot>(RecordKind::Checkpoint, bytes);
    let _ = decode::<CompletedSnapshot>(RecordKind::Savepoint, bytes);
    let _ = decode::<JobRecord>(RecordKind::Job, bytes);
    let _ = decode::<SavepointOperation>(RecordKind::Operation, bytes);
    let _ = decode::<(SavepointRecord, bool)>(RecordKind::SavepointIndex, bytes);
    let _ = decode::<u64>(RecordKind::IdCounter, bytes);
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn snapshots_round_trip_and_damage_is_detected(
        snapshot in completed_snapshot(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let kind = crate::store::snapshot_record_kind(snapshot.kind);
        survives_round_trip_and_damage(kind, &snapshot, &mutations)?;
    }

    #[test]
    fn job_records_round_trip_and_damage_is_detected(
        record in job_record(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        survives_round_trip_and_damage(RecordKind::Job, &record, &mutations)?;
    }

    #[test]
    fn operations_round_trip_and_damage_is_detected(
        operation in operation(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        survives_round_trip_and_damage(RecordKind::Operation, &operation, &mutations)?;
    }

    #[test]
    fn index_entries_and_counters_round_trip_and_damage_is_detected(
        entry in index_entry(),
        counter in number(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        survives_round_trip_and_damage(RecordKind::SavepointIndex, &entry, &mutations)?;
        survives_round_trip_and_damage(RecordKind::IdCounter, &counter, &mutations)?;
    }

    #[test]
    fn a_record_is_never_read_as_another_kind(snapshot in completed_snapshot()) {
        let bytes = encode(RecordKind::Checkpoint, &snapshot).unwrap();
        let as_savepoint = decode::<CompletedSnapshot>(RecordKind::Savepoint, &bytes);
        prop_assert!(
            matches!(as_savepoint, Err(DecodeError::WrongKind { .. })),
            "{:?}",
            as_savepoint
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        decode_as_everything(&bytes);
    }

    #[test]
    fn arbitrary_payloads_in_a_valid_envelope_never_panic_the_decoder(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        snapshot in completed_snapshot(),
        damage in prop::collection::vec(mutation(), 0..3),
    ) {
        for kind in [
            RecordKind::Checkpoint,
            RecordKind::Savepoint,
            RecordKind::Job,
            RecordKind::Operation,
            RecordKind::SavepointIndex,
            RecordKind::IdCounter,
        ] {
            decode_as_everything(&envelope(kind, &payload));
        }
        // A real payload, damaged, re-checksummed: the payload decoder sees structure
        // that is almost right (lengths pointing past the end, bad enum tags...).
        let mut almost = postcard::to_stdvec(&snapshot).expect("serializes");
        for mutation in &damage {
            apply(&mut almost, mutation);
        }
        decode_as_everything(&envelope(RecordKind::Checkpoint, &almost));
    }
}

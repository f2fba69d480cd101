//! Property tests of request decoding: arbitrary wire requests (unicode, `..`, `/`, huge
//! and zero numbers, missing optionals, unknown enum values) are either decoded into
//! values the core can trust or refused with INVALID_ARGUMENT naming the bad field;
//! nothing panics, and a valid job spec survives the trip back to the wire.

use super::*;
use crate::coordinator::model::{self, SavepointTrigger};
use proptest::prelude::*;
use prost::Message;
use tonic::Code;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Strings a careless or hostile client might send.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9._-]{0,11}",
        2 => prop::sample::select(vec![
            "", " ", ".", "..", "/", "a/b", "../etc", "/abs/path", "./x", ".hidden", "x..y",
            "job 1", "é", "日本", "a\nb", "\u{0}", "\u{202e}", "C:\\x", "%2e%2e", "-", "_",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
        1 => "[a-zA-Z0-9._-]{120,135}",
    ]
}

/// Vertex names: mostly from the job's own few, so valid specs are common.
fn vertex_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["src", "map", "sink"]).prop_map(String::from),
        1 => text(),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        2..100u64,
        10..100_000u64,
        any::<u64>(),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0..5u32,
        1 => Just(u32::MAX),
        1 => 30_000..40_000u32,
        1 => any::<u32>(),
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1..12i32, 1 => any::<i32>()]
}

fn cron() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "", " ", "0 0 * * * *", "*/5 * * * * *", "0 0 0 31 2 *", "not a cron",
            "* * * * * * * *", "0 0 25 * * *", "60 * * * * *", "@hourly", "0 0 * * * MON-FRI",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
        1 => "[0-9*/,-]{1,3}( [0-9*/,-]{1,3}){4,6}",
    ]
}

/// RegisterJob requests: half close to valid (so validation and the round trip are
/// reached), half wild.
fn register_job_request() -> BoxedStrategy<proto::RegisterJobRequest> {
    // Boxed: the unboxed value trees of these strategies overflow a test thread's stack
    // in debug builds.
    prop_oneof![shaped_register_job_request(), wild_register_job_request()].boxed()
}

/// A request of the standard job's shape with numbers around the limits.
fn shaped_register_job_request() -> BoxedStrategy<proto::RegisterJobRequest> {
    let names = || {
        prop_oneof![
            3 => Just(vec!["src", "map", "sink"]),
            1 => prop::sample::subsequence(vec!["src", "map", "sink"], 0..=3),
        ]
        .prop_shuffle()
        .prop_map(|names| names.into_iter().map(String::from).collect::<Vec<_>>())
    };
    let parallelism = prop_oneof![6 => 1..5u32, 1 => count()];
    let max_parallelism = prop_oneof![8 => Just(0u32), 2 => 1..200u32, 1 => 32_760..32_780u32];
    let vertices = (
        names(),
        prop::collection::vec((parallelism, max_parallelism), 3),
    )
        .prop_map(|(names, numbers)| {
            names
                .into_iter()
                .zip(numbers)
                .map(|(id, (parallelism, max_parallelism))| proto::Vertex {
                    id,
                    parallelism,
                    max_parallelism,
                })
                .collect::<Vec<_>>()
        })
        .boxed();
    let listed = || {
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::sample::subsequence(vec!["src", "map", "sink"], 0..=3)
                .prop_map(|names| names.into_iter().map(String::from).collect()),
            1 => prop::collection::vec(vertex_name(), 0..3),
        ]
    };
    let trigger = prop_oneof![
        3 => Just(vec!["src".to_string()]),
        1 => listed(),
    ];
    let millis = || prop_oneof![3 => Just(0u64), 3 => 10..100_000u64, 1 => 1..10u64, 1 => number()];
    let small = || prop_oneof![3 => 0..4u32, 1 => 995..1005u32, 1 => count()];
    let policy = (millis(), millis(), millis(), small(), small(), small())
        .prop_map(
            |(interval_ms, timeout_ms, min_pause_ms, max_concurrent, retained, tolerable)| {
                Some(proto::CheckpointPolicy {
                    interval_ms,
                    timeout_ms,
                    min_pause_ms,
                    max_concurrent,
                    retained,
                    tolerable_failures: tolerable,
                })
            },
        )
        .boxed();
    let savepoint_millis = || prop_oneof![3 => Just(0u64), 1 => 1_000..100_000u64, 1 => number()];
    let savepoints = (
        savepoint_millis(),
        prop_oneof![3 => Just(String::new()), 1 => cron()],
        small(),
        savepoint_millis(),
    )
        .prop_map(|(interval_ms, cron, max_retained, max_age_ms)| {
            Some(proto::SavepointPolicy {
                interval_ms,
                cron,
                max_retained,
                max_age_ms,
            })
        })
        .boxed();
    (
        prop_oneof![3 => Just("job-1".to_string()), 1 => text()],
        vertices,
        (trigger, listed(), listed()),
        prop_oneof![Just(None), policy],
        prop_oneof![Just(String::new()), text()],
        prop_oneof![Just(None), savepoints],
    )
        .prop_map(
            |(job_id, vertices, (trigger, wait_for, commit), policy, dir, savepoints)| {
                proto::RegisterJobRequest {
                    job_id,
                    vertices,
                    trigger_vertices: trigger,
                    wait_for_vertices: wait_for,
                    commit_vertices: commit,
                    policy,
                    savepoint_dir: dir,
                    savepoint_policy: savepoints,
                }
            },
        )
        .boxed()
}

/// Anything at all in every field.
fn wild_register_job_request() -> BoxedStrategy<proto::RegisterJobRequest> {
    let vertex =
        (vertex_name(), count(), count()).prop_map(|(id, parallelism, max_parallelism)| {
            proto::Vertex {
                id,
                parallelism,
                max_parallelism,
            }
        });
    let names = || prop::collection::vec(vertex_name(), 0..3);
    let policy = prop::option::of(
        (number(), number(), number(), count(), count(), count()).prop_map(
            |(interval_ms, timeout_ms, min_pause_ms, max_concurrent, retained, tolerable)| {
                proto::CheckpointPolicy {
                    interval_ms,
                    timeout_ms,
                    min_pause_ms,
                    max_concurrent,
                    retained,
                    tolerable_failures: tolerable,
                }
            },
        ),
    );
    let savepoints = prop::option::of((number(), cron(), count(), number()).prop_map(
        |(interval_ms, cron, max_retained, max_age_ms)| proto::SavepointPolicy {
            interval_ms,
            cron,
            max_retained,
            max_age_ms,
        },
    ));
    (
        prop_oneof![3 => Just("job-1".to_string()), 2 => text()],
        prop::collection::vec(vertex, 0..4),
        (names(), names(), names()),
        policy,
        text(),
        savepoints,
    )
        .prop_map(
            |(job_id, vertices, (trigger, wait_for, commit), policy, dir, savepoints)| {
                proto::RegisterJobRequest {
                    job_id,
                    vertices,
                    trigger_vertices: trigger,
                    wait_for_vertices: wait_for,
                    commit_vertices: commit,
                    policy,
                    savepoint_dir: dir,
                    savepoint_policy: savepoints,
                }
            },
        )
        .boxed()
}

fn state_handle() -> impl Strategy<Value = proto::StateHandle> {
    let data = prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|bytes| proto::state_handle::Data::Inline(bytes.into())),
        (text(), number()).prop_map(|(uri, size_bytes)| {
            proto::state_handle::Data::Reference(proto::StateReference { uri, size_bytes })
        }),
    ]);
    let key_groups = prop::option::of(
        (count(), count()).prop_map(|(start, end)| proto::KeyGroupRange { start, end }),
    );
    (text(), data, key_groups).prop_map(|(name, data, key_groups)| proto::StateHandle {
        name,
        data,
        key_groups,
    })
}

fn acknowledge_request() -> impl Strategy<Value = proto::AcknowledgeRequest> {
    (
        text(),
        number(),
        number(),
        prop::collection::vec(state_handle(), 0..4),
        number(),
    )
        .prop_map(
            |(job_id, checkpoint_id, attempt_id, handles, fencing_token)| {
                proto::AcknowledgeRequest {
                    job_id,
                    checkpoint_id,
                    attempt_id,
                    handles,
                    fencing_token,
                    ..Default::default()
                }
            },
        )
}

fn task_info() -> impl Strategy<Value = proto::TaskInfo> {
    let subtask = prop::option::of((vertex_name(), count()).prop_map(
        |(vertex_id, subtask_index)| proto::SubtaskRef {
            vertex_id,
            subtask_index,
        },
    ));
    (text(), subtask, number(), enum_value()).prop_map(|(job_id, subtask, attempt_id, state)| {
        proto::TaskInfo {
            job_id,
            subtask,
            attempt_id,
            state,
        }
    })
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// The field an error message starts with, with list indices dropped:
/// `vertices[2].id contains '/'` -> `vertices.id`.
fn field_of(message: &str) -> String {
    let first = message.split(' ').next().unwrap_or_default();
    let mut field = String::new();
    let mut in_index = false;
    for c in first.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if in_index => {}
            _ => field.push(c),
        }
    }
    field
}

/// Fails unless `message` starts with one of `fields`.
fn names_a_field(message: &str, fields: &[&str]) -> Result<(), TestCaseError> {
    let field = field_of(message);
    prop_assert!(
        fields.contains(&field.as_str()),
        "message {message:?} does not start with one of the fields {fields:?}"
    );
    Ok(())
}

/// Fails unless `status` is INVALID_ARGUMENT naming one of `fields`.
fn refused_naming(status: &Status, fields: &[&str]) -> Result<(), TestCaseError> {
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
    names_a_field(status.message(), fields)
}

/// A decoded id is a safe file-name component: no separator, not `.`/`..`, no leading dot.
fn safe_name(name: &str) -> Result<(), TestCaseError> {
    prop_assert!(model::validate_name(name).is_ok(), "{name:?} was accepted");
    prop_assert!(!name.contains('/') && !name.contains('\\') && !name.starts_with('.'));
    Ok(())
}

const JOB_SPEC_FIELDS: &[&str] = &[
    "job_id",
    "vertices",
    "vertices.id",
    "vertices.parallelism",
    "vertices.max_parallelism",
    "trigger_vertices",
    "wait_for_vertices",
    "commit_vertices",
    "policy.interval_ms",
    "policy.max_concurrent",
    "policy.retained",
    "savepoint_policy",
    "savepoint_policy.interval_ms",
    "savepoint_policy.cron",
];

/// A job spec as RegisterJob carries it (the inverse of [`job_spec`] for validated specs).
fn job_spec_to_proto(spec: &JobSpec) -> proto::RegisterJobRequest {
    let millis = |d: Duration| d.as_millis() as u64;
    proto::RegisterJobRequest {
        job_id: spec.job_id.as_str().to_string(),
        vertices: spec
            .vertices
            .iter()
            .map(|v| proto::Vertex {
                id: v.id.clone(),
                parallelism: v.parallelism,
                max_parallelism: v.max_parallelism,
            })
            .collect(),
        trigger_vertices: spec.trigger_vertices.clone(),
        wait_for_vertices: spec.wait_for_vertices.clone(),
        commit_vertices: spec.commit_vertices.clone(),
        policy: Some(proto::CheckpointPolicy {
            interval_ms: spec.policy.interval.map_or(0, millis),
            timeout_ms: millis(spec.policy.timeout),
            min_pause_ms: millis(spec.policy.min_pause),
            max_concurrent: spec.policy.max_concurrent,
            retained: spec.policy.retained,
            tolerable_failures: spec.policy.tolerable_failures,
        }),
        savepoint_dir: spec.savepoint_dir.clone().unwrap_or_default(),
        savepoint_policy: Some(proto::SavepointPolicy {
            interval_ms: spec.savepoint_policy.interval.map_or(0, millis),
            cron: spec.savepoint_policy.cron.clone().unwrap_or_default(),
            max_retained: spec.savepoint_policy.max_retained,
            max_age_ms: spec.savepoint_policy.max_age.map_or(0, millis),
        }),
    }
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
    fn register_job_is_refused_with_a_named_field_or_round_trips(
        request in register_job_request()
    ) {
        let spec = match job_spec(request) {
            Err(status) => return refused_naming(&status, JOB_SPEC_FIELDS),
            Ok(spec) => spec,
        };
        safe_name(spec.job_id.as_str())?;
        let valid = match spec.validate() {
            Err(message) => return names_a_field(&message, JOB_SPEC_FIELDS),
            Ok(valid) => valid,
        };
        for vertex in &valid.vertices {
            safe_name(&vertex.id)?;
            prop_assert!(1 <= vertex.parallelism && vertex.parallelism <= vertex.max_parallelism);
        }
        prop_assert!(!valid.wait_for_vertices.is_empty() && !valid.commit_vertices.is_empty());
        prop_assert_eq!(valid.clone().validate(), Ok(valid.clone()), "validate is idempotent");
        let again = job_spec(job_spec_to_proto(&valid)).map(JobSpec::validate);
        prop_assert_eq!(again.ok(), Some(Ok(valid)), "the spec survives the wire");
    }

    #[test]
    fn acknowledgement_is_refused_with_a_named_field_or_kept_intact(
        request in acknowledge_request(),
        limit in prop::sample::select(vec![0usize, 16, DEFAULT_MAX_INLINE_STATE_BYTES]),
    ) {
        let fields = [
            "job_id",
            "checkpoint_id",
            "attempt_id",
            "handles",
            "handles.data",
            "handles.reference.uri",
            "handles.key_groups.start",
        ];
        let (job, ack) = match acknowledgement(request.clone(), limit) {
            // Too much inline state is a size limit, like gRPC's own message limit.
            Err(status) if status.code() == Code::ResourceExhausted => {
                let inline: usize = request
                    .handles
                    .iter()
                    .map(|h| match &h.data {
                        Some(proto::state_handle::Data::Inline(bytes)) => bytes.len(),
                        _ => 0,
                    })
                    .sum();
                prop_assert!(inline > limit, "{:?} refused with {inline} inline bytes", status);
                return names_a_field(status.message(), &["handles"]);
            }
            Err(status) => return refused_naming(&status, &fields),
            Ok(decoded) => decoded,
        };
        safe_name(job.as_str())?;
        prop_assert_eq!(job.as_str(), request.job_id.as_str());
        prop_assert_eq!(ack.checkpoint_id.0, request.checkpoint_id);
        prop_assert_eq!(ack.attempt_id.0, request.attempt_id);
        prop_assert!(ack.checkpoint_id.0 != 0 && ack.attempt_id.0 != 0);
        prop_assert_eq!(ack.fencing_token, request.fencing_token);
        let inline: u64 = ack
            .handles
            .iter()
            .filter(|h| matches!(h.data, StateData::Inline(_)))
            .map(StateHandle::size_bytes)
            .sum();
        prop_assert!(inline <= limit as u64);
        for handle in &ack.handles {
            if let Some(range) = handle.key_groups {
                prop_assert!(range.start <= range.end);
            }
        }
        let back: Vec<proto::StateHandle> =
            ack.handles.into_iter().map(state_handle_to_proto).collect();
        prop_assert_eq!(back, request.handles);
    }

    #[test]
    fn decline_is_refused_with_a_named_field_or_has_a_reason(
        job_id in text(),
        checkpoint_id in number(),
        attempt_id in number(),
        reason in text(),
    ) {
        let request = proto::DeclineRequest {
            job_id,
            checkpoint_id,
            attempt_id,
            reason: reason.clone(),
            fencing_token: 0,
        };
        match decline(request) {
            Err(status) => refused_naming(&status, &["job_id", "checkpoint_id", "attempt_id"])?,
            Ok(decline) => {
                safe_name(decline.job_id.as_str())?;
                prop_assert!(!decline.reason.trim().is_empty());
                prop_assert!(reason.trim().is_empty() || decline.reason == reason);
            }
        }
    }

    #[test]
    fn task_info_is_refused_naming_the_nested_field_or_kept_intact(task in task_info()) {
        let fields = [
            "tasks.job_id",
            "tasks.subtask",
            "tasks.subtask.vertex_id",
            "tasks.attempt_id",
            "tasks.state",
        ];
        match task_registration("tasks[3]", task.clone()) {
            Err(status) => {
                prop_assert!(status.message().starts_with("tasks[3]."), "{:?}", status);
                refused_naming(&status, &fields)?;
            }
            Ok(registration) => {
                safe_name(&registration.job_id)?;
                safe_name(&registration.vertex_id)?;
                let subtask = task.subtask.expect("a registration has a subtask");
                prop_assert_eq!(registration.job_id, task.job_id);
                prop_assert_eq!(registration.vertex_id, subtask.vertex_id);
                prop_assert_eq!(registration.subtask_index, subtask.subtask_index);
                prop_assert_eq!(registration.attempt_id.0, task.attempt_id);
                prop_assert!(task.attempt_id != 0);
                prop_assert_eq!(Some(registration.state), task_state("state", task.state).ok());
            }
        }
    }

    #[test]
    fn task_state_update_is_refused_with_a_named_field_or_kept_intact(
        job_id in text(),
        attempt_id in number(),
        state in enum_value(),
    ) {
        let update = proto::TaskStateUpdate { job_id, attempt_id, state };
        match task_state_change(update.clone()) {
            Err(status) => refused_naming(&status, &["job_id", "attempt_id", "state"])?,
            Ok(change) => {
                prop_assert_eq!(change.job_id.as_str(), update.job_id.as_str());
                prop_assert_eq!(change.attempt_id.0, update.attempt_id);
            }
        }
    }

    #[test]
    fn savepoint_requests_are_refused_with_a_named_field_or_kept_intact(
        job_id in text(),
        target_directory in text(),
        request_id in text(),
        detach in any::<bool>(),
        drain in any::<bool>(),
    ) {
        let trigger = proto::TriggerSavepointRequest {
            job_id: job_id.clone(),
            target_directory: target_directory.clone(),
            request_id: request_id.clone(),
            detach,
        };
        let stop = proto::StopWithSavepointRequest {
            job_id,
            target_directory: target_directory.clone(),
            drain,
            request_id: request_id.clone(),
            detach,
        };
        let blank_target = target_directory.trim().is_empty();
        for (call, trigger_kind) in [
            (trigger_savepoint(trigger), SavepointTrigger::Manual),
            (stop_with_savepoint(stop), SavepointTrigger::Stop),
        ] {
            match call {
                Err(status) => refused_naming(&status, &["job_id"])?,
                Ok(call) => {
                    safe_name(call.job_id.as_str())?;
                    prop_assert_eq!(call.detach, detach);
                    prop_assert_eq!(call.request.trigger, trigger_kind);
                    prop_assert_eq!(call.request.drain, drain && trigger_kind == SavepointTrigger::Stop);
                    prop_assert_eq!(
                        call.request.target_dir,
                        (!blank_target).then(|| target_directory.clone())
                    );
                    prop_assert_eq!(
                        call.request.request_id,
                        (!request_id.is_empty()).then(|| request_id.clone())
                    );
                }
            }
        }
    }

    #[test]
    fn restore_request_is_refused_with_a_named_field_or_kept_intact(
        job_id in text(),
        path in text(),
        allow in any::<bool>(),
        claim in enum_value(),
    ) {
        let request = proto::RestoreSavepointRequest {
            job_id,
            path: path.clone(),
            allow_non_restored_state: allow,
            claim_mode: claim,
        };
        match restore_savepoint(request) {
            Err(status) => refused_naming(&status, &["job_id", "path", "claim_mode"])?,
            Ok(restore) => {
                safe_name(restore.job_id.as_str())?;
                prop_assert_eq!(restore.path, path);
                prop_assert_eq!(restore.allow_non_restored_state, allow);
                prop_assert_eq!(Some(restore.claim_mode), claim_mode("claim_mode", claim).ok());
            }
        }
    }

    #[test]
    fn enums_and_names_are_decoded_or_refused_with_their_field(
        value in enum_value(),
        name in text(),
    ) {
        if let Err(status) = job_status("status", value) {
            refused_naming(&status, &["status"])?;
        }
        if let Err(status) = task_state("state", value) {
            refused_naming(&status, &["state"])?;
        }
        if let Err(status) = claim_mode("claim_mode", value) {
            refused_naming(&status, &["claim_mode"])?;
        }
        match task_manager_id(&name) {
            Err(status) => refused_naming(&status, &["task_manager_id"])?,
            Ok(tm) => prop_assert!(!tm.0.trim().is_empty() && !tm.0.chars().any(char::is_control)),
        }
        match job_id("job_id", &name) {
            Err(status) => refused_naming(&status, &["job_id"])?,
            Ok(job) => safe_name(job.as_str())?,
        }
    }

    #[test]
    fn grpc_timeout_never_panics_and_reads_only_well_formed_values(value in any::<String>()) {
        if let Some(timeout) = grpc_timeout(&value) {
            prop_assert!(value.len() >= 2 && value.len() <= 9, "{:?}", value);
            prop_assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
        }
    }

    /// What the `request_decode` fuzz target does, as a quick check in every test run.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_and_convert(&bytes);
    }

    #[test]
    fn encoded_requests_with_mutations_never_panic_the_decoders(
        request in register_job_request(),
        ack in acknowledge_request(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let message = proto::TaskManagerMessage {
            message: Some(proto::task_manager_message::Message::Acknowledge(ack)),
        };
        for mut bytes in [request.encode_to_vec(), message.encode_to_vec()] {
            if !bytes.is_empty() {
                for (at, byte) in &flips {
                    let i = at.index(bytes.len());
                    bytes[i] = *byte;
                }
            }
            decode_and_convert(&bytes);
        }
    }
}

/// Decodes `bytes` as each upward request type and runs every conversion on the result.
fn decode_and_convert(bytes: &[u8]) {
    if let Ok(request) = proto::RegisterJobRequest::decode(bytes)
        && let Ok(spec) = job_spec(request)
    {
        let _ = spec.validate();
    }
    if let Ok(request) = proto::TriggerSavepointRequest::decode(bytes) {
        let _ = trigger_savepoint(request);
    }
    if let Ok(request) = proto::RestoreSavepointRequest::decode(bytes) {
        let _ = restore_savepoint(request);
    }
    let Ok(message) = proto::TaskManagerMessage::decode(bytes) else {
        return;
    };
    use proto::task_manager_message::Message as Upward;
    match message.message {
        None => {}
        Some(Upward::Hello(hello)) => {
            let _ = task_manager_id(&hello.task_manager_id);
            for (i, task) in hello.tasks.into_iter().enumerate() {
                let _ = task_registration(&format!("tasks[{i}]"), task);
            }
        }
        Some(Upward::RegisterTasks(register)) => {
            for (i, task) in register.tasks.into_iter().enumerate() {
                let _ = task_registration(&format!("tasks[{i}]"), task);
            }
        }
        Some(Upward::TaskState(update)) => {
            let _ = task_state_change(update);
        }
        Some(Upward::Acknowledge(ack)) => {
            let _ = acknowledgement(ack, DEFAULT_MAX_INLINE_STATE_BYTES);
        }
        Some(Upward::Decline(request)) => {
            let _ = decline(request);
        }
    }
}

//! Fuzzes request decoding up to the core (`request_handling` goes on into it): protobuf
//! decoding of what clients and task managers send (RegisterJob, TriggerSavepoint,
//! RestoreSavepoint, the task manager stream's messages), then the service's validation
//! and conversion. Nothing may panic; a job spec that validates must validate again
//! unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::task_manager_message::Message as Upward;
use savepoint_coordinator::service::convert;

fn register_job(bytes: &[u8]) {
    let Ok(request) = proto::RegisterJobRequest::decode(bytes) else {
        return;
    };
    let Ok(spec) = convert::job_spec(request) else {
        return;
    };
    if let Ok(valid) = spec.validate() {
        assert_eq!(valid.clone().validate().as_ref(), Ok(&valid));
    }
}

fn task_manager_message(bytes: &[u8]) {
    let Ok(message) = proto::TaskManagerMessage::decode(bytes) else {
        return;
    };
    match message.message {
        None => {}
        Some(Upward::Hello(hello)) => {
            let _ = convert::task_manager_id(&hello.task_manager_id);
            for (i, task) in hello.tasks.into_iter().enumerate() {
                let _ = convert::task_registration(&format!("tasks[{i}]"), task);
            }
        }
        Some(Upward::RegisterTasks(register)) => {
            for (i, task) in register.tasks.into_iter().enumerate() {
                let _ = convert::task_registration(&format!("tasks[{i}]"), task);
            }
        }
        Some(Upward::TaskState(update)) => {
            let _ = convert::task_state_change(update);
        }
        Some(Upward::Acknowledge(ack)) => {
            let _ = convert::acknowledgement(ack, convert::DEFAULT_MAX_INLINE_STATE_BYTES);
        }
        Some(Upward::Decline(decline)) => {
            let _ = convert::decline(decline);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    register_job(data);
    task_manager_message(data);
    if let Ok(request) = proto::TriggerSavepointRequest::decode(data) {
        let _ = convert::trigger_savepoint(request);
    }
    if let Ok(request) = proto::StopWithSavepointRequest::decode(data) {
        let _ = convert::stop_with_savepoint(request);
    }
    if let Ok(request) = proto::RestoreSavepointRequest::decode(data) {
        let _ = convert::restore_savepoint(request);
    }
});

//! Security: TLS, mutual TLS, bearer tokens and certificate roles, against the real server
//! on 127.0.0.1:0 with certificates generated here (rcgen): a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates for an operator and two task managers,
//! and an impostor's certificate from another CA.
//!
//! Every wait is bounded ([`common::within`]).

mod common;

use common::{TestServer, WAIT, job, policy, within};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use savepoint_coordinator::client::{
    self, AuthChannel, ClientError, ClientIdentity, ClientTls, Downward, TaskManagerSession,
};
use savepoint_coordinator::proto;
use savepoint_coordinator::proto::savepoint_service_client::SavepointServiceClient;
use savepoint_coordinator::proto::task_gateway_client::TaskGatewayClient;
use savepoint_coordinator::server::{AuthConfig, TlsConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const CLIENT_TOKEN: &str = "client-token-0123456789abcdef";
const TM1_TOKEN: &str = "tm-1-token-0123456789abcdef";
const TM2_TOKEN: &str = "tm-2-token-0123456789abcdef";

/// A certificate and its private key, both PEM.
struct Pem {
    cert: String,
    key: String,
}

impl Pem {
    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert: self.cert.clone().into_bytes(),
            key: self.key.clone().into_bytes(),
        }
    }
}

/// A certificate authority that signs leaf certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate").pem();
        Authority {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A leaf certificate with common name `cn`, DNS or IP `names`, for `usage`.
    fn sign(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, cn: &str) -> Pem {
        self.sign(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Everything the tests need: certificates, the files the server reads, a data directory.
struct Pki {
    ca: Authority,
    /// Client certificates by name: `ops` (client), `tm-1` and `tm-2` (task managers),
    /// `stranger` (signed by the CA but given no role), and `impostor` (another CA, with
    /// the name `ops`).
    ops: Pem,
    tm1: Pem,
    tm2: Pem,
    stranger: Pem,
    impostor: Pem,
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Authority::new("savepoint test CA");
        let server = ca.sign(
            "savepointd",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("ca.pem", &ca.cert).expect("write");
        write("server.pem", &server.cert).expect("write");
        write("server.key", &server.key).expect("write");
        write(
            "tokens",
            &format!(
                "# role token [name]\nclient {CLIENT_TOKEN}\n\
                 task-manager {TM1_TOKEN} tm-1\ntask-manager {TM2_TOKEN} tm-2\n"
            ),
        )
        .expect("write");
        // The task managers are named by their DNS SAN, the operator by its CN.
        write(
            "cert-roles",
            "client ops\ntask-manager tm-1.example\ntask-manager tm-2.example\n",
        )
        .expect("write");
        let tm = |name: &str| {
            ca.sign(
                &format!("{name} (task manager)"),
                &[&format!("{name}.example")],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        Pki {
            ops: ca.client("ops"),
            tm1: tm("tm-1"),
            tm2: tm("tm-2"),
            stranger: ca.client("stranger"),
            impostor: Authority::new("another CA").client("ops"),
            ca,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS from the server certificate; mutual with the CA as client CA.
    fn tls(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    /// A client that trusts the CA and presents `identity`.
    fn client_tls(&self, identity: Option<&Pem>) -> ClientTls {
        ClientTls {
            ca: self.ca.cert.clone().into_bytes(),
            identity: identity.map(Pem::identity),
            domain_name: None,
        }
    }

    async fn start(&self, tls: Option<TlsConfig>, auth: AuthConfig) -> TestServer {
        TestServer::start_with(&self.path("data"), |config| {
            config.tls = tls;
            config.auth = auth;
        })
        .await
    }
}

async fn channel(server: &TestServer, tls: Option<&ClientTls>, token: Option<&str>) -> AuthChannel {
    within(
        "a connection",
        client::connect_with(&server.address.to_string(), tls, token),
    )
    .await
    .expect("connect")
}

/// Asserts that a client cannot get through: connecting fails, or else the first call
/// does (with TLS 1.3 a refused client certificate surfaces only after the handshake).
async fn assert_refused<F>(what: &str, connecting: F)
where
    F: Future<Output = Result<AuthChannel, ClientError>>,
{
    let channel = match within(what, connecting).await {
        Err(_) => return,
        Ok(channel) => channel,
    };
    let mut health = HealthClient::new(channel);
    let status = within(what, health.check(HealthCheckRequest::default()))
        .await
        .expect_err(what);
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{what}: {status:?}"
    );
}

async fn health(channel: AuthChannel) -> ServingStatus {
    within(
        "Check",
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await
    .expect("health check")
    .into_inner()
    .status()
}

type Savepoints = SavepointServiceClient<AuthChannel>;

async fn register(client: &mut Savepoints, spec: &proto::RegisterJobRequest) {
    within("RegisterJob", client.register_job(spec.clone()))
        .await
        .expect("RegisterJob");
}

async fn set_status(client: &mut Savepoints, job_id: &str, status: proto::JobStatus) {
    let request = proto::UpdateJobStatusRequest {
        job_id: job_id.to_string(),
        status: status.into(),
    };
    within("UpdateJobStatus", client.update_job_status(request))
        .await
        .expect("UpdateJobStatus");
}

fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{what}: {}", status.message()),
        Ok(answer) => panic!("{what}: expected {code:?}, got {answer:?}"),
    }
}

/// The job of the role tests: one source vertex with two subtasks, attempt 1 on tm-1
/// and attempt 2 on tm-2.
const JOB: &str = "secured";

fn task(attempt_id: u64) -> proto::TaskInfo {
    proto::TaskInfo {
        job_id: JOB.to_string(),
        subtask: Some(proto::SubtaskRef {
            vertex_id: "src".to_string(),
            subtask_index: (attempt_id - 1) as u32,
        }),
        attempt_id,
        state: proto::TaskState::Running.into(),
    }
}

fn ack(attempt_id: u64, checkpoint_id: u64) -> proto::AcknowledgeRequest {
    proto::AcknowledgeRequest {
        job_id: JOB.to_string(),
        checkpoint_id,
        attempt_id,
        ..Default::default()
    }
}

fn decline(attempt_id: u64, checkpoint_id: u64) -> proto::DeclineRequest {
    proto::DeclineRequest {
        job_id: JOB.to_string(),
        checkpoint_id,
        attempt_id,
        reason: "not mine to decline".to_string(),
        fencing_token: 0,
    }
}

async fn next_message(session: &mut TaskManagerSession) -> Downward {
    within("a message from the coordinator", session.next_message())
        .await
        .expect("stream open")
        .expect("a message")
}

async fn next_trigger(session: &mut TaskManagerSession) -> proto::TriggerCheckpoint {
    match next_message(session).await {
        Downward::TriggerCheckpoint(trigger) => trigger,
        other => panic!("expected a trigger, got {other:?}"),
    }
}

/// The role checks shared by the token and the certificate tests. `operator` may call
/// SavepointService; `tm1` and `tm2` are the task managers named tm-1 and tm-2 (as
/// `tm1_name`/`tm2_name`), `stranger` has no valid identity.
struct Callers {
    operator: AuthChannel,
    tm1: AuthChannel,
    tm2: AuthChannel,
    tm1_name: &'static str,
    tm2_name: &'static str,
    stranger: Vec<(&'static str, AuthChannel)>,
}

async fn check_roles(callers: Callers) {
    // Probes need no identity.
    for (what, channel) in &callers.stranger {
        assert_eq!(
            health(channel.clone()).await,
            ServingStatus::Serving,
            "{what}"
        );
    }
    // Without a valid identity neither service answers.
    let spec = job(JOB, &[("src", 2)], policy(0, 10_000));
    for (what, channel) in &callers.stranger {
        let mut savepoints = SavepointServiceClient::new(channel.clone());
        expect_code(
            what,
            within("RegisterJob", savepoints.register_job(spec.clone())).await,
            Code::Unauthenticated,
        );
        let mut gateway = TaskGatewayClient::new(channel.clone());
        expect_code(
            what,
            within("Acknowledge", gateway.acknowledge(ack(1, 1))).await,
            Code::Unauthenticated,
        );
    }

    let mut operator = SavepointServiceClient::new(callers.operator.clone());
    register(&mut operator, &spec).await;
    let mut tm1 = within(
        "tm-1 connecting",
        TaskManagerSession::connect(callers.tm1.clone(), callers.tm1_name, vec![task(1)]),
    )
    .await
    .expect("tm-1 connects as itself");
    assert_eq!(tm1.accepted_tasks(), 1);
    let mut tm2 = within(
        "tm-2 connecting",
        TaskManagerSession::connect(callers.tm2.clone(), callers.tm2_name, vec![task(2)]),
    )
    .await
    .expect("tm-2 connects as itself");
    set_status(&mut operator, JOB, proto::JobStatus::Running).await;

    // A task manager cannot pass itself off as another one ...
    let posing = TaskManagerSession::connect(callers.tm2.clone(), callers.tm1_name, vec![]);
    match within("tm-2 posing as tm-1", posing).await {
        Err(ClientError::Status(status)) => {
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{}",
                status.message()
            )
        }
        Err(other) => panic!("tm-2 posing as tm-1: {other}"),
        Ok(_) => panic!("tm-2 connected as tm-1"),
    }
    // ... nor call the operators' service ...
    let mut tm_as_operator = SavepointServiceClient::new(callers.tm1.clone());
    expect_code(
        "a task manager triggering a savepoint",
        within(
            "TriggerSavepoint",
            tm_as_operator.trigger_savepoint(proto::TriggerSavepointRequest {
                job_id: JOB.to_string(),
                ..Default::default()
            }),
        )
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        "a task manager disposing a savepoint",
        within(
            "DisposeSavepoint",
            tm_as_operator.dispose_savepoint(proto::DisposeSavepointRequest {
                path: "/anywhere/savepoint-secured-1".to_string(),
            }),
        )
        .await,
        Code::PermissionDenied,
    );
    // ... and an operator cannot act as a task manager.
    let mut operator_as_tm = TaskGatewayClient::new(callers.operator.clone());
    expect_code(
        "an operator acknowledging",
        within("Acknowledge", operator_as_tm.acknowledge(ack(1, 1))).await,
        Code::PermissionDenied,
    );
    let connecting = TaskManagerSession::connect(callers.operator.clone(), "ops", vec![]);
    match within("an operator connecting as a task manager", connecting).await {
        Err(ClientError::Status(status)) => assert_eq!(status.code(), Code::PermissionDenied),
        Err(other) => panic!("an operator connecting as a task manager: {other}"),
        Ok(_) => panic!("an operator connected as a task manager"),
    }

    // A savepoint with both task managers: each may act only for its own attempt.
    let mut trigger_client = operator.clone();
    let savepoint = tokio::spawn(async move {
        let request = proto::TriggerSavepointRequest {
            job_id: JOB.to_string(),
            ..Default::default()
        };
        tokio::time::timeout(WAIT, trigger_client.trigger_savepoint(request)).await
    });
    let trigger1 = next_trigger(&mut tm1).await;
    let trigger2 = next_trigger(&mut tm2).await;
    assert_eq!((trigger1.attempt_id, trigger2.attempt_id), (1, 2));
    let id = trigger1.checkpoint_id;

    let mut tm2_gateway = TaskGatewayClient::new(callers.tm2.clone());
    expect_code(
        "tm-2 acknowledging tm-1's attempt",
        within("Acknowledge", tm2_gateway.acknowledge(ack(1, id))).await,
        Code::PermissionDenied,
    );
    expect_code(
        "tm-2 declining for tm-1's attempt",
        within("Decline", tm2_gateway.decline(decline(1, id))).await,
        Code::PermissionDenied,
    );
    // Over its stream too: the refusal comes back as a StreamError.
    tm2.send(proto::task_manager_message::Message::Decline(decline(
        1, id,
    )))
    .await
    .expect("sent");
    match next_message(&mut tm2).await {
        Downward::Error(error) => assert_eq!(error.code, "PERMISSION_DENIED", "{error:?}"),
        other => panic!("expected a StreamError, got {other:?}"),
    }

    // Each acknowledges its own attempt: tm-1 unary, tm-2 over its stream.
    let mut tm1_gateway = TaskGatewayClient::new(callers.tm1.clone());
    let recorded = within("Acknowledge", tm1_gateway.acknowledge(ack(1, id)))
        .await
        .expect("tm-1 acknowledges its own attempt")
        .into_inner();
    assert_eq!(recorded.outcome(), proto::AckOutcome::Recorded);
    tm2.acknowledge(&trigger2, vec![]).await.expect("sent");
    let completed = within("the savepoint", savepoint)
        .await
        .expect("trigger task")
        .expect("within the call's bound")
        .expect("the savepoint completes")
        .into_inner();
    assert_eq!(completed.checkpoint_id, id);
    assert!(
        completed.path.contains("savepoint-secured-"),
        "{}",
        completed.path
    );
}

#[tokio::test]
async fn a_tls_server_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = Pki::new();
    let server = pki.start(Some(pki.tls(false)), AuthConfig::default()).await;

    let trusted = channel(&server, Some(&pki.client_tls(None)), None).await;
    assert_eq!(health(trusted.clone()).await, ServingStatus::Serving);
    let mut savepoints = SavepointServiceClient::new(trusted);
    register(
        &mut savepoints,
        &job("tls-job", &[("src", 1)], policy(0, 0)),
    )
    .await;

    let address = server.address.to_string();
    assert_refused("a plaintext client", async {
        client::connect(&address).await.map(AuthChannel::from)
    })
    .await;
    let other_ca = ClientTls {
        ca: Authority::new("another CA").cert.into_bytes(),
        ..ClientTls::default()
    };
    assert_refused(
        "a client that does not trust the server's CA",
        client::connect_with(&address, Some(&other_ca), None),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let pki = Pki::new();
    let server = pki.start(Some(pki.tls(true)), AuthConfig::default()).await;
    let address = server.address.to_string();

    let verified = channel(&server, Some(&pki.client_tls(Some(&pki.ops))), None).await;
    assert_eq!(health(verified.clone()).await, ServingStatus::Serving);
    let mut savepoints = SavepointServiceClient::new(verified);
    register(
        &mut savepoints,
        &job("mtls-job", &[("src", 1)], policy(0, 0)),
    )
    .await;

    assert_refused(
        "a client without a certificate",
        client::connect_with(&address, Some(&pki.client_tls(None)), None),
    )
    .await;
    assert_refused(
        "a client whose certificate another CA signed",
        client::connect_with(&address, Some(&pki.client_tls(Some(&pki.impostor))), None),
    )
    .await;
    assert_refused("a plaintext client", async {
        client::connect(&address).await.map(AuthChannel::from)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn bearer_tokens_decide_who_may_call_what() {
    let pki = Pki::new();
    let auth = AuthConfig {
        tokens: Some(pki.path("tokens")),
        cert_roles: None,
    };
    let server = pki.start(Some(pki.tls(false)), auth).await;
    let tls = pki.client_tls(None);
    let callers = Callers {
        operator: channel(&server, Some(&tls), Some(CLIENT_TOKEN)).await,
        tm1: channel(&server, Some(&tls), Some(TM1_TOKEN)).await,
        tm2: channel(&server, Some(&tls), Some(TM2_TOKEN)).await,
        tm1_name: "tm-1",
        tm2_name: "tm-2",
        stranger: vec![
            ("no token", channel(&server, Some(&tls), None).await),
            (
                "an unknown token",
                channel(&server, Some(&tls), Some("not-a-configured-token-0123")).await,
            ),
        ],
    };
    check_roles(callers).await;
    server.stop().await;
}

#[tokio::test]
async fn certificate_roles_decide_who_may_call_what() {
    let pki = Pki::new();
    let auth = AuthConfig {
        tokens: None,
        cert_roles: Some(pki.path("cert-roles")),
    };
    let server = pki.start(Some(pki.tls(true)), auth).await;
    let with = |pem: &Pem| pki.client_tls(Some(pem));
    let callers = Callers {
        operator: channel(&server, Some(&with(&pki.ops)), None).await,
        tm1: channel(&server, Some(&with(&pki.tm1)), None).await,
        tm2: channel(&server, Some(&with(&pki.tm2)), None).await,
        tm1_name: "tm-1.example",
        tm2_name: "tm-2.example",
        stranger: vec![(
            "a certificate without a role",
            channel(&server, Some(&with(&pki.stranger)), None).await,
        )],
    };
    check_roles(callers).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_token_is_refused_even_with_a_good_certificate() {
    let pki = Pki::new();
    let auth = AuthConfig {
        tokens: Some(pki.path("tokens")),
        cert_roles: Some(pki.path("cert-roles")),
    };
    let server = pki.start(Some(pki.tls(true)), auth).await;
    let tls = pki.client_tls(Some(&pki.ops));
    let spec = job("mixed", &[("src", 1)], policy(0, 0));

    let bad = channel(&server, Some(&tls), Some("not-a-configured-token-0123")).await;
    expect_code(
        "a bad token with the operator's certificate",
        within(
            "RegisterJob",
            SavepointServiceClient::new(bad).register_job(spec.clone()),
        )
        .await,
        Code::Unauthenticated,
    );
    // The token decides over the certificate: a task-manager token is a task manager.
    let tm = channel(&server, Some(&tls), Some(TM1_TOKEN)).await;
    expect_code(
        "a task-manager token with the operator's certificate",
        within(
            "RegisterJob",
            SavepointServiceClient::new(tm).register_job(spec.clone()),
        )
        .await,
        Code::PermissionDenied,
    );
    let certificate_only = channel(&server, Some(&tls), None).await;
    register(&mut SavepointServiceClient::new(certificate_only), &spec).await;
    server.stop().await;
}

/// Runs savepointd with `args` and returns its exit status and standard error; bounded.
async fn savepointd_fails(args: &[&str], data_dir: &Path) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_savepointd"));
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true);
    let output = within("savepointd to exit", command.output())
        .await
        .expect("savepointd runs");
    assert!(!output.status.success(), "savepointd started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn savepointd_names_the_bad_security_setting_at_start() {
    let pki = Pki::new();
    let data = pki.path("data");
    let missing = pki.path("missing.pem");
    let missing = missing.to_str().expect("utf-8");
    let key = pki.path("server.key");
    let key = key.to_str().expect("utf-8");
    let stderr = savepointd_fails(&["--tls-cert", missing, "--tls-key", key], &data).await;
    assert!(stderr.contains("tls.cert"), "{stderr}");

    let cert = pki.path("server.pem");
    let cert = cert.to_str().expect("utf-8");
    // A certificate where the key should be.
    let stderr = savepointd_fails(&["--tls-cert", cert, "--tls-key", cert], &data).await;
    assert!(stderr.contains("tls.key"), "{stderr}");

    std::fs::write(pki.path("weak-tokens"), "client short\n").expect("write");
    let weak = pki.path("weak-tokens");
    let stderr = savepointd_fails(&["--auth-tokens", weak.to_str().expect("utf-8")], &data).await;
    assert!(
        stderr.contains("auth.tokens") && stderr.contains("line 1"),
        "{stderr}"
    );

    let roles = pki.path("cert-roles");
    let stderr = savepointd_fails(&["--cert-roles", roles.to_str().expect("utf-8")], &data).await;
    assert!(stderr.contains("--tls-client-ca"), "{stderr}");
}

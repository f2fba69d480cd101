//! Who is calling, and whether they may: caller identities and the interceptor that
//! guards `SavepointService` and `TaskGateway`.
//!
//! An [`Identity`] is a [`Role`] and a name. It comes from one of two places:
//! - a bearer token (`authorization: Bearer <token>` metadata) listed in the tokens file,
//!   one `<role> <token> [<name>]` per line;
//! - the client certificate that mutual TLS has already verified: its subject common
//!   name and its DNS subject alternative names are looked up in the cert-roles file, one
//!   `<role> <name>` per line (the first of the certificate's names that is listed, CN
//!   first, decides; names compare ASCII case-insensitively).
//!
//! A token, when sent, decides alone: a bad token is refused even with a good
//! certificate. Roles are `client` (may call SavepointService) and `task-manager` (may
//! call TaskGateway). A task manager's name is the `task_manager_id` it must say Hello
//! with, so the gateway can keep it to the tasks it registered; task-manager tokens
//! therefore need a name.
//!
//! [`Guard`] refuses a call without a valid identity with UNAUTHENTICATED and one with
//! the wrong role with PERMISSION_DENIED, and puts the [`Identity`] into the request's
//! extensions for the handlers ([`caller`]). A guard without an [`Authenticator`] lets
//! every call through and adds no identity: that is the server without authentication,
//! for loopback and development only. Health checking and reflection are never guarded.

use ring::digest::{SHA256, digest};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Tokens shorter than this are refused when the tokens file is read.
pub const MIN_TOKEN_LEN: usize = 16;

/// What an identity may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Operators, savepointctl and controllers: SavepointService.
    Client,
    /// Task managers: TaskGateway.
    TaskManager,
}

impl Role {
    /// The role's name in the auth files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::TaskManager => "task-manager",
        }
    }

    fn parse(word: &str) -> Option<Role> {
        match word {
            "client" => Some(Role::Client),
            "task-manager" => Some(Role::TaskManager),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// For a task manager, the `task_manager_id` it acts as.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Why an auth file cannot be used; names the file and, for a bad entry, the line.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}, line {line}: {problem}", path.display())]
    Entry {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{} lists nobody", path.display())]
    Empty { path: PathBuf },
}

struct Token {
    /// SHA-256 of the token: compared in constant time, and equal in length for every token.
    digest: [u8; 32],
    identity: Identity,
}

/// The configured tokens and certificate names; decides who a request comes from.
#[derive(Default)]
pub struct Authenticator {
    tokens: Vec<Token>,
    /// Lower-cased certificate name -> identity (named as written in the file).
    cert_names: HashMap<String, Identity>,
}

fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// The non-empty, non-comment lines of `text` with their 1-based numbers, split into words.
fn entries(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, words)| words.first().is_some_and(|w| !w.starts_with('#')))
}

fn read(path: &Path) -> Result<String, AuthFileError> {
    std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn role_of(word: &str) -> Result<Role, String> {
    Role::parse(word).ok_or_else(|| {
        format!("unknown role {word:?}: the first word must be client or task-manager")
    })
}

impl Authenticator {
    /// Adds the tokens of the file at `path` (see the module documentation).
    pub fn read_tokens(self, path: &Path) -> Result<Self, AuthFileError> {
        self.parse_tokens(&read(path)?, path)
    }

    /// Adds the certificate names of the file at `path` (see the module documentation).
    pub fn read_cert_roles(self, path: &Path) -> Result<Self, AuthFileError> {
        self.parse_cert_roles(&read(path)?, path)
    }

    /// Adds tokens from `text`, lines `<role> <token> [<name>]`; `path` is for errors.
    pub fn parse_tokens(mut self, text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let before = self.tokens.len();
        for (line, words) in entries(text) {
            let bad = |problem: String| AuthFileError::Entry {
                path: path.to_path_buf(),
                line,
                problem,
            };
            let (role, token, name) = match words[..] {
                [role, token] => (role_of(role).map_err(bad)?, token, None),
                [role, token, name] => (role_of(role).map_err(bad)?, token, Some(name)),
                _ => return Err(bad("expected `<role> <token> [<name>]`".into())),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters; use a long random \
                     one (e.g. `openssl rand -hex 32`)"
                )));
            }
            let name = match (role, name) {
                (_, Some(name)) => name.to_string(),
                (Role::Client, None) => format!("token of line {line}"),
                (Role::TaskManager, None) => {
                    return Err(bad(
                        "a task-manager token needs a name, the task_manager_id it connects \
                         as: `task-manager <token> <name>`"
                            .into(),
                    ));
                }
            };
            let digest = token_digest(token);
            if self.tokens.iter().any(|t| t.digest == digest) {
                return Err(bad("this token is listed twice".into()));
            }
            self.tokens.push(Token {
                digest,
                identity: Identity { role, name },
            });
        }
        if self.tokens.len() == before {
            return Err(AuthFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(self)
    }

    /// Adds certificate names from `text`, lines `<role> <name>`; `path` is for errors.
    pub fn parse_cert_roles(mut self, text: &str, path: &Path) -> Result<Self, AuthFileError> {
        let before = self.cert_names.len();
        for (line, words) in entries(text) {
            let bad = |problem: String| AuthFileError::Entry {
                path: path.to_path_buf(),
                line,
                problem,
            };
            let [role, name] = words[..] else {
                return Err(bad("expected `<role> <name>`".into()));
            };
            let identity = Identity {
                role: role_of(role).map_err(bad)?,
                name: name.to_string(),
            };
            if self
                .cert_names
                .insert(name.to_ascii_lowercase(), identity)
                .is_some()
            {
                return Err(bad(format!("{name} is listed twice")));
            }
        }
        if self.cert_names.len() == before {
            return Err(AuthFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(self)
    }

    /// Whether bearer tokens are accepted.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether client certificates identify callers.
    pub fn has_cert_roles(&self) -> bool {
        !self.cert_names.is_empty()
    }

    /// The caller of `request`, from its bearer token or else its client certificate.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        if self.has_tokens()
            && let Some(header) = request.metadata().get("authorization")
        {
            let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization metadata: expected `Bearer <token>`",
                )
            })?;
            return self
                .identify_token(token)
                .cloned()
                .ok_or_else(|| Status::unauthenticated("invalid bearer token"));
        }
        if self.has_cert_roles()
            && let Some(certificates) = request.peer_certs()
            && let Some(leaf) = certificates.first()
        {
            return self.identify_certificate(leaf).cloned().ok_or_else(|| {
                Status::unauthenticated(
                    "no name of the client certificate (subject CN, DNS SANs) has a role",
                )
            });
        }
        Err(Status::unauthenticated(if self.has_tokens() {
            "missing credentials: send `authorization: Bearer <token>` metadata"
        } else {
            "missing credentials: present a client certificate"
        }))
    }

    /// The identity of `token`. Every configured token is compared, in constant time.
    fn identify_token(&self, token: &str) -> Option<&Identity> {
        let presented = token_digest(token);
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(&entry.identity);
            }
        }
        found
    }

    /// The identity of the first name of a DER certificate that is listed.
    fn identify_certificate(&self, der: &[u8]) -> Option<&Identity> {
        certificate_names(der)
            .iter()
            .find_map(|name| self.cert_names.get(&name.to_ascii_lowercase()))
    }
}

/// The token of an `authorization` value `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A certificate's names: subject common names first, then DNS subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = certificate
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names
}

/// The identity a guard put on `request`; None when the server has no authentication.
pub fn caller<T>(request: &Request<T>) -> Option<&Identity> {
    request.extensions().get::<Identity>()
}

/// The interceptor in front of one service: lets through callers with `role`.
#[derive(Clone)]
pub struct Guard {
    authenticator: Option<Arc<Authenticator>>,
    role: Role,
}

impl Guard {
    /// Guards a service that needs `role`; without an authenticator every call passes.
    pub fn new(authenticator: Option<Arc<Authenticator>>, role: Role) -> Guard {
        Guard {
            authenticator,
            role,
        }
    }
}

impl Interceptor for Guard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(request);
        };
        let identity = authenticator.identify(&request).inspect_err(|status| {
            tracing::info!(
                remote = ?request.remote_addr(),
                "call refused, unauthenticated: {}",
                status.message()
            );
        })?;
        if identity.role != self.role {
            tracing::info!(caller = %identity, needs = %self.role, "call refused, wrong role");
            return Err(Status::permission_denied(format!(
                "{identity} may not call this service; it needs role {}",
                self.role
            )));
        }
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    const TOKENS: &str = "\
# operators
client    0123456789abcdef-client
task-manager 0123456789abcdef-tm-1 tm-1

task-manager 0123456789abcdef-tm-2 tm-2
";

    fn authenticator() -> Authenticator {
        Authenticator::default()
            .parse_tokens(TOKENS, Path::new("tokens"))
            .expect("valid tokens")
    }

    fn with_authorization(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(value).expect("ascii"),
        );
        request
    }

    fn entry_problem(result: Result<Authenticator, AuthFileError>) -> (usize, String) {
        match result {
            Err(AuthFileError::Entry { line, problem, .. }) => (line, problem),
            Err(other) => panic!("expected a bad entry, got {other}"),
            Ok(_) => panic!("expected a bad entry, the file was accepted"),
        }
    }

    #[test]
    fn tokens_identify_their_role_and_name() {
        let auth = authenticator();
        let identify = |value: &str| auth.identify(&with_authorization(value));
        assert_eq!(
            identify("Bearer 0123456789abcdef-tm-2").expect("known token"),
            Identity {
                role: Role::TaskManager,
                name: "tm-2".into()
            }
        );
        let client = identify("bearer  0123456789abcdef-client ").expect("known token");
        assert_eq!(client.role, Role::Client);
        assert_eq!(client.name, "token of line 2");
        for refused in [
            "Bearer 0123456789abcdef-tm-3",
            "Bearer",
            "Basic 0123456789abcdef-client",
            "0123456789abcdef-client",
        ] {
            let status = identify(refused).expect_err(refused);
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{refused}");
        }
        let status = auth.identify(&Request::new(())).expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let parse = |text: &str| Authenticator::default().parse_tokens(text, Path::new("t"));
        let (line, problem) = entry_problem(parse("\nadmin 0123456789abcdef-x\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("unknown role"), "{problem}");
        let (_, problem) = entry_problem(parse("client short"));
        assert!(problem.contains("shorter"), "{problem}");
        let (_, problem) = entry_problem(parse("task-manager 0123456789abcdef-tm"));
        assert!(problem.contains("needs a name"), "{problem}");
        let (line, problem) = entry_problem(parse(
            "client 0123456789abcdef-x\ntask-manager 0123456789abcdef-x tm",
        ));
        assert_eq!(line, 2);
        assert!(problem.contains("twice"), "{problem}");
        let (_, problem) = entry_problem(parse("client a b c"));
        assert!(problem.contains("expected"), "{problem}");
        assert!(matches!(
            parse("# nobody\n"),
            Err(AuthFileError::Empty { .. })
        ));
    }

    #[test]
    fn bad_cert_role_files_name_the_line() {
        let parse = |text: &str| Authenticator::default().parse_cert_roles(text, Path::new("c"));
        let (line, problem) = entry_problem(parse("client ops\ntask-manager OPS"));
        assert_eq!(line, 2);
        assert!(problem.contains("twice"), "{problem}");
        let (_, problem) = entry_problem(parse("client"));
        assert!(problem.contains("expected"), "{problem}");
        let (_, problem) = entry_problem(parse("operator ops"));
        assert!(problem.contains("unknown role"), "{problem}");
        assert!(parse("client ops\ntask-manager tm-1").is_ok());
    }

    #[test]
    fn guard_checks_the_role_and_records_the_identity() {
        let auth = Some(Arc::new(authenticator()));
        let mut gateway = Guard::new(auth.clone(), Role::TaskManager);
        let passed = gateway
            .call(with_authorization("Bearer 0123456789abcdef-tm-1"))
            .expect("task manager on the gateway");
        assert_eq!(caller(&passed).map(|i| i.name.as_str()), Some("tm-1"));

        let mut savepoints = Guard::new(auth, Role::Client);
        let status = savepoints
            .call(with_authorization("Bearer 0123456789abcdef-tm-1"))
            .expect_err("task manager on the savepoint service");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        let mut open = Guard::new(None, Role::Client);
        let passed = open.call(Request::new(())).expect("no authentication");
        assert!(caller(&passed).is_none());
    }
}

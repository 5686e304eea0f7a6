//! The errors a client can get from the server, with etcd's messages and gRPC codes.
//!
//! Everything a request path can fail with becomes an `ApiError`; `ApiError::status`
//! is the single place that turns it into a `tonic::Status`. Messages are etcd's to the
//! letter (clients match on them; docs/compatibility.md lists them).

use raftkv_storage::error::ErrorClass;
use raftkv_storage::MvccError;
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApiError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// A joining member claims the peer URL of an existing one: most likely that member
    /// restarted with a wiped data dir, and must not vote again with lost state.
    #[error("raftkv: member {existing} already has peer URL {url}; if its data dir was lost, remove it first (etcdctl member remove {existing}) and join again")]
    RejoinWithLostState { existing: String, url: String },
    /// A join without the cluster's token (or with a wrong one): nothing was changed.
    #[error("raftkv: join refused: {0}")]
    JoinRefused(String),
    #[error("etcdserver: refusing to remove the last voter: the cluster would have no quorum")]
    LastVoter,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// etcd answers a password sent for a user without one with its auth store's own
    /// error, which has no gRPC mapping (code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// An error etcd answers with a plain error of its own (code Unknown).
    #[error("{0}")]
    Unknown(String),
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: {0}")]
    Unsupported(String),
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// A failure of this member (disk, Raft core): never the client's fault.
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

/// The gRPC code etcd answers a storage error's class with.
fn code_of(class: ErrorClass) -> Code {
    match class {
        ErrorClass::OutOfRange => Code::OutOfRange,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
    }
}

impl ApiError {
    pub fn status(&self) -> Status {
        let code = match self {
            ApiError::Mvcc(e) => code_of(e.class()),
            ApiError::NoLeader
            | ApiError::Timeout
            | ApiError::TimeoutDueToLeaderFail
            | ApiError::Stopped => Code::Unavailable,
            ApiError::MemberNotFound => Code::NotFound,
            ApiError::PeerUrlExists => Code::FailedPrecondition,
            ApiError::MemberNotLearner | ApiError::LearnerNotReady => Code::FailedPrecondition,
            ApiError::LastVoter => Code::FailedPrecondition,
            ApiError::RejoinWithLostState { .. } => Code::FailedPrecondition,
            ApiError::JoinRefused(_) => Code::PermissionDenied,
            ApiError::NotLeader | ApiError::BadLeaderTransferee => Code::FailedPrecondition,
            ApiError::LeaderTransferTimeout => Code::Unavailable,
            ApiError::AuthNotEnabled => Code::FailedPrecondition,
            ApiError::InvalidAuthToken => Code::Unauthenticated,
            ApiError::NoPasswordUser | ApiError::Unknown(_) => Code::Unknown,
            ApiError::UserNotFound | ApiError::RoleNotFound => Code::FailedPrecondition,
            ApiError::Unsupported(_) => Code::Unimplemented,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        e.status()
    }
}

impl From<raftkv_storage::Error> for ApiError {
    fn from(e: raftkv_storage::Error) -> ApiError {
        match e {
            raftkv_storage::Error::Mvcc(m) => ApiError::Mvcc(m),
            raftkv_storage::Error::Store(s) => ApiError::Internal(s.to_string()),
        }
    }
}

impl From<raftkv_storage::StoreError> for ApiError {
    fn from(e: raftkv_storage::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

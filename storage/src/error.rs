//! Errors of the storage crate.
//!
//! `MvccError` is what a client may see: each message is etcd's, to the letter, because
//! clients (the Kubernetes API server above all) match on the text. `StoreError` is what
//! goes wrong underneath (disk, the key-value engine, corruption) and is never a client's fault.

use serde::{Deserialize, Serialize};

/// Errors a request can earn, with etcd's exact messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MvccError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// The NOSPACE alarm is raised: only reads, deletes and compaction are applied.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// An auth change refused (auth.rs): etcd's message.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// The gRPC status class etcd answers each error with; the server maps it to tonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    OutOfRange,
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    ResourceExhausted,
    PermissionDenied,
}

impl MvccError {
    pub fn class(&self) -> ErrorClass {
        match self {
            MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => {
                ErrorClass::OutOfRange
            }
            MvccError::LeaseNotFound => ErrorClass::NotFound,
            MvccError::LeaseExists => ErrorClass::FailedPrecondition,
            MvccError::TooManyOps
            | MvccError::DuplicateKey
            | MvccError::RequestTooLarge
            | MvccError::EmptyKey
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided => ErrorClass::InvalidArgument,
            MvccError::NoSpace => ErrorClass::ResourceExhausted,
            MvccError::Auth(e) => e.class(),
        }
    }
}

/// Failures of the store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key-value engine: {0}")]
    Engine(#[from] crate::mvcc::engine::EngineError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

/// Either a client-facing error or a store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::mvcc::engine::EngineError> for Error {
    fn from(e: crate::mvcc::engine::EngineError) -> Self {
        Error::Store(StoreError::Engine(e))
    }
}

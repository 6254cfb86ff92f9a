use std::io;

/// Why a store operation failed. The first group is the caller's or the client's doing and maps to
/// a 4xx; `Io`, `Corrupt`, `Remote` and `Unreachable` are the store's own trouble.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such upload")]
    NoSuchUpload,
    #[error("no such object")]
    NoSuchObject,
    #[error("part {0} is missing")]
    MissingPart(u32),
    #[error("part {part} has ETag {actual}, not {expected}")]
    PartChanged { part: u32, expected: String, actual: String },
    #[error("the body is longer than the part's {expected} bytes")]
    BodyTooLong { expected: u64 },
    #[error("the body has {received} bytes; the part has {expected}")]
    BodyTooShort { expected: u64, received: u64 },
    #[error("the body could not be read: {0}")]
    Body(#[source] io::Error),
    #[error("the object's SHA-256 is {actual}, not the expected {expected}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("this store cannot read the parts of an open upload")]
    Unreadable,
    #[error("the record changed since it was read")]
    ConditionFailed,
    #[error("invalid record name {0:?}")]
    InvalidName(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("the key {0:?} is reserved for the store's own records")]
    ReservedKey(String),
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The backing service answered with an error this store has no better name for.
    #[error("the storage service answered {status} {code}: {message}")]
    Remote { status: u16, code: String, message: String },
    /// The backing service could not be reached or stopped answering.
    #[error("the storage service is unreachable: {0}")]
    Unreachable(String),
}

//! Storage errors.

use dotkv_crdt::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what}: {source}")]
    Codec {
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("corrupt {0}")]
    Corrupt(String),
    #[error("counter overflow on {key:?}: the value would leave the i64 range")]
    CounterOverflow { key: String },
    #[error("the writer has stopped")]
    WriterStopped,
    /// RocksDB refused a commit (an I/O error, such as a full disk). No
    /// request of the group is acknowledged.
    #[error("the commit failed: {0}")]
    CommitFailed(String),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: CodecError,
    },
    #[error("delta group {origin}:{first} is not causally ready: {why}")]
    NotReady {
        origin: dotkv_crdt::ReplicaId,
        first: u64,
        why: String,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The data directory cannot be used: it is not a directory, cannot be
    /// created, or another process has the database open.
    #[error("data directory {}: {message}", .path.display())]
    DataDir {
        path: std::path::PathBuf,
        message: String,
    },
}

impl StorageError {
    pub(crate) fn codec(what: impl Into<String>, source: CodecError) -> Self {
        StorageError::Codec {
            what: what.into(),
            source,
        }
    }
}

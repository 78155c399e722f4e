//! The snapshot stream: bytes in, verified bytes out, memory flat in the database size.
//!
//! etcd's `Maintenance.Snapshot` sends the bbolt file in chunks, each with `remaining_bytes`;
//! the last data chunk has `remaining_bytes == 0`, and one more message carries the raw 32-byte
//! sha256 of everything before it. A stream that ends before that trailer, or whose trailer does
//! not match, is a failed snapshot. The trailer is written to the output too, so the file is
//! exactly what `etcdctl snapshot save` writes and `etcdutl snapshot restore` accepts.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::etcddb::TRAILER_LEN;
use crate::exit::error_chain;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot stream ended before all data arrived ({received} bytes received, {missing} more announced)")]
    EndedEarly { received: u64, missing: u64 },
    #[error("snapshot stream ended before its checksum ({received} bytes of data received)")]
    NoTrailer { received: u64 },
    #[error("snapshot checksum trailer has {len} bytes, expected 32")]
    BadTrailerLength { len: usize },
    #[error("snapshot checksum mismatch: etcd sent sha256 {sent}, the received data hashes to {computed}")]
    Mismatch { sent: String, computed: String },
    #[error("etcd sent more data after the snapshot checksum")]
    DataAfterTrailer,
    #[error("etcd sent an empty snapshot")]
    Empty,
    #[error("snapshot did not finish within etcd.timeout ({0:?}); raise it for large databases")]
    Overall(Duration),
    #[error("etcd sent nothing for {0:?} (etcd.stall_timeout) in the middle of the snapshot")]
    Stalled(Duration),
    #[error("snapshot stream broke: {0}")]
    Stream(String),
    #[error("cannot write the snapshot file: {0}")]
    Write(String),
}

/// Pure protocol state of one snapshot stream. Feed every message with [`TrailerCheck::accept`]
/// (and write its blob), then call [`TrailerCheck::finish`] at the end of the stream.
#[derive(Clone)]
pub struct TrailerCheck {
    hasher: Sha256,
    data_len: u64,
    last_remaining: Option<u64>,
    state: State,
    file_sha256: Option<[u8; 32]>,
    db_sha256: Option<[u8; 32]>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Data,
    AwaitTrailer,
    Done,
}

impl Default for TrailerCheck {
    fn default() -> Self {
        TrailerCheck {
            hasher: Sha256::new(),
            data_len: 0,
            last_remaining: None,
            state: State::Data,
            file_sha256: None,
            db_sha256: None,
        }
    }
}

impl TrailerCheck {
    pub fn accept(&mut self, blob: &[u8], remaining_bytes: u64) -> Result<(), SnapshotError> {
        match self.state {
            State::Data => {
                self.hasher.update(blob);
                self.data_len += blob.len() as u64;
                self.last_remaining = Some(remaining_bytes);
                if remaining_bytes == 0 {
                    if self.data_len == 0 {
                        return Err(SnapshotError::Empty);
                    }
                    self.state = State::AwaitTrailer;
                }
                Ok(())
            }
            State::AwaitTrailer => {
                if blob.len() as u64 != TRAILER_LEN {
                    return Err(SnapshotError::BadTrailerLength { len: blob.len() });
                }
                let db: [u8; 32] = self.hasher.clone().finalize().into();
                if db[..] != blob[..] {
                    return Err(SnapshotError::Mismatch {
                        sent: hex::encode(blob),
                        computed: hex::encode(db),
                    });
                }
                // sha256 of the whole file (data + trailer), as `sha256sum` prints it.
                let mut whole = self.hasher.clone();
                whole.update(blob);
                self.db_sha256 = Some(db);
                self.file_sha256 = Some(whole.finalize().into());
                self.state = State::Done;
                Ok(())
            }
            State::Done if blob.is_empty() => Ok(()),
            State::Done => Err(SnapshotError::DataAfterTrailer),
        }
    }

    /// Called at the end of the stream. Returns `(db sha256, file sha256, file length)`.
    pub fn finish(&self) -> Result<([u8; 32], [u8; 32], u64), SnapshotError> {
        match self.state {
            State::Data => Err(SnapshotError::EndedEarly {
                received: self.data_len,
                missing: self.last_remaining.unwrap_or(0),
            }),
            State::AwaitTrailer => Err(SnapshotError::NoTrailer {
                received: self.data_len,
            }),
            State::Done => Ok((
                self.db_sha256.expect("set in Done"),
                self.file_sha256.expect("set in Done"),
                self.data_len + TRAILER_LEN,
            )),
        }
    }
}

/// Bounds on one snapshot stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// The whole stream.
    pub overall: Duration,
    /// The wait for any one message.
    pub stall: Duration,
}

/// What a verified stream produced.
#[derive(Debug, Clone)]
pub struct StreamedSnapshot {
    /// Length of the written file, trailer included.
    pub file_len: u64,
    pub file_sha256: [u8; 32],
    /// `SnapshotResponse.version` (etcd ≥ 3.6): the storage version of the snapshot's data,
    /// empty until the cluster version is set, and from etcd 3.5, which does not send it.
    pub version: String,
}

/// `etcdserverpb.SnapshotRequest`: empty.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRequest {}

/// `etcdserverpb.SnapshotResponse` (rpc.proto: header = 1, remaining_bytes = 2, blob = 3,
/// version = 4), decoded with its blob as [`Bytes`]: a slice of tonic's receive buffer, where
/// etcd-client's generated type copies every chunk into a `Vec`. The header is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotChunk {
    #[prost(uint64, tag = "2")]
    remaining_bytes: u64,
    #[prost(bytes = "bytes", tag = "3")]
    blob: Bytes,
    #[prost(string, tag = "4")]
    version: String,
}

const SNAPSHOT_METHOD: &str = "/etcdserverpb.Maintenance/Snapshot";

/// Where the bytes of a snapshot go (the local file, and an upload next to it).
pub trait SnapshotSink {
    /// Takes the next bytes, in order (shared, not copied: a sink that keeps them holds a
    /// reference).
    fn write(&mut self, bytes: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Called once after the last bytes.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Streams a snapshot over `channel` (the connection [`super::dial`] made) into `out`,
/// verifying the trailer. `out` is flushed but not synced; the caller owns durability. On
/// error, what was written must be discarded.
pub async fn stream_snapshot<S: SnapshotSink>(
    channel: &Channel,
    out: &mut S,
    limits: StreamLimits,
) -> Result<StreamedSnapshot, SnapshotError> {
    let deadline = Instant::now() + limits.overall;
    let next_wait = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(SnapshotError::Overall(limits.overall))
        } else {
            Ok(left.min(limits.stall))
        }
    };
    let wait_err = |waited: Duration| {
        if waited < limits.stall {
            SnapshotError::Overall(limits.overall)
        } else {
            SnapshotError::Stalled(limits.stall)
        }
    };

    let wait = next_wait()?;
    let call = async {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        let codec = tonic_prost::ProstCodec::<SnapshotRequest, SnapshotChunk>::default();
        grpc.server_streaming(
            tonic::Request::new(SnapshotRequest {}),
            http::uri::PathAndQuery::from_static(SNAPSHOT_METHOD),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
    };
    let mut stream = tokio::time::timeout(wait, call)
        .await
        .map_err(|_| wait_err(wait))?
        .map_err(|e| SnapshotError::Stream(error_chain(&e)))?;

    let mut check = TrailerCheck::default();
    let mut version = String::new();
    loop {
        let wait = next_wait()?;
        let msg = tokio::time::timeout(wait, stream.message())
            .await
            .map_err(|_| wait_err(wait))?
            .map_err(|e| SnapshotError::Stream(error_chain(&e)))?;
        let Some(msg) = msg else { break };
        check.accept(&msg.blob, msg.remaining_bytes)?;
        if version.is_empty() && !msg.version.is_empty() {
            version = msg.version;
        }
        out.write(msg.blob)
            .await
            .map_err(|e| SnapshotError::Write(e.to_string()))?;
    }
    let (_db_sha256, file_sha256, file_len) = check.finish()?;
    out.flush()
        .await
        .map_err(|e| SnapshotError::Write(e.to_string()))?;
    Ok(StreamedSnapshot {
        file_len,
        file_sha256,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> Vec<u8> {
        Sha256::digest(b).to_vec()
    }

    #[test]
    fn accepts_a_well_formed_stream() {
        let data = vec![7u8; 1024];
        let mut c = TrailerCheck::default();
        c.accept(&data[..600], 424).unwrap();
        c.accept(&data[600..], 0).unwrap();
        c.accept(&sha(&data), 0).unwrap();
        let (db, file, len) = c.finish().unwrap();
        assert_eq!(db.to_vec(), sha(&data));
        let mut whole = data.clone();
        whole.extend(sha(&data));
        assert_eq!(file.to_vec(), sha(&whole));
        assert_eq!(len, 1056);
    }

    #[test]
    fn stream_that_ends_before_data_is_complete() {
        let mut c = TrailerCheck::default();
        c.accept(&[1; 100], 50).unwrap();
        assert_eq!(
            c.finish().unwrap_err(),
            SnapshotError::EndedEarly {
                received: 100,
                missing: 50
            }
        );
    }

    #[test]
    fn stream_that_ends_before_trailer() {
        let mut c = TrailerCheck::default();
        c.accept(&[1; 100], 0).unwrap();
        assert_eq!(
            c.finish().unwrap_err(),
            SnapshotError::NoTrailer { received: 100 }
        );
    }

    #[test]
    fn wrong_trailer() {
        let mut c = TrailerCheck::default();
        c.accept(&[1; 100], 0).unwrap();
        assert!(matches!(
            c.accept(&[0; 32], 0),
            Err(SnapshotError::Mismatch { .. })
        ));
        let mut c = TrailerCheck::default();
        c.accept(&[1; 100], 0).unwrap();
        assert_eq!(
            c.accept(&[0; 31], 0).unwrap_err(),
            SnapshotError::BadTrailerLength { len: 31 }
        );
    }

    #[test]
    fn data_after_trailer_and_empty() {
        let mut c = TrailerCheck::default();
        c.accept(&[1; 10], 0).unwrap();
        c.accept(&sha(&[1; 10]), 0).unwrap();
        assert_eq!(
            c.accept(&[2], 0).unwrap_err(),
            SnapshotError::DataAfterTrailer
        );
        let mut c = TrailerCheck::default();
        assert_eq!(c.accept(&[], 0).unwrap_err(), SnapshotError::Empty);
        assert!(TrailerCheck::default().finish().is_err());
    }
}

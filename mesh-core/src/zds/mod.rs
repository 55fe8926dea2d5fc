//! ZDS, the protocol the istio-cni node agent uses to hand captured pods to ztunnel:
//! Istio's `zds.proto` messages, one per SOCK_SEQPACKET packet, the pod's network
//! namespace passed as a file descriptor alongside `AddWorkload`.
//!
//! This module is the codec both ends share: framing, fd passing, and the checks a
//! receiver must make before trusting a packet (size, decoding, the fd really being a
//! network namespace). The agent's server and ztunnel's client are built on it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use prost::Message;
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};

/// The generated protobuf types (`istio.workload.zds`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
}

pub use pb::{WorkloadRequest, WorkloadResponse, ZdsHello};

/// Where ztunnel finds the agent's socket, as in Istio.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// Largest packet accepted; ZDS messages are a few hundred bytes.
const MAX_PACKET: usize = 64 * 1024;

/// Why a ZDS exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// The socket failed.
    #[error("ZDS socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("ZDS peer closed the connection")]
    Closed,
    /// A packet did not fit the receive buffer.
    #[error("ZDS packet larger than {MAX_PACKET} bytes")]
    Truncated,
    /// A packet is not the protobuf message expected.
    #[error("malformed ZDS {what}: {source}")]
    Decode {
        /// Which message was expected.
        what: &'static str,
        /// Why it did not decode.
        source: prost::DecodeError,
    },
    /// A packet decoded but says nothing usable (no payload, wrong version, no uid).
    #[error("invalid ZDS message: {0}")]
    Invalid(String),
    /// An `AddWorkload` came without a namespace fd, or with something else.
    #[error("AddWorkload for {uid}: {reason}")]
    BadNetns {
        /// The pod.
        uid: String,
        /// What was wrong with the fd.
        reason: String,
    },
    /// The peer answered with an error Ack.
    #[error("ZDS peer refused: {0}")]
    Refused(String),
}

/// Sends `message`, with `fd` attached as SCM_RIGHTS when given.
pub async fn send<M: Message>(
    socket: &UnixSeqpacket,
    message: &M,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), ZdsError> {
    let bytes = message.encode_to_vec();
    match fd {
        None => socket.send(&bytes).await?,
        Some(fd) => {
            let mut space = [0u8; 64];
            let fds = [fd];
            let mut ancillary = AncillaryMessageWriter::new(&mut space);
            ancillary.add_fds(&fds).map_err(|_| {
                ZdsError::Invalid("no room for the fd in the control message".into())
            })?;
            socket.send_with_ancillary(&bytes, &mut ancillary).await?
        }
    };
    Ok(())
}

/// Receives one message and the fds that came with it.
pub async fn recv<M: Message + Default>(
    socket: &UnixSeqpacket,
    what: &'static str,
) -> Result<(M, Vec<OwnedFd>), ZdsError> {
    let mut buffer = vec![0u8; MAX_PACKET];
    let mut space = [0u8; 256];
    let (info, ancillary) = socket.recv_with_ancillary(&mut buffer, &mut space).await?;
    let mut fds = Vec::new();
    for message in ancillary.into_messages() {
        if let OwnedAncillaryMessage::FileDescriptors(received) = message {
            fds.extend(received);
        }
    }
    if info.truncated() {
        return Err(ZdsError::Truncated);
    }
    if info.bytes_read() == 0 {
        return Err(ZdsError::Closed);
    }
    let message = M::decode(&buffer[..info.bytes_read()])
        .map_err(|source| ZdsError::Decode { what, source })?;
    Ok((message, fds))
}

/// A request as the receiver acts on it, validated.
#[derive(Debug)]
pub enum Request {
    /// Capture this pod; its network namespace.
    Add {
        /// Pod UID.
        uid: String,
        /// Name, namespace, service account, when the agent sent them.
        info: Option<pb::WorkloadInfo>,
        /// The pod's network namespace.
        netns: OwnedFd,
    },
    /// Keep this pod (snapshot only; no fd).
    Keep {
        /// Pod UID.
        uid: String,
    },
    /// Stop capturing this pod.
    Del {
        /// Pod UID.
        uid: String,
    },
    /// The snapshot is complete.
    SnapshotSent,
}

/// Checks a received `WorkloadRequest` and its fds: every uid present, exactly one fd
/// with `AddWorkload` and none otherwise, and that fd a network namespace.
pub fn validate(request: WorkloadRequest, mut fds: Vec<OwnedFd>) -> Result<Request, ZdsError> {
    use pb::workload_request::Payload;
    let uid_of = |uid: String| {
        if uid.is_empty() {
            Err(ZdsError::Invalid("empty uid".into()))
        } else {
            Ok(uid)
        }
    };
    let no_fds = |fds: &Vec<OwnedFd>| {
        if fds.is_empty() {
            Ok(())
        } else {
            Err(ZdsError::Invalid(format!("{} unexpected fds", fds.len())))
        }
    };
    match request.payload {
        None => Err(ZdsError::Invalid(
            "WorkloadRequest without a payload".into(),
        )),
        Some(Payload::Add(add)) => {
            let uid = uid_of(add.uid)?;
            if fds.len() != 1 {
                return Err(ZdsError::BadNetns {
                    uid,
                    reason: format!("expected one fd, got {}", fds.len()),
                });
            }
            let netns = fds.remove(0);
            ensure_netns(netns.as_fd()).map_err(|reason| ZdsError::BadNetns {
                uid: uid.clone(),
                reason,
            })?;
            Ok(Request::Add {
                uid,
                info: add.workload_info,
                netns,
            })
        }
        Some(Payload::Keep(keep)) => {
            no_fds(&fds)?;
            Ok(Request::Keep {
                uid: uid_of(keep.uid)?,
            })
        }
        Some(Payload::Del(del)) => {
            no_fds(&fds)?;
            Ok(Request::Del {
                uid: uid_of(del.uid)?,
            })
        }
        Some(Payload::SnapshotSent(_)) => {
            no_fds(&fds)?;
            Ok(Request::SnapshotSent)
        }
    }
}

/// An fd is a network namespace if a thread can enter it as one.
fn ensure_netns(fd: BorrowedFd<'_>) -> Result<(), String> {
    crate::netns::run_in(&fd, || ()).map_err(|err| format!("not a network namespace ({err})"))
}

/// The Ack for a handled request: empty error on success.
pub fn ack(result: Result<(), String>) -> WorkloadResponse {
    let error = result.err().unwrap_or_default();
    WorkloadResponse {
        payload: Some(pb::workload_response::Payload::Ack(pb::Ack { error })),
    }
}

/// Reads an Ack: `Ok` if it reports success.
pub fn check_ack(response: WorkloadResponse) -> Result<(), ZdsError> {
    match response.payload {
        Some(pb::workload_response::Payload::Ack(pb::Ack { error })) if error.is_empty() => Ok(()),
        Some(pb::workload_response::Payload::Ack(pb::Ack { error })) => {
            Err(ZdsError::Refused(error))
        }
        None => Err(ZdsError::Invalid(
            "WorkloadResponse without a payload".into(),
        )),
    }
}

/// Builds a request of each kind.
pub mod requests {
    use super::WorkloadRequest;
    use super::pb::{self, workload_request::Payload};

    /// `AddWorkload` (send the pod's netns fd with it).
    pub fn add(uid: &str, info: Option<pb::WorkloadInfo>) -> WorkloadRequest {
        let add = pb::AddWorkload {
            uid: uid.into(),
            workload_info: info,
            windows_namespace: String::new(),
        };
        WorkloadRequest {
            payload: Some(Payload::Add(add)),
        }
    }

    /// `KeepWorkload`.
    pub fn keep(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Keep(pb::KeepWorkload { uid: uid.into() })),
        }
    }

    /// `DelWorkload`.
    pub fn del(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Del(pb::DelWorkload { uid: uid.into() })),
        }
    }

    /// `SnapshotSent`.
    pub fn snapshot_sent() -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::SnapshotSent(pb::SnapshotSent {})),
        }
    }
}

/// The hello ztunnel sends first.
pub fn hello() -> ZdsHello {
    ZdsHello {
        version: pb::Version::V1 as i32,
    }
}

#[cfg(test)]
mod tests;

//! The streaming replication connection to PostgreSQL.
//!
//! [`ReplicationClient`] connects with `replication=database`, authenticates
//! and runs replication commands such as IDENTIFY_SYSTEM. Its
//! [`ReplicationClient::start_logical_replication`] turns it into a
//! [`ReplicationStream`], which yields XLogData and keepalives
//! ([`ReplicationMessage`]) and sends standby status updates
//! ([`StandbyStatus`]). The XLogData payloads are pgoutput messages for the
//! `pgoutput` module to decode. See PostgreSQL's "Streaming Replication
//! Protocol" documentation (protocol-replication.html).

mod auth;
mod codec;
mod connection;
mod error;
mod lsn;
mod protocol;
mod socket;
mod stream;

pub use connection::{ReplicationClient, SystemIdentity};
pub use error::ReplicationError;
pub use lsn::{Lsn, ParseLsnError};
pub use protocol::{
    encode_standby_status, parse_copy_data, postgres_epoch_micros, KeepaliveBody, ProtocolError,
    ReplicationMessage, StandbyStatus, XLogDataBody,
};
pub use stream::ReplicationStream;

//! Generated types of the `locsvc.v1` gRPC API, plus the encoded file
//! descriptor set that the server publishes through gRPC reflection.

/// `locsvc.v1`: location (registrar), cluster administration and subscriber
/// credential services.
pub mod v1 {
    tonic::include_proto!("locsvc.v1");
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("locsvc_descriptor");

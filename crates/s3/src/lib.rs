//! # ferry-s3
//!
//! ferry's store on any S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage, R2): the
//! [`ferry_store::Store`] trait, so any number of `ferry serve` processes pointed at one bucket
//! serve the same uploads.
//!
//! - [`S3Config`] says which bucket, under which prefix, how to reach it; [`S3Credentials`] come
//!   from the environment as the AWS tools read them.
//! - [`S3Store`] is the store. Multipart uploads are S3 multipart uploads, and clients PUT parts
//!   straight to presigned `UploadPart` URLs (bound to their length and `Content-MD5`). Objects
//!   are plain objects at `PREFIX/KEY`. Sessions, events and secrets are small records under
//!   `PREFIX/.ferry/records/`, written with conditional puts.
//! - [`xml`] reads S3's answers; it is pure and fuzzed.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let credentials = ferry_s3::S3Credentials::from_environment()?;
//! let config = ferry_s3::S3Config::from_url("s3://my-bucket/ferry", "eu-west-1".into(), credentials)?;
//! let store = ferry_s3::S3Store::new(config)?;
//! store.check().await?; // the bucket answers and the credentials are accepted
//! # Ok(()) }
//! ```
//!
//! This crate must not know about sessions, HTTP routes or clients: it stores what it is given.
//! Built without its default `store` feature it is only [`xml`], for fuzzing.

pub mod xml;

#[cfg(feature = "store")]
mod config;
#[cfg(feature = "store")]
mod credentials;
#[cfg(feature = "store")]
mod multipart;
#[cfg(feature = "store")]
mod signing;
#[cfg(feature = "store")]
mod store;

#[cfg(feature = "store")]
pub use config::{S3_LIMITS, S3Config};
#[cfg(feature = "store")]
pub use credentials::S3Credentials;
#[cfg(feature = "store")]
pub use store::S3Store;

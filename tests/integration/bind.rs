//! The BIND 9 primary the publishing tests start: the kit's
//! [`LocalBind`] on a free loopback port, for zone [`ZONE`].

use anyhow::Result;
pub use highlander::local_cluster::bind::{KEY_NAME, LocalBind as Bind, Placement};

/// The zone the primary serves.
pub const ZONE: &str = "example.test.";

/// Starts BIND for [`ZONE`] with an hmac-sha256 key.
pub fn start() -> Result<Bind> {
    start_with("hmac-sha256")
}

/// Starts BIND for [`ZONE`] with a key of `algorithm`.
pub fn start_with(algorithm: &'static str) -> Result<Bind> {
    Ok(Bind::start(ZONE, algorithm, Placement::Loopback)?)
}

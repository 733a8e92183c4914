//! The probe tests on stub targets: this binary defines its own `SSL_read`, `SSL_write`,
//! `SSL_get_error`, ... (`stub_probes`), runs a copy of itself as the target, and checks the
//! exact records the real probes make of each call. It is a binary of its own because those
//! definitions would take the place of libssl's in any test that runs OpenSSL in-process
//! (the TLS servers of tests/it), as an executable's symbols come first.

#[path = "../it/common/mod.rs"]
mod common;
#[path = "../it/schema/mod.rs"]
mod schema;

mod stub_probes;

//! The privileged integration tests, as one test binary (one link, one process start)
//! with a module per area. Each module runs the real tls-probe binary, or real probes, on
//! real processes; `cargo xtask test` runs them one at a time (`--test-threads=1`), since
//! each attaches probes. `common` holds the shared helpers, `schema` the NDJSON contract.

mod common;
mod schema;

mod auto_mode;
mod callsite;
mod concurrent_once;
mod demo_recap;
mod deploy;
mod discovery;
mod dist;
mod export;
mod faults;
mod findings;
mod fuzz_corpus;
mod handshakes;
mod lifecycle;
mod memory_bio;
mod metrics;
mod namespace;
mod nginx_handshakes;
mod node;
mod one_shot;
mod openssl11;
mod peers;
mod process_tree;
mod real_peers;
mod retry_churn;
mod scenarios;
mod tui_e2e;
mod watch;

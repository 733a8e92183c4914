//! tls-probe's kernel side: uprobes on libssl and syscall tracepoints for epoll and socket I/O.
//!
//! Programs are thin: each filters on the target set first, does its bookkeeping in
//! per-thread maps, and writes one `tls_probe_common` record to the ring buffer. Nothing
//! panics; a full ring buffer bumps a counter that userspace reports.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod asyncjob;
#[cfg(target_arch = "bpf")]
mod bio;
#[cfg(target_arch = "bpf")]
mod crypto;
#[cfg(target_arch = "bpf")]
mod epoll;
#[cfg(target_arch = "bpf")]
mod errors;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod peer;
#[cfg(target_arch = "bpf")]
mod sockio;
#[cfg(target_arch = "bpf")]
mod ssl;
#[cfg(target_arch = "bpf")]
mod stack;
#[cfg(target_arch = "bpf")]
mod state;
#[cfg(target_arch = "bpf")]
mod twin;
#[cfg(target_arch = "bpf")]
mod util;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The wire ABI this object speaks: the agent reads it from the object before loading and
/// refuses an object built against other record layouts (`tls_probe_common::WIRE_VERSION`).
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "tls_probe_wire")]
#[unsafe(no_mangle)]
#[used]
static TLS_PROBE_WIRE_VERSION: u32 = tls_probe_common::WIRE_VERSION;

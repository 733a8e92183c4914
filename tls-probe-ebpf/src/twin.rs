//! Every uprobe program twice: in a `uprobe.multi` section, attached with one uprobe_multi
//! link to all its functions of a library (kernel 6.6+; unregistered in one batch), and in
//! a plain `uprobe` section, attached one perf-event link per function where uprobe_multi
//! is missing. Both count the hit and run the same code; the agent loads one of the two.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_attach_cookie};

/// Which function this hit is in (`tls_probe_common::cookie`), as the agent set it per
/// attach point; 0 when none was set.
#[inline(always)]
pub fn attach_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the program's own run context.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// `twin_uprobe!(multi_name, single_name => body)`: two entry programs calling `body(&ctx)`.
macro_rules! twin_uprobe {
    ($multi:ident, $single:ident => $body:path) => {
        #[aya_ebpf::macros::uprobe(multi)]
        pub fn $multi(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            $crate::util::bump(tls_probe_common::counter::UPROBE_HITS);
            $body(&ctx)
        }

        #[aya_ebpf::macros::uprobe]
        pub fn $single(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            $crate::util::bump(tls_probe_common::counter::UPROBE_HITS);
            $body(&ctx)
        }
    };
}

/// The same for return programs.
macro_rules! twin_uretprobe {
    ($multi:ident, $single:ident => $body:path) => {
        #[aya_ebpf::macros::uretprobe(multi)]
        pub fn $multi(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $crate::util::bump(tls_probe_common::counter::UPROBE_HITS);
            $body(&ctx)
        }

        #[aya_ebpf::macros::uretprobe]
        pub fn $single(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $crate::util::bump(tls_probe_common::counter::UPROBE_HITS);
            $body(&ctx)
        }
    };
}

pub(crate) use twin_uprobe;
pub(crate) use twin_uretprobe;

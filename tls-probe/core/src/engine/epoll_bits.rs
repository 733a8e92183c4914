//! EPOLL* bits by name, as the kernel's uapi defines them (identical on every Linux arch).

pub const EPOLLIN: u32 = 0x001;
pub const EPOLLPRI: u32 = 0x002;
pub const EPOLLOUT: u32 = 0x004;
pub const EPOLLERR: u32 = 0x008;
pub const EPOLLHUP: u32 = 0x010;
pub const EPOLLRDNORM: u32 = 0x040;
pub const EPOLLRDBAND: u32 = 0x080;
pub const EPOLLWRNORM: u32 = 0x100;
pub const EPOLLWRBAND: u32 = 0x200;
pub const EPOLLMSG: u32 = 0x400;
pub const EPOLLRDHUP: u32 = 0x2000;
pub const EPOLLEXCLUSIVE: u32 = 1 << 28;
pub const EPOLLWAKEUP: u32 = 1 << 29;
pub const EPOLLONESHOT: u32 = 1 << 30;
pub const EPOLLET: u32 = 1 << 31;

const NAMES: [(u32, &str); 15] = [
    (EPOLLIN, "EPOLLIN"),
    (EPOLLPRI, "EPOLLPRI"),
    (EPOLLOUT, "EPOLLOUT"),
    (EPOLLERR, "EPOLLERR"),
    (EPOLLHUP, "EPOLLHUP"),
    (EPOLLRDNORM, "EPOLLRDNORM"),
    (EPOLLRDBAND, "EPOLLRDBAND"),
    (EPOLLWRNORM, "EPOLLWRNORM"),
    (EPOLLWRBAND, "EPOLLWRBAND"),
    (EPOLLMSG, "EPOLLMSG"),
    (EPOLLRDHUP, "EPOLLRDHUP"),
    (EPOLLEXCLUSIVE, "EPOLLEXCLUSIVE"),
    (EPOLLWAKEUP, "EPOLLWAKEUP"),
    (EPOLLONESHOT, "EPOLLONESHOT"),
    (EPOLLET, "EPOLLET"),
];

/// `EPOLLIN|EPOLLOUT`; unknown bits as hex; `0` for an empty mask.
pub fn names(mask: u32) -> String {
    let mut s = String::new();
    let mut rest = mask;
    for (bit, name) in NAMES {
        if mask & bit != 0 {
            if !s.is_empty() {
                s.push('|');
            }
            s.push_str(name);
            rest &= !bit;
        }
    }
    if rest != 0 || s.is_empty() {
        if !s.is_empty() {
            s.push('|');
        }
        s.push_str(&format!("{rest:#x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decode() {
        assert_eq!(names(EPOLLIN | EPOLLOUT), "EPOLLIN|EPOLLOUT");
        assert_eq!(
            names(EPOLLIN | EPOLLRDHUP | EPOLLET),
            "EPOLLIN|EPOLLRDHUP|EPOLLET"
        );
        assert_eq!(names(0), "0x0");
        assert_eq!(names(EPOLLOUT | 0x4000), "EPOLLOUT|0x4000");
    }
}

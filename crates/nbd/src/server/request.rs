//! Validation of one transmission request, as a pure function: which command it is, or which
//! error answers it, or whether the stream can no longer be trusted.

use crate::proto::{Request, cflag, cmd, err, tflag};

/// What the connection agreed on and what the export allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub min_block: u32,
    /// Largest READ or WRITE payload.
    pub max_payload: u32,
    /// Transmission flags as sent to this client.
    pub flags: u16,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A request that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Read {
        off: u64,
        len: u32,
        df: bool,
    },
    Write {
        off: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        off: u64,
        len: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        off: u64,
        len: u32,
        fua: bool,
        unmap: bool,
        fast: bool,
    },
    BlockStatus {
        off: u64,
        len: u32,
        one: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Run(Cmd),
    /// Answer with `err`; first read and drop `skip` payload bytes to stay in sync.
    Fail {
        err: u32,
        skip: u32,
    },
    /// NBD_CMD_DISC: finish in-flight requests, then close.
    Disconnect,
    /// The stream cannot be trusted or resynchronised (e.g. an oversized WRITE payload).
    Hangup(&'static str),
}

/// Check `r` against `l`. Every error for a WRITE skips its payload, so one bad request does not
/// desynchronise the stream; only a payload larger than we will ever buffer ends the connection.
pub fn check(r: &Request, l: &Limits) -> Verdict {
    let is_write = r.typ == cmd::WRITE;
    if is_write && r.len > l.max_payload {
        return Verdict::Hangup("write payload larger than the maximum block size");
    }
    let skip = if is_write { r.len } else { 0 };
    let fail = |err| Verdict::Fail { err, skip };
    let allowed_flags = match r.typ {
        cmd::READ if l.structured => cflag::FUA | cflag::DF,
        cmd::WRITE_ZEROES if l.flags & tflag::SEND_FAST_ZERO != 0 => {
            cflag::FUA | cflag::NO_HOLE | cflag::FAST_ZERO
        }
        cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE,
        cmd::BLOCK_STATUS => cflag::FUA | cflag::REQ_ONE,
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE | cmd::DISC => cflag::FUA,
        _ => return fail(err::EINVAL), // unknown command
    };
    if r.flags & !allowed_flags != 0 {
        return fail(err::EINVAL);
    }
    let fua = r.flags & cflag::FUA != 0;
    let (off, len) = (r.offset, r.len);
    let ro = l.flags & tflag::READ_ONLY != 0;
    let in_range = off.checked_add(len as u64).is_some_and(|end| end <= l.size);
    let aligned = off % l.min_block as u64 == 0 && len % l.min_block == 0;
    let writes = matches!(r.typ, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    match r.typ {
        cmd::DISC => return Verdict::Disconnect,
        cmd::FLUSH => return Verdict::Run(Cmd::Flush),
        cmd::TRIM if l.flags & tflag::SEND_TRIM == 0 => return fail(err::EINVAL),
        cmd::WRITE_ZEROES if l.flags & tflag::SEND_WRITE_ZEROES == 0 => return fail(err::EINVAL),
        cmd::CACHE if l.flags & tflag::SEND_CACHE == 0 => return fail(err::EINVAL),
        cmd::BLOCK_STATUS if !l.base_allocation => return fail(err::EINVAL),
        _ => {}
    }
    if writes && ro {
        return fail(err::EPERM);
    }
    if len == 0 {
        return fail(err::EINVAL);
    }
    if !in_range {
        // Spec: ENOSPC for writes past the end, EINVAL otherwise.
        return fail(if writes { err::ENOSPC } else { err::EINVAL });
    }
    if r.typ == cmd::READ && len > l.max_payload {
        return fail(err::EINVAL);
    }
    if matches!(
        r.typ,
        cmd::READ | cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES
    ) && !aligned
    {
        return fail(err::EINVAL);
    }
    Verdict::Run(match r.typ {
        cmd::READ => Cmd::Read {
            off,
            len,
            df: r.flags & cflag::DF != 0,
        },
        cmd::WRITE => Cmd::Write { off, len, fua },
        cmd::TRIM => Cmd::Trim { off, len, fua },
        cmd::CACHE => Cmd::Cache,
        cmd::WRITE_ZEROES => Cmd::WriteZeroes {
            off,
            len,
            fua,
            unmap: r.flags & cflag::NO_HOLE == 0,
            fast: r.flags & cflag::FAST_ZERO != 0,
        },
        _ => Cmd::BlockStatus {
            off,
            len,
            one: r.flags & cflag::REQ_ONE != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            size: 1 << 20,
            min_block: 512,
            max_payload: 1 << 16,
            flags: tflag::HAS_FLAGS
                | tflag::SEND_FLUSH
                | tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::SEND_CACHE,
            structured: true,
            base_allocation: false,
        }
    }
    fn req(typ: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            typ,
            handle: 1,
            offset,
            len,
        }
    }

    #[test]
    fn good_requests_run() {
        let l = limits();
        assert_eq!(
            check(&req(cmd::WRITE, cflag::FUA, 512, 1024), &l),
            Verdict::Run(Cmd::Write {
                off: 512,
                len: 1024,
                fua: true
            })
        );
        assert_eq!(
            check(&req(cmd::WRITE_ZEROES, cflag::NO_HOLE, 0, 4096), &l),
            Verdict::Run(Cmd::WriteZeroes {
                off: 0,
                len: 4096,
                fua: false,
                unmap: false,
                fast: false
            })
        );
        assert_eq!(check(&req(cmd::DISC, 0, 0, 0), &l), Verdict::Disconnect);
    }

    #[test]
    fn bad_requests_get_the_spec_errors() {
        let mut l = limits();
        let f = |err, skip| Verdict::Fail { err, skip };
        assert_eq!(check(&req(99, 0, 0, 512), &l), f(err::EINVAL, 0));
        assert_eq!(
            check(&req(cmd::READ, 0, 1 << 20, 512), &l),
            f(err::EINVAL, 0)
        );
        assert_eq!(
            check(&req(cmd::WRITE, 0, 1 << 20, 512), &l),
            f(err::ENOSPC, 512)
        );
        assert_eq!(
            check(&req(cmd::WRITE, 0, u64::MAX - 10, 512), &l),
            f(err::ENOSPC, 512)
        );
        assert_eq!(check(&req(cmd::READ, 0, 1, 512), &l), f(err::EINVAL, 0));
        assert_eq!(check(&req(cmd::READ, 0, 0, 1 << 17), &l), f(err::EINVAL, 0));
        assert_eq!(
            check(&req(cmd::READ, cflag::REQ_ONE, 0, 512), &l),
            f(err::EINVAL, 0)
        );
        assert_eq!(
            check(&req(cmd::BLOCK_STATUS, 0, 0, 512), &l),
            f(err::EINVAL, 0)
        );
        assert!(matches!(
            check(&req(cmd::WRITE, 0, 0, 1 << 17), &l),
            Verdict::Hangup(_)
        ));
        l.flags |= tflag::READ_ONLY;
        assert_eq!(check(&req(cmd::WRITE, 0, 0, 512), &l), f(err::EPERM, 512));
        assert_eq!(check(&req(cmd::TRIM, 0, 0, 512), &l), f(err::EPERM, 0));
    }
}

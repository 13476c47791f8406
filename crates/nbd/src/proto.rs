//! The NBD wire protocol (fixed newstyle negotiation, simple and structured replies), as pure
//! encode/decode functions. Numbers follow the NBD spec (NetworkBlockDevice/nbd doc/proto.md).
//!
//! Every parser takes a byte slice, checks every length against the bytes actually present and
//! against the limits below, and returns an error instead of panicking: these functions see
//! hostile input first (and are what the fuzz target drives).

use std::fmt;

/// "NBDMAGIC": first 8 bytes of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle greeting, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server greeting).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (reply to the greeting).
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (per export).
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types; errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
    pub fn is_error(t: u32) -> bool {
        t & (1 << 31) != 0
    }
}

/// NBD_INFO_* items inside NBD_REP_INFO.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
    pub fn is_error(t: u16) -> bool {
        t & (1 << 15) != 0
    }
}

/// `base:allocation` status flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Error values allowed on the wire (they equal Linux errno numbers).
pub mod err {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// Largest option payload we accept. Strings in the protocol are at most 4096 bytes; a meta
/// context request carries a few of them.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest string (export name, query, description) we accept or send.
pub const MAX_STRING: usize = 4096;
/// Most queries in one meta context option (bounds the work per option).
pub const MAX_QUERIES: usize = 128;

pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_REPLY_LEN: usize = 20;
pub const OPTION_HEADER_LEN: usize = 16;
pub const OPT_REPLY_HEADER_LEN: usize = 20;

/// A parse failure: the message says what was wrong, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for ParseError {}

type Res<T> = Result<T, ParseError>;

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.0.len() < n {
            return Err(ParseError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A u32-length-prefixed string of at most MAX_STRING bytes.
    fn string32(&mut self) -> Res<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(ParseError("string too long"));
        }
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}

// ---------------------------------------------------------------- handshake

/// The server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(flags: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(18);
    put64(&mut v, NBD_MAGIC);
    put64(&mut v, IHAVEOPT);
    put16(&mut v, flags);
    v
}

/// Parse the 18-byte greeting; returns the handshake flags.
pub fn parse_greeting(b: &[u8]) -> Res<u16> {
    let mut r = Rd(b);
    if r.u64()? != NBD_MAGIC {
        return Err(ParseError("bad NBDMAGIC"));
    }
    if r.u64()? != IHAVEOPT {
        return Err(ParseError("not a newstyle server"));
    }
    r.u16()
}

/// A client option header (the payload of `len` bytes follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8]) -> Res<OptionHeader> {
    let mut r = Rd(b);
    if r.u64()? != IHAVEOPT {
        return Err(ParseError("bad option magic"));
    }
    Ok(OptionHeader {
        option: r.u32()?,
        len: r.u32()?,
    })
}

/// A whole option (header and payload), as a client sends it.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    put64(&mut v, IHAVEOPT);
    put32(&mut v, option);
    put32(&mut v, data.len() as u32);
    v.extend_from_slice(data);
    v
}

/// An option reply header (the payload of `len` bytes follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReplyHeader {
    pub option: u32,
    pub typ: u32,
    pub len: u32,
}

pub fn encode_opt_reply(option: u32, typ: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    put64(&mut v, OPT_REPLY_MAGIC);
    put32(&mut v, option);
    put32(&mut v, typ);
    put32(&mut v, data.len() as u32);
    v.extend_from_slice(data);
    v
}

pub fn parse_opt_reply_header(b: &[u8]) -> Res<OptReplyHeader> {
    let mut r = Rd(b);
    if r.u64()? != OPT_REPLY_MAGIC {
        return Err(ParseError("bad option reply magic"));
    }
    Ok(OptReplyHeader {
        option: r.u32()?,
        typ: r.u32()?,
        len: r.u32()?,
    })
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO: export name and the info items asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    pub infos: Vec<u16>,
}

pub fn parse_info_request(b: &[u8]) -> Res<InfoRequest<'_>> {
    let mut r = Rd(b);
    let name = r.string32()?;
    let n = r.u16()? as usize;
    // Each item is 2 bytes, so the count is bounded by the (bounded) payload.
    if r.0.len() != n * 2 {
        return Err(ParseError("info request count mismatch"));
    }
    let infos = (0..n).map(|_| r.u16()).collect::<Res<Vec<_>>>()?;
    Ok(InfoRequest { name, infos })
}

pub fn encode_info_request(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    put32(&mut v, name.len() as u32);
    v.extend_from_slice(name);
    put16(&mut v, infos.len() as u16);
    for i in infos {
        put16(&mut v, *i);
    }
    v
}

/// Payload of NBD_OPT_{LIST,SET}_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a [u8],
    pub queries: Vec<&'a [u8]>,
}

pub fn parse_meta_request(b: &[u8]) -> Res<MetaRequest<'_>> {
    let mut r = Rd(b);
    let name = r.string32()?;
    let n = r.u32()? as usize;
    if n > MAX_QUERIES {
        return Err(ParseError("too many queries"));
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(r.string32()?);
    }
    if !r.is_empty() {
        return Err(ParseError("trailing bytes in meta context request"));
    }
    Ok(MetaRequest { name, queries })
}

pub fn encode_meta_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    put32(&mut v, name.len() as u32);
    v.extend_from_slice(name);
    put32(&mut v, queries.len() as u32);
    for q in queries {
        put32(&mut v, q.len() as u32);
        v.extend_from_slice(q);
    }
    v
}

/// NBD_INFO_EXPORT payload.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    put16(&mut v, info::EXPORT);
    put64(&mut v, size);
    put16(&mut v, flags);
    v
}

/// NBD_INFO_BLOCK_SIZE payload.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    put16(&mut v, info::BLOCK_SIZE);
    put32(&mut v, min);
    put32(&mut v, preferred);
    put32(&mut v, max);
    v
}

/// NBD_INFO_NAME / NBD_INFO_DESCRIPTION payload.
pub fn encode_info_string(which: u16, s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.len());
    put16(&mut v, which);
    v.extend_from_slice(&s[..s.len().min(MAX_STRING)]);
    v
}

/// What an NBD_REP_INFO payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    BlockSize { min: u32, preferred: u32, max: u32 },
    Other(u16),
}

pub fn parse_info(b: &[u8]) -> Res<Info> {
    let mut r = Rd(b);
    Ok(match r.u16()? {
        info::EXPORT => Info::Export {
            size: r.u64()?,
            flags: r.u16()?,
        },
        info::BLOCK_SIZE => Info::BlockSize {
            min: r.u32()?,
            preferred: r.u32()?,
            max: r.u32()?,
        },
        t => Info::Other(t),
    })
}

/// NBD_REP_SERVER payload (for NBD_OPT_LIST).
pub fn encode_rep_server(name: &[u8], description: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put32(&mut v, name.len() as u32);
    v.extend_from_slice(name);
    v.extend_from_slice(description);
    v
}

/// NBD_REP_META_CONTEXT payload.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    put32(&mut v, id);
    v.extend_from_slice(name.as_bytes());
    v
}

pub fn parse_rep_meta_context(b: &[u8]) -> Res<(u32, &[u8])> {
    let mut r = Rd(b);
    let id = r.u32()?;
    let name = r.rest();
    if name.len() > MAX_STRING {
        return Err(ParseError("context name too long"));
    }
    Ok((id, name))
}

/// Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES was agreed.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(134);
    put64(&mut v, size);
    put16(&mut v, flags);
    if !no_zeroes {
        v.resize(v.len() + 124, 0);
    }
    v
}

// ---------------------------------------------------------------- transmission

/// A request header (for WRITE, `len` payload bytes follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub typ: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn parse_request(b: &[u8]) -> Res<Request> {
    let mut r = Rd(b);
    if r.u32()? != REQUEST_MAGIC {
        return Err(ParseError("bad request magic"));
    }
    Ok(Request {
        flags: r.u16()?,
        typ: r.u16()?,
        handle: r.u64()?,
        offset: r.u64()?,
        len: r.u32()?,
    })
}

pub fn encode_request(q: &Request) -> [u8; REQUEST_LEN] {
    let mut v = Vec::with_capacity(REQUEST_LEN);
    put32(&mut v, REQUEST_MAGIC);
    put16(&mut v, q.flags);
    put16(&mut v, q.typ);
    put64(&mut v, q.handle);
    put64(&mut v, q.offset);
    put32(&mut v, q.len);
    v.try_into().unwrap()
}

pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut v = Vec::with_capacity(SIMPLE_REPLY_LEN);
    put32(&mut v, SIMPLE_REPLY_MAGIC);
    put32(&mut v, error);
    put64(&mut v, handle);
    v.try_into().unwrap()
}

/// Header of a structured reply chunk; `len` payload bytes follow.
pub fn encode_chunk_header(flags: u16, typ: u16, handle: u64, len: u32) -> [u8; 20] {
    let mut v = Vec::with_capacity(STRUCTURED_REPLY_LEN);
    put32(&mut v, STRUCTURED_REPLY_MAGIC);
    put16(&mut v, flags);
    put16(&mut v, typ);
    put64(&mut v, handle);
    put32(&mut v, len);
    v.try_into().unwrap()
}

/// A reply header as the client sees it: the first 4 bytes decide the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        handle: u64,
    },
    Chunk {
        flags: u16,
        typ: u16,
        handle: u64,
        len: u32,
    },
}

/// Parse a simple reply from 16 bytes, or a chunk header from 20. `b` must hold at least 16;
/// returns `Err` for an unknown magic and `Ok(None)` when a chunk header needs all 20 bytes.
pub fn parse_reply_header(b: &[u8]) -> Res<Option<ReplyHeader>> {
    let mut r = Rd(b);
    match r.u32()? {
        SIMPLE_REPLY_MAGIC => Ok(Some(ReplyHeader::Simple {
            error: r.u32()?,
            handle: r.u64()?,
        })),
        STRUCTURED_REPLY_MAGIC => {
            if b.len() < STRUCTURED_REPLY_LEN {
                return Ok(None);
            }
            Ok(Some(ReplyHeader::Chunk {
                flags: r.u16()?,
                typ: r.u16()?,
                handle: r.u64()?,
                len: r.u32()?,
            }))
        }
        _ => Err(ParseError("bad reply magic")),
    }
}

/// Payload of an error chunk: error, message (and offset for ERROR_OFFSET).
pub fn encode_error_payload(error: u32, msg: &str) -> Vec<u8> {
    let m = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    let mut v = Vec::with_capacity(6 + m.len());
    put32(&mut v, error);
    put16(&mut v, m.len() as u16);
    v.extend_from_slice(m);
    v
}

/// Error value of an error chunk payload (message and offset are only for humans here).
pub fn parse_error_payload(b: &[u8]) -> Res<u32> {
    let mut r = Rd(b);
    let e = r.u32()?;
    let n = r.u16()? as usize;
    r.take(n)?;
    if e == 0 {
        return Err(ParseError("error chunk with error 0"));
    }
    Ok(e)
}

/// One block status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub len: u32,
    pub flags: u32,
}

pub fn encode_block_status(context: u32, d: &[Descriptor]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 8 * d.len());
    put32(&mut v, context);
    for x in d {
        put32(&mut v, x.len);
        put32(&mut v, x.flags);
    }
    v
}

pub fn parse_block_status(b: &[u8]) -> Res<(u32, Vec<Descriptor>)> {
    let mut r = Rd(b);
    let ctx = r.u32()?;
    if r.0.is_empty() || r.0.len() % 8 != 0 {
        return Err(ParseError("bad block status length"));
    }
    let mut d = Vec::with_capacity(r.0.len() / 8);
    while !r.is_empty() {
        d.push(Descriptor {
            len: r.u32()?,
            flags: r.u32()?,
        });
    }
    Ok((ctx, d))
}

/// The 8-byte offset that starts OFFSET_DATA / OFFSET_HOLE payloads, and the hole length.
pub fn parse_offset(b: &[u8]) -> Res<u64> {
    Rd(b).u64()
}
pub fn parse_hole(b: &[u8]) -> Res<(u64, u32)> {
    let mut r = Rd(b);
    let off = r.u64()?;
    let n = r.u32()?;
    if !r.is_empty() || n == 0 {
        return Err(ParseError("bad hole chunk"));
    }
    Ok((off, n))
}

/// Map an OS error to the wire's restricted error set (spec: EDQUOT/EFBIG become ENOSPC).
pub fn errno_to_wire(e: &std::io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => err::EPERM,
        Some(libc::ENOMEM) => err::ENOMEM,
        Some(libc::EINVAL) => err::EINVAL,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => err::ENOSPC,
        Some(libc::EOVERFLOW) => err::EOVERFLOW,
        Some(libc::EOPNOTSUPP) => err::ENOTSUP,
        Some(libc::ESHUTDOWN) => err::ESHUTDOWN,
        _ => err::EIO,
    }
}

/// A wire error as an `io::Error` (unknown values become EIO).
pub fn wire_to_io(e: u32) -> std::io::Error {
    let n = match e {
        err::EPERM
        | err::EIO
        | err::ENOMEM
        | err::EINVAL
        | err::ENOSPC
        | err::EOVERFLOW
        | err::ENOTSUP
        | err::ESHUTDOWN => e as i32,
        _ => libc::EIO,
    };
    std::io::Error::from_raw_os_error(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let q = Request {
            flags: cflag::FUA,
            typ: cmd::WRITE,
            handle: 0x1122334455667788,
            offset: 4096,
            len: 512,
        };
        assert_eq!(parse_request(&encode_request(&q)), Ok(q));
        let mut bad = encode_request(&q);
        bad[0] ^= 1;
        assert!(parse_request(&bad).is_err());
        assert!(parse_request(&bad[..10]).is_err());
    }

    #[test]
    fn info_request_bounds() {
        let v = encode_info_request(b"disk", &[info::NAME, info::BLOCK_SIZE]);
        let r = parse_info_request(&v).unwrap();
        assert_eq!(r.name, b"disk");
        assert_eq!(r.infos, vec![1, 3]);
        // Count says 2 items, only 1 present.
        assert!(parse_info_request(&v[..v.len() - 2]).is_err());
        // Name length beyond the payload.
        let mut h = v.clone();
        h[0..4].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        assert!(parse_info_request(&h).is_err());
    }

    #[test]
    fn meta_request_bounds() {
        let v = encode_meta_request(b"", &[b"base:allocation", b"x-foo:bar"]);
        let r = parse_meta_request(&v).unwrap();
        assert_eq!(r.queries.len(), 2);
        let mut many = v.clone();
        many[4..8].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(parse_meta_request(&many).is_err());
        let mut trailing = v;
        trailing.push(0);
        assert!(parse_meta_request(&trailing).is_err());
    }

    #[test]
    fn reply_headers() {
        let s = encode_simple_reply(5, 9);
        assert_eq!(
            parse_reply_header(&s),
            Ok(Some(ReplyHeader::Simple {
                error: 5,
                handle: 9
            }))
        );
        let c = encode_chunk_header(chunk::FLAG_DONE, chunk::NONE, 3, 0);
        assert_eq!(parse_reply_header(&c[..16]), Ok(None));
        assert!(matches!(
            parse_reply_header(&c),
            Ok(Some(ReplyHeader::Chunk { handle: 3, .. }))
        ));
        assert!(parse_reply_header(&[0u8; 16]).is_err());
    }

    #[test]
    fn block_status_round_trip() {
        let d = [
            Descriptor {
                len: 4096,
                flags: 0,
            },
            Descriptor {
                len: 8192,
                flags: STATE_HOLE | STATE_ZERO,
            },
        ];
        let v = encode_block_status(1, &d);
        assert_eq!(parse_block_status(&v), Ok((1, d.to_vec())));
        assert!(parse_block_status(&v[..7]).is_err());
        assert!(parse_block_status(&v[..4]).is_err());
    }

    #[test]
    fn errors_map_to_the_allowed_set() {
        let e = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(errno_to_wire(&e), err::ENOSPC);
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_to_wire(&e), err::EIO);
        assert_eq!(wire_to_io(12345).raw_os_error(), Some(libc::EIO));
        assert_eq!(parse_error_payload(&encode_error_payload(22, "x")), Ok(22));
        assert!(parse_error_payload(&encode_error_payload(0, "x")).is_err());
    }
}

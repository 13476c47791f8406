//! The client side of fixed newstyle negotiation: structured replies, `base:allocation`, and
//! OPT_GO with block size constraints.

use std::io;

use rt::IoBuf;

use super::uri::Endpoint;
use crate::proto::{self, Info, opt, rep, tflag};
use crate::sock::Sock;

/// What the server told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportParams {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
    pub structured: bool,
    /// Context id of `base:allocation`, if the server agreed to it.
    pub base_allocation: Option<u32>,
}

impl ExportParams {
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

/// Largest option reply payload we read (server strings are at most 4K; be generous).
const MAX_REPLY: u32 = 1 << 16;

fn proto_err(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

pub async fn connect(ep: &Endpoint) -> io::Result<Sock> {
    Ok(match ep {
        Endpoint::Tcp(a) => Sock::tcp(rt::net::connect_tcp(*a).await?),
        Endpoint::Unix(p) => Sock::unix(rt::net::connect_unix(p).await?),
    })
}

async fn read_reply(sock: &Sock, hdr: &mut IoBuf, option: u32) -> io::Result<(u32, Vec<u8>)> {
    sock.read_into(hdr, proto::OPT_REPLY_HEADER_LEN).await?;
    let h = proto::parse_opt_reply_header(hdr.as_slice()).map_err(|e| proto_err(e.0))?;
    if h.option != option {
        return Err(proto_err("option reply for another option"));
    }
    if h.len > MAX_REPLY {
        return Err(proto_err("option reply too large"));
    }
    Ok((h.typ, sock.read_vec(h.len as usize).await?))
}

/// Connect to `ep` and negotiate export `name`. The socket is ready for transmission.
pub async fn open(ep: &Endpoint, name: &str) -> io::Result<(Sock, ExportParams)> {
    let sock = connect(ep).await?;
    let g = sock.read_vec(18).await?;
    let flags = proto::parse_greeting(&g).map_err(|e| proto_err(e.0))?;
    if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto_err("server does not speak fixed newstyle NBD"));
    }
    let mut cflags = proto::CLIENT_FIXED_NEWSTYLE;
    if flags & proto::FLAG_NO_ZEROES != 0 {
        cflags |= proto::CLIENT_NO_ZEROES;
    }
    sock.send(&cflags.to_be_bytes()).await?;
    let mut hdr = IoBuf::with_capacity(proto::OPT_REPLY_HEADER_LEN);

    sock.send(&proto::encode_option(opt::STRUCTURED_REPLY, &[]))
        .await?;
    let (t, _) = read_reply(&sock, &mut hdr, opt::STRUCTURED_REPLY).await?;
    let structured = t == rep::ACK;

    let mut base_allocation = None;
    if structured {
        let q = proto::encode_meta_request(name.as_bytes(), &[proto::BASE_ALLOCATION.as_bytes()]);
        sock.send(&proto::encode_option(opt::SET_META_CONTEXT, &q))
            .await?;
        loop {
            let (t, d) = read_reply(&sock, &mut hdr, opt::SET_META_CONTEXT).await?;
            match t {
                rep::META_CONTEXT => {
                    let (id, n) = proto::parse_rep_meta_context(&d).map_err(|e| proto_err(e.0))?;
                    if n == proto::BASE_ALLOCATION.as_bytes() {
                        base_allocation = Some(id);
                    }
                }
                rep::ACK => break,
                t if rep::is_error(t) => break, // no block status then
                _ => return Err(proto_err("unexpected reply to SET_META_CONTEXT")),
            }
        }
    }

    let q = proto::encode_info_request(name.as_bytes(), &[proto::info::BLOCK_SIZE]);
    sock.send(&proto::encode_option(opt::GO, &q)).await?;
    let mut export = None;
    let (mut min, mut pref, mut max) = (1, 4096, 32 << 20);
    loop {
        let (t, d) = read_reply(&sock, &mut hdr, opt::GO).await?;
        match t {
            rep::INFO => match proto::parse_info(&d).map_err(|e| proto_err(e.0))? {
                Info::Export { size, flags } => export = Some((size, flags)),
                Info::BlockSize {
                    min: a,
                    preferred: b,
                    max: c,
                } => {
                    if !a.is_power_of_two() || a > 64 << 10 || b < a || c < b {
                        return Err(proto_err("nonsensical block size constraints"));
                    }
                    (min, pref, max) = (a, b, c);
                }
                Info::Other(_) => {}
            },
            rep::ACK => break,
            t if rep::is_error(t) => {
                let msg = String::from_utf8_lossy(&d);
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("server refused export {name:?}: {msg} (reply {:#x})", t),
                ));
            }
            _ => {}
        }
    }
    let (size, flags) = export.ok_or_else(|| proto_err("server sent no export information"))?;
    if flags & tflag::HAS_FLAGS == 0 {
        return Err(proto_err("transmission flags without HAS_FLAGS"));
    }
    Ok((
        sock,
        ExportParams {
            size,
            flags,
            min_block: min,
            preferred_block: pref,
            max_block: max,
            structured,
            base_allocation,
        },
    ))
}

//! Entry points for fuzzing: feed arbitrary bytes through the same parsers and decisions the
//! server and the client apply to their peer's bytes. They must never panic, and every length
//! they act on must be bounded. Used by `fuzz/` (cargo-fuzz) and by a seeded test below.

use crate::proto;
use crate::server::negotiate::{ExportInfo, Next, Session};
use crate::server::request::{Limits, Verdict, check};

fn export() -> ExportInfo {
    ExportInfo {
        name: "disk".into(),
        description: "fuzz".into(),
        size: 1 << 30,
        flags: proto::tflag::HAS_FLAGS
            | proto::tflag::SEND_FLUSH
            | proto::tflag::SEND_FUA
            | proto::tflag::SEND_TRIM
            | proto::tflag::SEND_WRITE_ZEROES
            | proto::tflag::SEND_FAST_ZERO
            | proto::tflag::SEND_DF
            | proto::tflag::SEND_CACHE,
        min_block: 512,
        preferred_block: 4096,
        max_block: 1 << 25,
    }
}

/// A client's byte stream as the server sees it: flags, options, then requests (with WRITE
/// payloads skipped as the server would skip them).
pub fn server_stream(mut data: &[u8]) {
    let e = export();
    let mut s = Session::default();
    let Some((f, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    data = rest;
    if s.client_flags(u32::from_be_bytes(*f)).is_err() {
        return;
    }
    let mut out = Vec::new();
    loop {
        let Some((h, rest)) = data.split_first_chunk::<{ proto::OPTION_HEADER_LEN }>() else {
            return;
        };
        let Ok(h) = proto::parse_option_header(h) else {
            return;
        };
        if h.len > proto::MAX_OPTION_LEN || rest.len() < h.len as usize {
            return;
        }
        let (payload, rest) = rest.split_at(h.len as usize);
        data = rest;
        out.clear();
        match s.option(&e, h.option, payload, &mut out) {
            Next::Continue => {
                // Every reply we produce must parse back.
                let mut r = &out[..];
                while !r.is_empty() {
                    let rh = proto::parse_opt_reply_header(r).expect("our own reply parses");
                    r = &r[proto::OPT_REPLY_HEADER_LEN + rh.len as usize..];
                }
            }
            Next::Close => return,
            Next::Transmit => break,
        }
    }
    let lim = Limits {
        size: e.size,
        min_block: e.min_block,
        max_payload: e.max_block,
        flags: e.flags_for(s.structured),
        structured: s.structured,
        base_allocation: s.base_allocation,
    };
    while let Some((h, rest)) = data.split_first_chunk::<{ proto::REQUEST_LEN }>() {
        let Ok(r) = proto::parse_request(h) else {
            return;
        };
        data = rest;
        let skip = match check(&r, &lim) {
            Verdict::Run(proto_cmd) => {
                if let crate::server::request::Cmd::Write { len, off, .. } = proto_cmd {
                    assert!(len <= lim.max_payload && off + len as u64 <= lim.size);
                    len
                } else {
                    0
                }
            }
            Verdict::Fail { skip, .. } => skip,
            Verdict::Disconnect | Verdict::Hangup(_) => return,
        };
        data = &data[(skip as usize).min(data.len())..];
    }
}

/// A server's bytes as the client parses them: greeting, option replies and their payloads,
/// reply headers and chunk payloads.
pub fn client_stream(data: &[u8]) {
    let _ = proto::parse_greeting(data);
    let _ = proto::parse_opt_reply_header(data);
    let _ = proto::parse_info(data);
    let _ = proto::parse_rep_meta_context(data);
    let _ = proto::parse_reply_header(data);
    let _ = proto::parse_error_payload(data);
    let _ = proto::parse_block_status(data);
    let _ = proto::parse_hole(data);
    let _ = proto::parse_info_request(data);
    let _ = proto::parse_meta_request(data);
    if let Ok(u) = std::str::from_utf8(data) {
        // URIs from the command line; no DNS for fuzzing: only unix and numeric hosts resolve.
        if u.starts_with("nbd+unix://") || u.starts_with("nbd://127.") {
            let _ = crate::client::uri::parse(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: a fixed seed keeps failures reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A valid session: flags, structured replies, meta context, GO, a few requests.
    fn seed() -> Vec<u8> {
        let mut v = 3u32.to_be_bytes().to_vec();
        v.extend(proto::encode_option(proto::opt::STRUCTURED_REPLY, &[]));
        v.extend(proto::encode_option(
            proto::opt::SET_META_CONTEXT,
            &proto::encode_meta_request(b"disk", &[b"base:allocation"]),
        ));
        v.extend(proto::encode_option(proto::opt::LIST, &[]));
        v.extend(proto::encode_option(
            proto::opt::GO,
            &proto::encode_info_request(b"disk", &[3]),
        ));
        for (typ, len) in [(1u16, 512u32), (0, 4096), (7, 1 << 20), (6, 4096), (3, 0)] {
            let r = proto::Request {
                flags: 0,
                typ,
                handle: 7,
                offset: 4096,
                len,
            };
            v.extend(proto::encode_request(&r));
            if typ == 1 {
                v.extend(std::iter::repeat_n(0xab, len as usize));
            }
        }
        v
    }

    #[test]
    fn parsers_survive_random_and_mutated_input() {
        let mut rng = Rng(0x5eed_1234_abcd_9876);
        let base = seed();
        server_stream(&base);
        for i in 0..5000 {
            let mut v = if i % 4 == 0 {
                (0..rng.below(300)).map(|_| rng.next() as u8).collect()
            } else {
                base.clone()
            };
            for _ in 0..=rng.below(8) {
                if v.is_empty() {
                    break;
                }
                let at = rng.below(v.len());
                match rng.below(4) {
                    0 => v[at] = rng.next() as u8,
                    1 => v[at] ^= 1 << rng.below(8),
                    2 => v.truncate(at),
                    _ => {
                        let b = rng.next() as u8;
                        v.insert(at, b)
                    }
                }
            }
            server_stream(&v);
            client_stream(&v);
            client_stream(&v[rng.below(v.len())..]);
        }
    }
}

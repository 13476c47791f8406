//! Option haggling as a pure state machine: bytes of one option in, reply bytes out. The socket
//! loop in `conn.rs` only moves bytes, so every decision here is testable and fuzzable.

use crate::proto::{self, info, opt, rep};

/// What the server says about its one export during negotiation.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    /// Transmission flags when structured replies are on (DF and BLOCK_STATUS need them).
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

impl ExportInfo {
    /// The empty name selects the default (our only) export.
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
    /// Flags as seen by a client that did or did not negotiate structured replies.
    pub fn flags_for(&self, structured: bool) -> u16 {
        if structured {
            self.flags
        } else {
            self.flags & !proto::tflag::SEND_DF
        }
    }
}

/// Context id we hand out for `base:allocation` (0 is reserved in LIST replies).
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What to do after an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Enter transmission; with EXPORT_NAME the reply is the legacy one (already in `out`).
    Transmit,
    /// Close the connection after sending `out`.
    Close,
}

/// Negotiated state of one connection.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub structured: bool,
    pub no_zeroes: bool,
    /// `base:allocation` selected by SET_META_CONTEXT (for the export we serve).
    pub base_allocation: bool,
    /// Options handled so far (a bound on how long negotiation may go on).
    pub options: u32,
}

/// Most options one connection may send before we give up on it.
pub const MAX_OPTIONS: u32 = 1024;

/// Handshake flags we advertise.
pub const SERVER_FLAGS: u16 = proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES;

impl Session {
    /// Check the client's flags (reply to the greeting). Unknown bits, or a client that does not
    /// speak fixed newstyle, end the connection (we implement only fixed newstyle).
    pub fn client_flags(&mut self, flags: u32) -> Result<(), &'static str> {
        let known = proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES;
        if flags & !known != 0 {
            return Err("unknown client flags");
        }
        if flags & proto::CLIENT_FIXED_NEWSTYLE == 0 {
            return Err("client does not support fixed newstyle");
        }
        self.no_zeroes = flags & proto::CLIENT_NO_ZEROES != 0;
        Ok(())
    }

    /// Handle one option whose payload is `data`; append replies to `out`.
    pub fn option(&mut self, e: &ExportInfo, option: u32, data: &[u8], out: &mut Vec<u8>) -> Next {
        self.options += 1;
        if self.options > MAX_OPTIONS {
            out.extend(proto::encode_opt_reply(
                option,
                rep::ERR_POLICY,
                b"too many options",
            ));
            return Next::Close;
        }
        let reply = |out: &mut Vec<u8>, typ: u32, d: &[u8]| {
            out.extend(proto::encode_opt_reply(option, typ, d));
        };
        match option {
            opt::EXPORT_NAME => {
                if !e.matches(data) {
                    // No error reply exists for EXPORT_NAME: the spec says close.
                    return Next::Close;
                }
                out.extend(proto::encode_export_name_reply(
                    e.size,
                    e.flags_for(self.structured),
                    self.no_zeroes,
                ));
                Next::Transmit
            }
            opt::ABORT => {
                reply(out, rep::ACK, &[]);
                Next::Close
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply(out, rep::ERR_INVALID, b"LIST takes no data");
                    return Next::Continue;
                }
                reply(
                    out,
                    rep::SERVER,
                    &proto::encode_rep_server(e.name.as_bytes(), e.description.as_bytes()),
                );
                reply(out, rep::ACK, &[]);
                Next::Continue
            }
            opt::INFO | opt::GO => {
                let req = match proto::parse_info_request(data) {
                    Ok(r) => r,
                    Err(err) => {
                        reply(out, rep::ERR_INVALID, err.0.as_bytes());
                        return Next::Continue;
                    }
                };
                if !e.matches(req.name) {
                    reply(out, rep::ERR_UNKNOWN, b"no such export");
                    return Next::Continue;
                }
                reply(
                    out,
                    rep::INFO,
                    &proto::encode_info_export(e.size, e.flags_for(self.structured)),
                );
                // Block sizes always: our targets may need aligned I/O (O_DIRECT).
                reply(
                    out,
                    rep::INFO,
                    &proto::encode_info_block_size(e.min_block, e.preferred_block, e.max_block),
                );
                if req.infos.contains(&info::NAME) {
                    reply(
                        out,
                        rep::INFO,
                        &proto::encode_info_string(info::NAME, e.name.as_bytes()),
                    );
                }
                if req.infos.contains(&info::DESCRIPTION) && !e.description.is_empty() {
                    reply(
                        out,
                        rep::INFO,
                        &proto::encode_info_string(info::DESCRIPTION, e.description.as_bytes()),
                    );
                }
                reply(out, rep::ACK, &[]);
                if option == opt::GO {
                    Next::Transmit
                } else {
                    Next::Continue
                }
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply(out, rep::ERR_INVALID, b"STRUCTURED_REPLY takes no data");
                    return Next::Continue;
                }
                self.structured = true;
                reply(out, rep::ACK, &[]);
                Next::Continue
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let set = option == opt::SET_META_CONTEXT;
                if !self.structured {
                    reply(out, rep::ERR_INVALID, b"negotiate structured replies first");
                    return Next::Continue;
                }
                let req = match proto::parse_meta_request(data) {
                    Ok(r) => r,
                    Err(err) => {
                        reply(out, rep::ERR_INVALID, err.0.as_bytes());
                        return Next::Continue;
                    }
                };
                if !e.matches(req.name) {
                    reply(out, rep::ERR_UNKNOWN, b"no such export");
                    return Next::Continue;
                }
                // `base:allocation` is our only context. A LIST with no query, or the
                // namespace `base:` alone, lists everything we have.
                let selected =
                    req.queries.iter().any(|q| {
                        *q == proto::BASE_ALLOCATION.as_bytes() || (!set && *q == b"base:")
                    }) || (!set && req.queries.is_empty());
                if set {
                    self.base_allocation = selected;
                }
                if selected {
                    let id = if set { BASE_ALLOCATION_ID } else { 0 };
                    reply(
                        out,
                        rep::META_CONTEXT,
                        &proto::encode_rep_meta_context(id, proto::BASE_ALLOCATION),
                    );
                }
                reply(out, rep::ACK, &[]);
                Next::Continue
            }
            opt::STARTTLS => {
                reply(out, rep::ERR_POLICY, b"TLS is not supported");
                Next::Continue
            }
            _ => {
                reply(out, rep::ERR_UNSUP, b"unsupported option");
                Next::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OptReplyHeader, parse_opt_reply_header};

    fn export() -> ExportInfo {
        ExportInfo {
            name: "disk".into(),
            description: "a test".into(),
            size: 1 << 20,
            flags: proto::tflag::HAS_FLAGS | proto::tflag::SEND_DF,
            min_block: 512,
            preferred_block: 4096,
            max_block: 1 << 25,
        }
    }

    /// Split a reply stream into (header, payload) pairs.
    fn replies(mut b: &[u8]) -> Vec<(OptReplyHeader, Vec<u8>)> {
        let mut v = vec![];
        while !b.is_empty() {
            let h = parse_opt_reply_header(b).unwrap();
            let n = h.len as usize;
            v.push((h, b[20..20 + n].to_vec()));
            b = &b[20 + n..];
        }
        v
    }

    #[test]
    fn go_sends_export_block_size_and_ack() {
        let mut s = Session::default();
        s.client_flags(3).unwrap();
        let mut out = vec![];
        let d = proto::encode_info_request(b"disk", &[info::NAME]);
        assert_eq!(s.option(&export(), opt::GO, &d, &mut out), Next::Transmit);
        let r = replies(&out);
        let types: Vec<u32> = r.iter().map(|x| x.0.typ).collect();
        assert_eq!(types, vec![rep::INFO, rep::INFO, rep::INFO, rep::ACK]);
        assert_eq!(
            proto::parse_info(&r[0].1),
            Ok(proto::Info::Export {
                size: 1 << 20,
                flags: proto::tflag::HAS_FLAGS
            })
        );
    }

    #[test]
    fn unknown_export_and_bad_payloads_get_errors_not_transmission() {
        let mut s = Session::default();
        let mut out = vec![];
        let d = proto::encode_info_request(b"nope", &[]);
        assert_eq!(s.option(&export(), opt::GO, &d, &mut out), Next::Continue);
        assert_eq!(replies(&out)[0].0.typ, rep::ERR_UNKNOWN);
        out.clear();
        assert_eq!(
            s.option(&export(), opt::GO, &[1, 2, 3], &mut out),
            Next::Continue
        );
        assert_eq!(replies(&out)[0].0.typ, rep::ERR_INVALID);
        out.clear();
        assert_eq!(
            s.option(&export(), opt::EXPORT_NAME, b"nope", &mut out),
            Next::Close
        );
        out.clear();
        assert_eq!(s.option(&export(), 999, b"", &mut out), Next::Continue);
        assert_eq!(replies(&out)[0].0.typ, rep::ERR_UNSUP);
    }

    #[test]
    fn meta_context_needs_structured_replies() {
        let mut s = Session::default();
        let mut out = vec![];
        let d = proto::encode_meta_request(b"", &[b"base:allocation"]);
        s.option(&export(), opt::SET_META_CONTEXT, &d, &mut out);
        assert_eq!(replies(&out)[0].0.typ, rep::ERR_INVALID);
        out.clear();
        s.option(&export(), opt::STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        s.option(&export(), opt::SET_META_CONTEXT, &d, &mut out);
        let r = replies(&out);
        assert_eq!(r[0].0.typ, rep::META_CONTEXT);
        assert_eq!(
            proto::parse_rep_meta_context(&r[0].1).unwrap().0,
            BASE_ALLOCATION_ID
        );
        assert!(s.base_allocation);
        out.clear();
        let d = proto::encode_meta_request(b"", &[b"qemu:dirty-bitmap:x"]);
        s.option(&export(), opt::SET_META_CONTEXT, &d, &mut out);
        assert_eq!(replies(&out).len(), 1);
        assert!(!s.base_allocation);
    }
}

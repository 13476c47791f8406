//! A raw NBD client over a blocking TCP socket, for tests that misbehave on purpose: every step
//! is explicit, and read timeouts make a hang fail the test instead of stalling it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nbd::proto::{self, opt, rep};

use super::Server;

pub fn connect(s: &Server) -> TcpStream {
    connect_to(s.addr.unwrap())
}

pub fn connect_to(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

pub fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    c.read_exact(&mut v).unwrap();
    v
}

/// True once the server has closed the connection (EOF or reset), within the read timeout.
pub fn closed(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // drain any replies still in flight
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
}

/// Negotiate export "d" with OPT_GO; optionally structured replies first.
pub fn handshake(s: &Server, structured: bool) -> TcpStream {
    handshake_at(s.addr.unwrap(), structured)
}

/// [`handshake`] with a server at `addr`.
pub fn handshake_at(addr: SocketAddr, structured: bool) -> TcpStream {
    let mut c = connect_to(addr);
    let g = read_n(&mut c, 18);
    assert_eq!(
        proto::parse_greeting(&g).unwrap() & proto::FLAG_FIXED_NEWSTYLE,
        1
    );
    c.write_all(&(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES).to_be_bytes())
        .unwrap();
    if structured {
        c.write_all(&proto::encode_option(opt::STRUCTURED_REPLY, &[]))
            .unwrap();
        let h = proto::parse_opt_reply_header(&read_n(&mut c, 20)).unwrap();
        assert_eq!(h.typ, rep::ACK);
    }
    c.write_all(&proto::encode_option(
        opt::GO,
        &proto::encode_info_request(b"d", &[]),
    ))
    .unwrap();
    loop {
        let h = proto::parse_opt_reply_header(&read_n(&mut c, 20)).unwrap();
        read_n(&mut c, h.len as usize);
        if h.typ == rep::ACK {
            return c;
        }
        assert!(!rep::is_error(h.typ), "GO failed: {:#x}", h.typ);
    }
}

/// The bytes of one request header.
pub fn encode(
    typ: u16,
    flags: u16,
    handle: u64,
    offset: u64,
    len: u32,
) -> [u8; proto::REQUEST_LEN] {
    proto::encode_request(&proto::Request {
        flags,
        typ,
        handle,
        offset,
        len,
    })
}

pub fn request(c: &mut TcpStream, typ: u16, handle: u64, offset: u64, len: u32) {
    c.write_all(&encode(typ, 0, handle, offset, len)).unwrap();
}

/// Read one simple reply: (error, handle).
pub fn simple_reply(c: &mut TcpStream) -> (u32, u64) {
    match proto::parse_reply_header(&read_n(c, 16)).unwrap().unwrap() {
        proto::ReplyHeader::Simple { error, handle } => (error, handle),
        h => panic!("expected a simple reply, got {h:?}"),
    }
}

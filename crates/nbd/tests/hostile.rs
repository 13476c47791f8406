//! Hostile and broken clients: each gets an error reply or its connection closed, and a
//! well-behaved client on the same server keeps being served. Raw sockets, blocking, with read
//! timeouts so a hang fails the test instead of stalling it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use nbd::proto::{self, cmd, opt, rep};
use nbd::server::ExportConfig;
use targets::Filtered;
use targets::filter::delay::Delay;
use targets::mem::MemTarget;

/// A RAM disk behind a fixed latency.
fn delayed_mem(latency: Duration) -> Filtered<Delay, MemTarget> {
    Filtered {
        filter: Delay::new(latency),
        next: MemTarget::new(SIZE, 512).unwrap(),
    }
}

const SIZE: u64 = 8 << 20;

fn server() -> Server {
    Server::tcp(
        MemTarget::new(SIZE, 512).unwrap(),
        ExportConfig {
            name: "d".into(),
            threads: 2,
            max_in_flight_bytes: 8 << 20,
            max_payload: 1 << 20,
            handshake_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
}

/// A good client: write a pattern, read it back.
fn good_client_works(s: &Server, seed: u64) {
    let mut c = handshake(s, false);
    let d = pattern(4096, seed);
    request(&mut c, cmd::WRITE, 1, 4096 * seed, 4096);
    c.write_all(&d).unwrap();
    assert_eq!(simple_reply(&mut c), (0, 1));
    request(&mut c, cmd::READ, 2, 4096 * seed, 4096);
    assert_eq!(simple_reply(&mut c), (0, 2));
    assert_eq!(read_n(&mut c, 4096), d);
    request(&mut c, cmd::DISC, 3, 0, 0);
    assert!(closed(&mut c));
}

#[test]
fn bad_option_magic_closes_only_that_client() {
    let s = server();
    let mut c = connect(&s);
    read_n(&mut c, 18);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    c.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut c));
    good_client_works(&s, 1);
}

#[test]
fn oversized_option_gets_too_big_and_negotiation_continues() {
    let s = server();
    let mut c = connect(&s);
    read_n(&mut c, 18);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let big = vec![b'x'; 100_000];
    c.write_all(&proto::encode_option(opt::INFO, &big)).unwrap();
    let h = proto::parse_opt_reply_header(&read_n(&mut c, 20)).unwrap();
    assert_eq!(h.typ, rep::ERR_TOO_BIG);
    read_n(&mut c, h.len as usize);
    // Still negotiating: LIST works.
    c.write_all(&proto::encode_option(opt::LIST, &[])).unwrap();
    let h = proto::parse_opt_reply_header(&read_n(&mut c, 20)).unwrap();
    assert_eq!(h.typ, rep::SERVER);
}

#[test]
fn bad_request_magic_and_garbage_close_the_connection() {
    let s = server();
    let mut c = handshake(&s, false);
    request(&mut c, cmd::FLUSH, 1, 0, 0);
    assert_eq!(simple_reply(&mut c), (0, 1));
    c.write_all(&pattern(200, 9)).unwrap(); // garbage mid-stream
    assert!(closed(&mut c));
    good_client_works(&s, 2);
}

#[test]
fn errors_for_range_length_and_unknown_commands_keep_the_stream_in_sync() {
    let s = server();
    let mut c = handshake(&s, false);
    request(&mut c, cmd::READ, 1, SIZE, 4096); // past the end
    assert_eq!(simple_reply(&mut c), (proto::err::EINVAL, 1));
    request(&mut c, cmd::WRITE, 2, SIZE - 512, 4096); // write past the end: payload skipped
    c.write_all(&vec![0xaa; 4096]).unwrap();
    assert_eq!(simple_reply(&mut c), (proto::err::ENOSPC, 2));
    request(&mut c, 42, 3, 0, 512); // unknown command
    assert_eq!(simple_reply(&mut c), (proto::err::EINVAL, 3));
    request(&mut c, cmd::READ, 4, 0, 64 << 20); // larger than the maximum block size
    assert_eq!(simple_reply(&mut c), (proto::err::EINVAL, 4));
    request(&mut c, cmd::READ, 5, 1, 512); // unaligned
    assert_eq!(simple_reply(&mut c), (proto::err::EINVAL, 5));
    request(&mut c, cmd::BLOCK_STATUS, 6, 0, 512); // no meta context negotiated
    assert_eq!(simple_reply(&mut c), (proto::err::EINVAL, 6));
    // Still in sync: a real read works.
    request(&mut c, cmd::READ, 7, 0, 512);
    assert_eq!(simple_reply(&mut c), (0, 7));
    assert_eq!(read_n(&mut c, 512), vec![0; 512]);
}

#[test]
fn structured_errors_are_error_chunks() {
    let s = server();
    let mut c = handshake(&s, true);
    request(&mut c, cmd::READ, 9, SIZE, 512);
    match proto::parse_reply_header(&read_n(&mut c, 20))
        .unwrap()
        .unwrap()
    {
        proto::ReplyHeader::Chunk {
            flags,
            typ,
            handle,
            len,
        } => {
            assert_eq!(
                (flags, typ, handle),
                (proto::chunk::FLAG_DONE, proto::chunk::ERROR, 9)
            );
            let p = read_n(&mut c, len as usize);
            assert_eq!(proto::parse_error_payload(&p), Ok(proto::err::EINVAL));
        }
        h => panic!("{h:?}"),
    }
}

#[test]
fn oversized_write_and_disconnect_mid_request_close_the_connection() {
    let s = server();
    let mut c = handshake(&s, false);
    request(&mut c, cmd::WRITE, 1, 0, 0xffff_fe00);
    assert!(closed(&mut c));
    let mut c = handshake(&s, false);
    request(&mut c, cmd::WRITE, 1, 0, 1 << 20);
    c.write_all(&[1u8; 1000]).unwrap();
    drop(c); // gone with 1 MiB promised
    let mut c = handshake(&s, false);
    request(&mut c, cmd::READ, 1, 0, 1 << 20);
    drop(c); // gone before reading the reply
    good_client_works(&s, 3);
}

#[test]
fn idle_negotiation_times_out() {
    let s = server();
    let mut c = connect(&s);
    read_n(&mut c, 18);
    let t = std::time::Instant::now();
    assert!(closed(&mut c));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn client_that_never_reads_replies_has_bounded_memory() {
    let s = server();
    good_client_works(&s, 4);
    let before = rss_bytes();
    let mut c = handshake(&s, false);
    c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 2000 reads of 1 MiB (2 GiB of replies) that we never read.
    for i in 0..2000u64 {
        let r = proto::Request {
            flags: 0,
            typ: cmd::READ,
            handle: i,
            offset: 0,
            len: 1 << 20,
        };
        if c.write_all(&proto::encode_request(&r)).is_err() {
            break; // the server stopped reading us: backpressure, as intended
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // Others are still served meanwhile.
    good_client_works(&s, 5);
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < 200 << 20, "RSS grew by {} MiB", grew >> 20);
    drop(c);
}

/// A server whose target takes `latency` per request, and cuts clients idle for a second.
fn idle_server(latency: Duration) -> Server {
    Server::tcp(
        delayed_mem(latency),
        ExportConfig {
            name: "d".into(),
            threads: 2,
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
}

#[test]
fn idle_client_is_disconnected_after_the_idle_timeout() {
    let s = idle_server(Duration::ZERO);
    let mut c = handshake(&s, false);
    request(&mut c, cmd::FLUSH, 1, 0, 0);
    assert_eq!(simple_reply(&mut c), (0, 1));
    let t = Instant::now();
    assert!(closed(&mut c));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(900) && e < Duration::from_secs(5),
        "{e:?}"
    );
    good_client_works(&s, 6); // within its second
}

#[test]
fn a_request_in_flight_longer_than_the_idle_timeout_is_not_cut() {
    let s = idle_server(Duration::from_millis(2500));
    let mut c = handshake(&s, false);
    let t = Instant::now();
    request(&mut c, cmd::READ, 1, 0, 4096);
    assert_eq!(simple_reply(&mut c), (0, 1));
    read_n(&mut c, 4096);
    assert!(t.elapsed() >= Duration::from_millis(2400));
    // Idle from the reply on: cut a second later, not at once.
    let t = Instant::now();
    assert!(closed(&mut c));
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn server_budget_makes_other_connections_wait_not_fail() {
    // The server-wide budget holds one 1 MiB read (it is raised to one largest request), and the
    // target takes 500 ms per request: a second client's read waits for the first one's reply.
    let s = Server::tcp(
        delayed_mem(Duration::from_millis(500)),
        ExportConfig {
            name: "d".into(),
            threads: 2,
            max_payload: 1 << 20,
            max_total_in_flight_bytes: 1,
            ..Default::default()
        },
    );
    let (mut a, mut b) = (handshake(&s, false), handshake(&s, false));
    request(&mut a, cmd::READ, 1, 0, 1 << 20);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    request(&mut b, cmd::READ, 2, 0, 1 << 20);
    assert_eq!(simple_reply(&mut a), (0, 1));
    read_n(&mut a, 1 << 20);
    assert_eq!(simple_reply(&mut b), (0, 2));
    read_n(&mut b, 1 << 20);
    // 400 ms until the first read is done, then 500 ms of its own; alone it would take 500 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(850),
        "{:?}",
        t.elapsed()
    );
}

/// Per connection 8 MiB, all connections 4 MiB, and clients that stall are cut after a second.
fn stall_server() -> Server {
    Server::tcp(
        MemTarget::new(SIZE, 512).unwrap(),
        ExportConfig {
            name: "d".into(),
            threads: 2,
            max_payload: 1 << 20,
            max_in_flight_bytes: 8 << 20,
            max_total_in_flight_bytes: 4 << 20,
            stall_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
}

#[test]
fn a_client_that_stops_reading_replies_is_cut_and_its_budget_comes_back() {
    let s = stall_server();
    let mut a = handshake(&s, false);
    a.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 64 MiB of replies, more than the socket buffers hold: the rest sits in the server and
    // holds the whole server budget.
    for i in 0..64 {
        let r = encode(cmd::READ, 0, i, 0, 1 << 20);
        if a.write_all(&r).is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut b = handshake(&s, false);
    request(&mut b, cmd::READ, 1, 0, 4096);
    assert_eq!(simple_reply(&mut b), (0, 1)); // once the stalled client is cut
    read_n(&mut b, 4096);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(closed(&mut a));
}

#[test]
fn a_client_that_stops_mid_write_payload_is_cut() {
    let s = stall_server();
    let mut c = handshake(&s, false);
    request(&mut c, cmd::WRITE, 1, 0, 1 << 20);
    c.write_all(&[7u8; 1000]).unwrap(); // and nothing more
    let t = Instant::now();
    assert!(closed(&mut c));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(900) && e < Duration::from_secs(5),
        "{e:?}"
    );
    good_client_works(&s, 7);
}

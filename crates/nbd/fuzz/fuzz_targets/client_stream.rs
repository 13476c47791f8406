//! What a server can send the client: greeting, option replies, reply chunks, and URIs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd::fuzz::client_stream(data));

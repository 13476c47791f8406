//! What a client can send the server: flags, options, requests.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd::fuzz::server_stream(data));

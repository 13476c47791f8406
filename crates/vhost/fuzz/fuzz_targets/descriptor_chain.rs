//! What a guest can put in a virtqueue: descriptor tables, indirect tables, headers, ranges.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_blk::fuzz::descriptor_chain(data));

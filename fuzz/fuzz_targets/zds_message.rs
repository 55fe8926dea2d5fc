//! libFuzzer driver for [`mesh_fuzz::zds_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::zds_message(data));

//! libFuzzer driver for [`mesh_fuzz::certificate`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::certificate(data));

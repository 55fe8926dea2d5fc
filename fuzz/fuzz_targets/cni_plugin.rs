//! libFuzzer driver for [`mesh_fuzz::cni_plugin`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::cni_plugin(data));

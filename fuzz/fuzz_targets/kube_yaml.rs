//! libFuzzer driver for [`mesh_fuzz::kube_yaml`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::kube_yaml(data));

//! Fuzz target `fuzz_pem_loader` (spec/TESTS.md §1.4); its owner fills it in.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});

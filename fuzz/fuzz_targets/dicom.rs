//! cargo-fuzz target: echonet_edge::fuzzing::dicom (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // Panics that the runtime catches (dicom-rs behind catch_unwind) are handled errors, not
        // findings: keep them quiet. One that escapes still aborts (libfuzzer-sys's wrapper).
        if std::env::var_os("ECHONET_FUZZ_PANICS").is_none() {
            std::panic::set_hook(Box::new(|_| {}));
        }
    },
    |data: &[u8]| {
        let _ = echonet_edge::fuzzing::dicom(data);
    }
);

//! The run marker reader (`RunMarker::read`) on arbitrary file contents: an error, or a marker
//! of the current format that writes back and reads the same.
#![no_main]

use lamb_run::rundir::{MARKER, MARKER_FORMAT};
use lamb_run::RunMarker;
use lamb_run_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch("marker");
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(dir.join(MARKER), data).is_err() {
        return;
    }
    if let Ok(Some(m)) = RunMarker::read(&dir) {
        assert_eq!(m.format, MARKER_FORMAT);
        m.write(&dir).expect("a marker that reads writes back");
        assert_eq!(RunMarker::read(&dir).expect("written back reads"), Some(m));
    }
});

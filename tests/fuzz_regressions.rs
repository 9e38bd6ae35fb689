//! Replays the fuzzers' seeds and every input kept from a past crash
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same
//! entry points the `cargo fuzz` targets call, so what was fixed stays fixed.
//! `scripts/fuzz.sh` copies new crashing inputs into `fuzz/regressions/`.

use std::{fs, path::Path};

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".gitkeep") {
                continue;
            }
            let input = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(outcome.is_ok(), "{} panics", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn client_op_inputs_stay_fixed() {
    assert!(replay("client_op", shardcast::fuzzing::client_op) >= 5);
}

#[test]
fn http_request_inputs_stay_fixed() {
    assert!(replay("http_request", shardcast::fuzzing::http_request) >= 4);
}

#[test]
fn frame_decode_inputs_stay_fixed() {
    assert!(replay("frame_decode", shardcast_wire::fuzzing::frame_decode) >= 7);
}

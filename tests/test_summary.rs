//! The closing lines of `scripts/test.sh` (`scripts/test-summary`), from a
//! recorded `cargo test --no-fail-fast` run: a failed test binary, one that
//! crashed before its result and one that never ran are each named, a later
//! step's failure is reported, and any of them makes the exit status
//! non-zero. An all-good run exits 0.

use std::{
    path::Path,
    process::{Command, Output},
};

fn summary(log: &Path, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(root.join("scripts/test-summary"))
        .arg(log)
        .arg("--metadata")
        .arg(root.join("tests/fixtures/test-summary/metadata.json"))
        .args(args)
        .output()
        .expect("run python3 scripts/test-summary")
}

fn last_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().unwrap_or_default().to_owned()
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/test-summary")
        .join(name)
}

#[test]
fn failed_crashed_and_unrun_binaries_are_named_and_fail_the_run() {
    let output = summary(&fixture("failures.log"), &["--step", "autobahn=ok"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED  --test one: 1 failed: b"),
        "{stdout}"
    );
    assert!(stdout.contains("CRASHED --test two"), "{stdout}");
    assert!(
        stdout.contains("NOT RUN (the run stopped before it): --test four"),
        "{stdout}"
    );
    assert_eq!(
        last_line(&output),
        "tests: FAILED: 2 passed, 1 failed; binaries: 3 of 6 passed, 1 failed, 1 crashed, \
         1 did not run (--test one, --test two, --test four); autobahn: ok"
    );
}

#[test]
fn a_failed_step_fails_a_run_whose_tests_all_passed() {
    // Every binary of the fixture's workspace, each with one passing test.
    let binaries = [
        ("unittests src/lib.rs", "demo"),
        ("unittests src/main.rs", "demo"),
        ("tests/one.rs", "one"),
        ("tests/two.rs", "two"),
        ("tests/three.rs", "three"),
        ("tests/four.rs", "four"),
    ];
    let passing: String = binaries
        .iter()
        .map(|(path, stem)| {
            format!(
                "     Running {path} (target/debug/deps/{stem}-0123456789abcdef)\n\n\
                 running 1 test\ntest t ... ok\n\n\
                 test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\n"
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("shardcast-test-summary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passing.log");
    std::fs::write(&file, passing).unwrap();
    let ok = summary(&file, &["--step", "autobahn=ok"]);
    let failed = summary(&file, &["--step", "autobahn=failed"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", last_line(&ok));
    assert_eq!(
        last_line(&ok),
        "tests: OK: 6 passed, 0 failed; binaries: 6 of 6 passed, 0 failed, 0 crashed, \
         0 did not run; autobahn: ok"
    );
    assert_eq!(failed.status.code(), Some(1), "{}", last_line(&failed));
    assert!(last_line(&failed).ends_with("autobahn: failed"));
}

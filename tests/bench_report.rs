//! Benchmark reports never touch tracked files by accident: a run's report
//! (`scripts/report DIR`, as `scripts/bench.sh` makes it after every run)
//! goes beside its results and leaves the committed BENCHMARKS.md and
//! docs/bench/ alone; only `--publish` rewrites the committed report, and
//! then only its generated part, keeping the hand-written sections below the
//! marker line (and refusing a file without one). Runs `scripts/report` on
//! committed results, without running a benchmark.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const MARKER: &str = "<!-- scripts/report --publish rewrites everything above this line; \
                      everything below it is hand-written and kept -->";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardcast-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The run the committed BENCHMARKS.md was made from (its "Results from"
/// line).
fn committed_run() -> PathBuf {
    let committed = fs::read_to_string(root().join("BENCHMARKS.md")).unwrap();
    let run = committed
        .lines()
        .find_map(|l| l.strip_prefix("Results from `")?.split('`').next())
        .expect("BENCHMARKS.md names the run it was made from");
    root().join(run)
}

/// Copies the committed run's results whose file names pass `keep`.
fn copy_results(to: &Path, keep: impl Fn(&str) -> bool) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(committed_run()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") && keep(&name) {
            fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

fn report(script: &Path, args: &[&Path], flags: &[&str]) -> Output {
    Command::new("python3")
        .arg(script)
        .args(args)
        .args(flags)
        .output()
        .expect("run python3 scripts/report")
}

/// BENCHMARKS.md and every file of docs/bench/, by path.
fn committed_report() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let top = root().join("BENCHMARKS.md");
    files.insert(top.clone(), fs::read(&top).unwrap());
    for entry in fs::read_dir(root().join("docs/bench")).unwrap() {
        let path = entry.unwrap().path();
        files.insert(path.clone(), fs::read(&path).unwrap());
    }
    files
}

#[test]
fn a_runs_report_goes_beside_its_results_and_leaves_the_committed_report_alone() {
    let dir = temp_dir("bench-run-report");
    // No fanout results: no charts, so no matplotlib is needed.
    copy_results(&dir, |name| !name.starts_with("fanout"));
    let before = committed_report();
    let output = report(&root().join("scripts/report"), &[&dir], &[]);
    let after = committed_report();
    if after != before {
        // Put back what the script overwrote before failing.
        for (path, bytes) in &before {
            fs::write(path, bytes).unwrap();
        }
        panic!("scripts/report changed the committed report: {output:?}");
    }
    assert!(output.status.success(), "{output:?}");
    let own = fs::read_to_string(dir.join("BENCHMARKS.md")).expect("the run's own report");
    fs::remove_dir_all(&dir).unwrap();
    assert!(own.starts_with("# shardcast benchmarks"), "{own}");
    assert!(own.contains("## idle"), "{own}");
    assert!(
        !own.contains("hand-written"),
        "a run's report has its figures only"
    );
}

#[test]
fn publishing_rewrites_the_generated_part_and_keeps_the_hand_written_sections() {
    // A copy of the repository's layout, so that --publish writes there.
    let dir = temp_dir("bench-publish");
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::create_dir_all(dir.join("docs/bench")).unwrap();
    let script = dir.join("scripts/report");
    fs::copy(root().join("scripts/report"), &script).unwrap();
    fs::copy(
        root().join("docs/bench/analysis.md"),
        dir.join("docs/bench/analysis.md"),
    )
    .unwrap();
    let committed = fs::read_to_string(root().join("BENCHMARKS.md")).unwrap();
    let (generated, hand_written) = committed
        .split_once(MARKER)
        .expect("BENCHMARKS.md has the marker line");
    // A stale generated part, to be replaced.
    fs::write(
        dir.join("BENCHMARKS.md"),
        format!("# old figures\n\n{MARKER}{hand_written}"),
    )
    .unwrap();
    let results = dir.join("results");
    copy_results(&results, |_| true);
    let output = report(&script, &[&results], &["--publish", "--no-charts"]);
    assert!(output.status.success(), "{output:?}");
    let published = fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
    let (new_generated, kept) = published.split_once(MARKER).expect("marker kept");
    assert_eq!(
        kept, hand_written,
        "the hand-written sections are kept as they are"
    );
    assert!(!new_generated.contains("# old figures"));
    // The same results give the committed generated part (less the charts,
    // not drawn here, and the results' path).
    let without_charts = |text: &str| -> Vec<String> {
        let text = text.split("## Charts").next().unwrap_or(text);
        text.lines()
            .filter(|l| !l.starts_with("Results from "))
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(without_charts(new_generated), without_charts(generated));

    // Without the marker, nothing is overwritten.
    fs::write(dir.join("BENCHMARKS.md"), "# only hand-written text\n").unwrap();
    let output = report(&script, &[&results], &["--publish", "--no-charts"]);
    let left = fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(left, "# only hand-written text\n");
}

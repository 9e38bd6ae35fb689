//! The reference JavaScript client (`clients/js/shardcast.js`) against the
//! real server, in Node and in headless Chromium: connections cut by the
//! server (close 1009) and by the network (a dropped socket, a half-open
//! link found by the client's application-level ping) while messages flow
//! must end with every message exactly once and in order; a server killed
//! and restarted on the same port must end with the client told it was not
//! recovered (new epoch) and then live again. The scenarios live in
//! `tests/clients/js_client_node.mjs` and `js_client_browser.mjs`; deltas
//! (checked against the npm `fossil-delta` package) in `js_client_delta.mjs`;
//! MessagePack (checked against `@msgpack/msgpack`) in `js_client_msgpack.mjs`; a
//! `resync` from a two-node Redis cluster in `js_client_cluster.mjs`; presence in
//! `js_client_presence.mjs`; a drain's reconnect advice in `js_client_drain.mjs`;
//! the seq guard (a gap refilled, conflation's skips accepted) in
//! `js_client_gaps.mjs`; a replay that fails the same way every time (backed
//! off, then skipped and reported, never a loop) in `js_client_unreadable.mjs`. Node,
//! Chromium and playwright-core come from `scripts/test.sh`.

use std::process::Command;

use serde_json::Value;

fn run(script: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let output = Command::new("node")
        .arg(format!("{dir}/{script}"))
        .arg(env!("CARGO_BIN_EXE_shardcast"))
        .current_dir(dir)
        .output()
        .expect("node (installed by scripts/test.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["ok"], true, "{stdout}");
}

#[test]
fn js_client_recovers_in_node() {
    run("js_client_node.mjs");
}

#[test]
fn js_client_applies_fossil_deltas_as_npm_fossil_delta_does() {
    run("js_client_delta.mjs");
}

#[test]
fn js_client_speaks_messagepack_as_npm_msgpack_does() {
    run("js_client_msgpack.mjs");
}

#[test]
fn js_client_lists_members_and_hears_joins_and_leaves() {
    run("js_client_presence.mjs");
}

#[test]
fn js_client_honours_a_draining_servers_reconnect_advice() {
    run("js_client_drain.mjs");
}

#[test]
fn js_client_resyncs_when_a_cluster_loses_its_redis() {
    run("js_client_cluster.mjs");
}

#[test]
fn js_client_fills_a_gap_from_history_and_accepts_only_conflations() {
    run("js_client_gaps.mjs");
}

#[test]
fn js_client_backs_off_then_skips_a_replay_that_fails_the_same_way() {
    run("js_client_unreadable.mjs");
}

#[test]
fn js_client_recovers_in_headless_chromium() {
    run("js_client_browser.mjs");
}

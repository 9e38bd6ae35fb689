//! The `shardcast` command line: `serve --help` documents every setting with
//! its environment variable, configuration mistakes end with a clear message
//! and a non-zero exit, and settings come from flags, env and TOML.

mod support;

use std::process::Command;

const SETTINGS: &[&str] = &[
    "listen",
    "shards",
    "ping-interval",
    "ping-timeout",
    "max-queue-bytes",
    "max-message-bytes",
    "max-connections",
    "max-http-connections",
    "max-subscriptions",
    "handshake-timeout",
    "shutdown-timeout",
    "read-buffer-bytes",
    "config",
];

fn shardcast(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .output()
        .expect("run shardcast")
}

#[test]
fn serve_help_documents_every_setting_and_its_environment_variable() {
    let output = shardcast(&["serve", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in SETTINGS {
        assert!(
            help.contains(&format!("--{setting}")),
            "--{setting} missing:\n{help}"
        );
        let env = format!("SHARDCAST_{}", setting.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} missing:\n{help}");
    }
    assert!(help.contains("default: 25s"), "{help}");
}

#[test]
fn invalid_settings_fail_with_a_clear_message() {
    let output = shardcast(&["serve", "--ping-interval", "soon"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("soon"));

    let output = shardcast(&["serve", "--shards", "0", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("shards is 0"));

    let output = shardcast(&["serve", "--config", "/nonexistent/shardcast.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/shardcast.toml"));
}

#[test]
fn a_start_up_error_is_one_line_with_its_cause_once_and_no_backtrace() {
    let output = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--jwt-public-key", "/nonexistent/signer.pub.pem"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "error")
        .output()
        .expect("run shardcast");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("shardcast: "), "{stderr}");
    assert!(stderr.contains("/nonexistent/signer.pub.pem"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn environment_and_toml_file_configure_the_server() {
    let dir = std::env::temp_dir().join(format!("shardcast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shardcast.toml");
    std::fs::write(&file, "max-connections = 1\n").unwrap();
    let mut server = support::Server::start_with_env(
        &[],
        &[
            ("SHARDCAST_CONFIG", file.to_str().unwrap()),
            ("SHARDCAST_SHARDS", "1"),
        ],
    );
    let _first = support::Client::connect(&server, "/ws");
    assert_eq!(
        support::refused_upgrade(&server, "/ws"),
        503,
        "max-connections from the file should refuse"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(support::DEADLINE), Some(0));
}

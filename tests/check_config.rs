//! `shardcast check-config`: the settings `serve` would run with, from
//! flags, the environment and a file, printed as a TOML file with secrets
//! masked; invalid settings and unreadable keys exit 1 with the reason.
//! Drives the real binary.

use std::process::{Command, Output};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123";

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    command.arg("check-config").args(args);
    // The caller's SHARDCAST_* settings must not leak into the check.
    for (key, _) in std::env::vars() {
        if key.starts_with("SHARDCAST_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run shardcast check-config")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn flags_environment_and_file_are_stacked_as_serve_stacks_them() {
    let dir = std::env::temp_dir().join(format!("shardcast-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shardcast.toml");
    std::fs::write(
        &file,
        "ping-interval = \"40s\"\nhistory-size = 7\nmax-queue-bytes = \"2MiB\"\n",
    )
    .unwrap();
    let output = check_config(
        &["--config", file.to_str().unwrap(), "--history-size", "9"],
        &[
            ("SHARDCAST_MAX_QUEUE_BYTES", "4MiB"),
            ("SHARDCAST_JWT_SECRET", SECRET),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let settings = stdout(&output);
    assert!(
        settings.contains("ping-interval = \"40s\""),
        "file: {settings}"
    );
    assert!(
        settings.contains("max-queue-bytes = \"4MiB\""),
        "environment over file: {settings}"
    );
    assert!(
        settings.contains("history-size = 9"),
        "flag over file: {settings}"
    );
    assert!(
        settings.contains("ping-timeout = \"10s\""),
        "default: {settings}"
    );
    assert!(!settings.contains(SECRET), "the secret is never printed");
    assert!(settings.contains("# jwt-secret: set (38 bytes), not shown"));

    // The output is itself a config file that gives the same settings.
    let again = dir.join("effective.toml");
    std::fs::write(&again, &settings).unwrap();
    let output = check_config(
        &["--config", again.to_str().unwrap()],
        &[("SHARDCAST_JWT_SECRET", SECRET)],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), settings);
}

#[test]
fn anonymous_mode_is_reported_whenever_the_server_would_run_in_it() {
    let anonymous = |args: &[&str], env: &[(&str, &str)]| {
        let output = check_config(args, env);
        assert!(output.status.success(), "{output:?}");
        let settings = stdout(&output);
        let line = settings.lines().find(|l| l.starts_with("anonymous = "));
        line.unwrap_or_else(|| panic!("no anonymous line: {settings}"))
            .to_owned()
    };
    // The default without a JWT key is anonymous mode, asked for or not.
    assert_eq!(anonymous(&[], &[]), "anonymous = true");
    assert_eq!(anonymous(&["--anonymous"], &[]), "anonymous = true");
    assert_eq!(
        anonymous(&[], &[("SHARDCAST_JWT_SECRET", SECRET)]),
        "anonymous = false"
    );
}

#[test]
fn invalid_settings_exit_1_with_the_reason() {
    let cases: [(&[&str], &str); 4] = [
        (&["--max-message-bytes", "10"], "max-message-bytes is 10"),
        (&["--ping-interval", "soon"], "soon"),
        (
            &[
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "/nonexistent/cert.pem",
        ),
        (&["--jwt-secret", "short"], "32"),
    ];
    for (args, reason) in cases {
        let output = check_config(args, &[]);
        assert!(!output.status.success(), "{args:?} passed: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing on stdout when invalid");
    }
}

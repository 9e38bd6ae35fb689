//! `docs/shardcast.service` is a unit systemd accepts: `systemd-analyze
//! verify` (from Debian's systemd package, installed by `scripts/test.sh`)
//! must find no unknown or invalid directive in it. The unit's binary and
//! user are swapped for this machine's (the built binary, the current user)
//! so that verify can check the commands too.

use std::process::Command;

const UNIT: &str = include_str!("../docs/shardcast.service");

#[test]
fn systemd_accepts_the_service_unit() {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let unit = UNIT
        .replace("/usr/local/bin/shardcast", env!("CARGO_BIN_EXE_shardcast"))
        .replace("User=shardcast", &format!("User={user}"))
        .replace("Group=shardcast", &format!("Group={user}"));
    let dir = std::env::temp_dir().join(format!("shardcast-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardcast.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package, installed by scripts/test.sh)");
    std::fs::remove_dir_all(&dir).unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    for complaint in ["Unknown", "ignoring", "Invalid", "Failed", "not executable"] {
        assert!(!said.contains(complaint), "systemd-analyze: {said}");
    }
}

//! Helpers the integration tests share.

use std::process::Command;

/// Run the `longctx` binary with `args`, failing the test with its stderr unless it
/// succeeds; returns its stdout.
pub fn longctx_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "longctx {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! `moe run` with absurd sizes: a one-line usage error naming the flag and exit code 2, quickly,
//! never an abort (allocation failure), an overflow panic or a hang.
//!
//! Before the checks of `pipeline::validate`, `--experts 100000000 --hidden 1048576` hung in
//! the synthetic routing, `--hidden 1048576 --intermediate 1048576` aborted on a failed
//! allocation (exit by SIGABRT), and the overflowing sizes were reported by tensor (`ws13`,
//! `x`, ...) instead of by flag.

mod common;

use common::moe_within;

/// Runs `moe run ARGS` and checks the usage error: exit code 2, one line on stderr that names
/// every flag of `flags`, nothing on stdout.
fn rejected(args: &[&str], flags: &[&str]) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let o = moe_within(&all, 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}, stderr: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    for flag in flags {
        assert!(err.contains(flag), "{args:?}: `{flag}` not named: {err}");
    }
    assert!(o.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn run_refuses_buffers_no_machine_can_allocate() {
    rejected(
        &["--experts", "100000000", "--hidden", "1048576"],
        &["--experts 100000000", "--hidden 1048576"],
    );
    rejected(
        &["--hidden", "1048576", "--intermediate", "1048576"],
        &["--hidden 1048576", "--intermediate 1048576"],
    );
    rejected(
        &["--capacity", "1000000000000", "--hidden", "1048576"],
        &["--capacity 1000000000000"],
    );
}

#[test]
fn run_refuses_sizes_whose_buffers_overflow() {
    let max = usize::MAX.to_string();
    let half = (usize::MAX / 2).to_string();
    rejected(&["--capacity", &max], &["--capacity"]);
    rejected(&["--tokens", &max], &["--tokens"]);
    rejected(&["--topk", &half], &["--topk"]);
    rejected(&["--experts", &half], &["--experts"]);
    rejected(&["--intermediate", "9223372036854775680"], &["--intermediate"]);
}

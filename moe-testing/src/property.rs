//! The runner of the suites' properties: one call per property instead of the same opening in
//! every test.
//!
//! [`property`] and [`property_with`] do what `proptest!(cfg, |(c in strategy)| { on_each(..) })`
//! did in each test: the configuration goes through `PROPTEST_*` (so `PROPTEST_CASES` still sets
//! the number of cases), failures persist next to the calling suite file (the caller's location
//! stands for the macro's `file!()`), and a failure panics with the minimized case and the runner.

use std::panic::Location;

use moe_engine::rng::Rng;
use moe_engine::verify::check::on_each;
use proptest::strategy::Strategy;
use proptest::sugar::NamedArguments;
use proptest::test_runner::{contextualize_config, Config, TestCaseError, TestRunner};

use crate::strategies::config;

/// Runs `check` on every backend of `duts` for each case `c` of `strategy` ([`config`]'s cases);
/// `None` (the mount's counted skip) runs nothing.
#[track_caller]
pub fn property<D, S: Strategy, O>(duts: Option<&[(String, D)]>, strategy: S, check: impl Fn(&D, &S::Value) -> Result<O, String>) {
    property_with(config(), duts, strategy, check);
}

/// [`property`] under `cfg` (a fixed number of cases, say).
#[track_caller]
pub fn property_with<D, S: Strategy, O>(
    cfg: Config,
    duts: Option<&[(String, D)]>,
    strategy: S,
    check: impl Fn(&D, &S::Value) -> Result<O, String>,
) {
    let Some(duts) = duts else {
        return;
    };
    // As `proptest!` sets its configuration up.
    let mut cfg = contextualize_config(cfg);
    proptest::sugar::force_no_fork(&mut cfg);
    cfg.source_file = Some(Location::caller().file());
    let mut runner = TestRunner::new(cfg);
    let named = strategy.prop_map(|c| NamedArguments("c", c));
    if let Err(e) = runner.run(&named, |NamedArguments(_, c)| {
        on_each(duts, |d| check(d, &c)).map_err(TestCaseError::fail)
    }) {
        panic!("{e}\n{runner}");
    }
}

/// Runs `check` on every backend of `duts` for the seeded cases `0..n` of stream `seed`: case `i`
/// is `make(&mut Rng::for_case(seed, 0, i), i)`, so a failure is reproduced from `(seed, i)`.
/// `None` (the mount's counted skip) runs nothing.
#[track_caller]
pub fn seeded<D, C, O>(
    duts: Option<&[(String, D)]>,
    seed: u64,
    n: u64,
    make: impl Fn(&mut Rng, u64) -> C,
    check: impl Fn(&D, &C) -> Result<O, String>,
) {
    let Some(duts) = duts else {
        return;
    };
    for i in 0..n {
        let c = make(&mut Rng::for_case(seed, 0, i), i);
        if let Err(e) = on_each(duts, |d| check(d, &c)) {
            panic!("seeded case {i} of stream {seed}: {e}");
        }
    }
}

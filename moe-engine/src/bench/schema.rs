//! The schema of `moe bench --json` as data, and the validator CI runs on every JSON it writes.
//!
//! [`FIELDS`] lists every field by path (`rows[].ours.median_us`: the field of every element of
//! `rows`) with its kind; `docs/bench-schema.md` documents the same paths (a test checks that
//! each one appears there). Extra fields are allowed (additions do not bump the version);
//! missing fields, wrong kinds and another `schema_version` are errors.

use serde_json::Value;

use super::report::SCHEMA_VERSION;

/// The kind a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON string.
    Str,
    /// A non-negative integer.
    Uint,
    /// A number.
    Num,
    /// A number or `null`.
    NumOrNull,
    /// A string or `null`.
    StrOrNull,
    /// A non-negative integer or `null`.
    UintOrNull,
    /// `true` or `false`.
    Bool,
    /// An object whose values are all non-negative integers.
    UintMap,
    /// An array (its elements' fields are listed with `[]`).
    Array,
    /// An object or `null` (its fields, when present, are listed below it).
    ObjectOrNull,
}

/// Every field of schema version 1, by path.
pub const FIELDS: &[(&str, Kind)] = &[
    ("schema_version", Kind::Uint),
    ("tool", Kind::Str),
    ("version", Kind::Str),
    ("device.backend", Kind::Str),
    ("device.name", Kind::Str),
    ("device.driver", Kind::StrOrNull),
    ("device.units", Kind::Uint),
    ("device.sm_clock_mhz", Kind::UintOrNull),
    ("device.mem_clock_mhz", Kind::UintOrNull),
    ("device.l2_bytes", Kind::UintOrNull),
    ("device.memory_bytes", Kind::UintOrNull),
    ("device.cublaslt", Kind::Str),
    ("timing.method", Kind::Str),
    ("timing.samples", Kind::Uint),
    ("timing.warmup", Kind::Uint),
    ("timing.flush_bytes", Kind::Uint),
    ("ceilings", Kind::Array),
    ("ceilings[].name", Kind::Str),
    ("ceilings[].unit", Kind::Str),
    ("ceilings[].value", Kind::NumOrNull),
    ("ceilings[].median_us", Kind::NumOrNull),
    ("ceilings[].detail", Kind::Str),
    ("rows", Kind::Array),
    ("rows[].suite", Kind::Str),
    ("rows[].op", Kind::Str),
    ("rows[].shape", Kind::UintMap),
    ("rows[].counts", Kind::Str),
    ("rows[].live_rows", Kind::Uint),
    ("rows[].flops", Kind::Num),
    ("rows[].bytes", Kind::Num),
    ("rows[].config", Kind::Str),
    ("rows[].ours.median_us", Kind::Num),
    ("rows[].ours.p10_us", Kind::Num),
    ("rows[].ours.p90_us", Kind::Num),
    ("rows[].ours.warm_median_us", Kind::NumOrNull),
    ("rows[].ours.samples", Kind::Uint),
    ("rows[].tflops", Kind::NumOrNull),
    ("rows[].gbs", Kind::NumOrNull),
    ("rows[].ceiling", Kind::Str),
    ("rows[].pct_of_ceiling", Kind::NumOrNull),
    ("rows[].baseline", Kind::ObjectOrNull),
    ("rows[].baseline.name", Kind::Str),
    ("rows[].baseline.stats.median_us", Kind::Num),
    ("rows[].baseline.stats.p10_us", Kind::Num),
    ("rows[].baseline.stats.p90_us", Kind::Num),
    ("rows[].baseline.stats.warm_median_us", Kind::NumOrNull),
    ("rows[].baseline.stats.samples", Kind::Uint),
    ("rows[].baseline.check.ok", Kind::Bool),
    ("rows[].baseline.check.detail", Kind::Str),
    ("rows[].baseline_unavailable", Kind::StrOrNull),
    ("rows[].ratio", Kind::NumOrNull),
    ("rows[].check.ok", Kind::Bool),
    ("rows[].check.detail", Kind::Str),
    ("skipped", Kind::Array),
];

fn kind_ok(v: &Value, k: Kind) -> bool {
    match k {
        Kind::Str => v.is_string(),
        Kind::Uint => v.is_u64(),
        Kind::Num => v.is_number(),
        Kind::NumOrNull => v.is_number() || v.is_null(),
        Kind::StrOrNull => v.is_string() || v.is_null(),
        Kind::UintOrNull => v.is_u64() || v.is_null(),
        Kind::Bool => v.is_boolean(),
        Kind::UintMap => v.as_object().is_some_and(|m| m.values().all(Value::is_u64)),
        Kind::Array => v.is_array(),
        Kind::ObjectOrNull => v.is_object() || v.is_null(),
    }
}

/// Checks `path` (dot-separated, `[]` for every element) below `v`; a `null` object on the way
/// (an absent baseline) ends the walk successfully.
fn check_path(v: &Value, parts: &[&str], full: &str, k: Kind, errs: &mut Vec<String>) {
    let Some((first, rest)) = parts.split_first() else {
        if !kind_ok(v, k) {
            errs.push(format!("`{full}`: expected {k:?}, found {v}"));
        }
        return;
    };
    if v.is_null() {
        return;
    }
    let (name, each) = match first.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (*first, false),
    };
    let Some(child) = v.get(name) else {
        errs.push(format!("`{full}`: missing `{name}`"));
        return;
    };
    if each {
        match child.as_array() {
            Some(items) => {
                for item in items {
                    check_path(item, rest, full, k, errs);
                }
            }
            None => errs.push(format!("`{full}`: `{name}` is not an array")),
        }
    } else {
        check_path(child, rest, full, k, errs);
    }
}

/// Validates a `moe bench --json` document against [`FIELDS`] and [`SCHEMA_VERSION`]; the error
/// lists every problem found.
pub fn validate(doc: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    if doc.get("schema_version").and_then(Value::as_u64) != Some(SCHEMA_VERSION) {
        errs.push(format!("`schema_version` must be {SCHEMA_VERSION}"));
    }
    for (path, k) in FIELDS {
        let parts: Vec<&str> = path.split('.').collect();
        check_path(doc, &parts, path, *k, &mut errs);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/bench-schema.md");

    #[test]
    fn every_field_is_documented() {
        for (path, _) in FIELDS {
            assert!(
                DOC.contains(&format!("`{path}`")),
                "docs/bench-schema.md does not document `{path}`"
            );
        }
        assert!(DOC.contains(&format!("schema_version` is {SCHEMA_VERSION}")));
    }

    #[test]
    fn a_wrong_kind_a_missing_field_and_another_version_are_reported() {
        let mut doc = crate::bench::report::BenchReport::default().to_json();
        assert_eq!(validate(&doc), Ok(()));
        doc["timing"]["samples"] = Value::from("thirty");
        doc["schema_version"] = Value::from(2);
        doc.as_object_mut().unwrap().remove("tool");
        let e = validate(&doc).unwrap_err();
        assert!(
            e.contains("timing.samples") && e.contains("schema_version") && e.contains("`tool`"),
            "{e}"
        );
    }
}

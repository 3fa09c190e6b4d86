//! The speech sanitizer's before/after table: every case of `data/sanitizer-cases.jsonl` (one
//! JSON object a line: `rule`, `verbalize`, `input`, `expected`), run on the whole text, character
//! by character, and in random chunks, which must all give the expected text.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use serde_json::Value;
use yap_core::sanitize::{Sanitizer, sanitize};

const CASES: &str = include_str!("data/sanitizer-cases.jsonl");

/// Rules the table must cover, with the fewest cases each.
const RULES: &[(&str, usize)] = &[
    ("colons", 10),
    ("brackets", 5),
    ("arrows", 8),
    ("emoticons", 20),
    ("escapes", 8),
    ("stretched", 10),
    ("emails", 6),
    ("phones", 8),
    ("urls", 8),
    ("temperatures", 5),
    ("percentages", 4),
    ("currency", 10),
    ("units", 10),
    ("emoji", 3),
    ("actions", 3),
    ("markdown", 5),
    ("tokens", 3),
    ("spacing", 10),
    ("numbers", 10),
    ("symbols", 4),
];

/// One row of the table.
struct Case {
    line: usize,
    rule: String,
    verbalize: bool,
    input: String,
    expected: String,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, line) in CASES
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let text = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("line {}: no {k}", i + 1))
                .to_owned()
        };
        out.push(Case {
            line: i + 1,
            rule: text("rule"),
            verbalize: v["verbalize"]
                .as_bool()
                .unwrap_or_else(|| panic!("line {}", i + 1)),
            input: text("input"),
            expected: text("expected"),
        });
    }
    out
}

/// Streams `input` in chunks of 1 to `max` characters chosen by a xorshift generator.
fn streamed(input: &str, verbalize: bool, mut seed: u64, max: u64) -> String {
    let chars: Vec<char> = input.chars().collect();
    let mut s = Sanitizer::new(verbalize);
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let end = (i + 1 + (seed % max) as usize).min(chars.len());
        out.push_str(&s.push(&chars[i..end].iter().collect::<String>()));
        i = end;
    }
    out.push_str(&s.finish());
    out
}

#[test]
fn sanitize_table_holds_whole_and_streamed() {
    let mut failures = Vec::new();
    for c in cases() {
        let mut runs = vec![("whole", sanitize(&c.input, c.verbalize))];
        runs.push(("char by char", streamed(&c.input, c.verbalize, 1, 1)));
        for seed in 1..=24 {
            runs.push((
                "random chunks",
                streamed(&c.input, c.verbalize, seed * 7919, 7),
            ));
        }
        if let Some((how, got)) = runs.into_iter().find(|(_, got)| *got != c.expected) {
            failures.push(format!(
                "line {} [{}, verbalize {}] {how}: {:?}\n    expected {:?}\n    got      {:?}",
                c.line, c.rule, c.verbalize, c.input, c.expected, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sanitize_table_covers_every_rule() {
    let cases = cases();
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    for (rule, min) in RULES {
        let n = cases.iter().filter(|c| c.rule == *rule).count();
        assert!(n >= *min, "rule {rule}: {n} cases, want at least {min}");
    }
    for c in &cases {
        assert!(
            RULES.iter().any(|(r, _)| *r == c.rule),
            "line {}: unknown rule {}",
            c.line,
            c.rule
        );
    }
    let verbal = [
        "emails",
        "phones",
        "urls",
        "temperatures",
        "percentages",
        "currency",
        "units",
    ];
    for rule in verbal {
        assert!(
            cases.iter().any(|c| c.rule == rule && c.verbalize),
            "rule {rule} has no case with verbalization"
        );
    }
}

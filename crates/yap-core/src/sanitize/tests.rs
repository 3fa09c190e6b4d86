//! Unit and property tests of the sanitizer (the before/after table is in
//! `tests/sanitize_table.rs`).

use super::markup::is_pictograph;
use super::*;
use proptest::prelude::*;

/// Pushes `pieces` one by one; returns what each push returned, then what `finish` returned.
fn stream(verbalize: bool, pieces: &[&str]) -> Vec<String> {
    let mut s = Sanitizer::new(verbalize);
    let mut outs: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
    outs.push(s.finish());
    outs
}

#[test]
fn holds_back_only_undecided_text() {
    let mut s = Sanitizer::new(false);
    assert_eq!(s.push("Hello "), "Hello");
    assert_eq!(s.push("*wa"), "");
    assert_eq!(s.push("ves* there"), " there");
    assert_eq!(s.finish(), "");
    let mut s = Sanitizer::new(false);
    assert_eq!(
        s.push("A long reply with no markup at all"),
        "A long reply with no markup at all"
    );
    let mut s = Sanitizer::new(true);
    assert_eq!(
        s.push("Plain words flow even when verbalizing"),
        "Plain words flow even when verbalizing"
    );
}

#[test]
fn holds_a_word_only_while_it_is_undecided() {
    // A stretched word waits for its end from its third identical letter on.
    assert_eq!(
        stream(false, &["so", "oo", "oo", " good"]),
        ["so", "o", "", " good", ""]
    );
    // An emoticon candidate is held until the next character decides it.
    assert_eq!(
        stream(false, &["Nice ", ":", ")", " ok"]),
        ["Nice", "", "", " ok", ""]
    );
    assert_eq!(
        stream(false, &["at 10", ":", "30", " today"]),
        ["at 10", "", "", ":30 today", ""]
    );
    // A URL without verbalization flows up to its first special character, then waits.
    assert_eq!(
        stream(false, &["see https", "://example", ".com", " now"]),
        ["see https", "", "", "://example.com now", ""]
    );
    // `x` could start `xD`: held one character only.
    assert_eq!(stream(false, &["x", "ylophone"]), ["", "xylophone", ""]);
    // With verbalization a number waits for its end, a unit for the word after it.
    assert_eq!(
        stream(true, &["it is 1", "2", " km", " away"]),
        ["it is", "", " twelve", " kilometers away", ""]
    );
    // A phone number waits for its following groups, and is then read digit by digit.
    assert_eq!(
        stream(true, &["call +1", " 415", " 555", " 0100", " now"]),
        [
            "call",
            "",
            "",
            "",
            " plus one, four one five, five five five, zero one zero zero now",
            ""
        ]
    );
    // Money waits for a scale word only while the next word could still be one.
    assert_eq!(
        stream(true, &["only $5", " t", "o", " go"]),
        ["only", "", " five dollars to", " go", ""]
    );
    assert_eq!(
        stream(true, &["$2.5", " mil", "lion", "!"]),
        ["", "", "", "", "two point five million dollars!"]
    );
    // Three digits may start a phone number: held until the next word shows it is not one
    // (and `c` may still be `cm` after a number).
    assert_eq!(
        stream(true, &["I have 100", " c", "ats"]),
        ["I have", " one hundred", " cats", ""]
    );
    // A removed emoticon waits for the next letter: a capital makes it a full stop.
    assert_eq!(
        stream(false, &["Nice :) ", "See", " you"]),
        ["Nice", ". See", " you", ""]
    );
    // An e-mail address is decided at its end.
    assert_eq!(
        stream(true, &["mail jane", ".doe", "@example", ".com", " today"]),
        [
            "mail jane",
            "",
            "",
            "",
            " dot doe at example dot com today",
            ""
        ]
    );
}

#[test]
fn never_holds_more_than_max_hold() {
    let long: String = std::iter::repeat_n("a-", 200).collect();
    let mut s = Sanitizer::new(false);
    let out = s.push(&long);
    assert!(
        out.chars().count() >= 400 - words::MAX_HOLD - 1,
        "held {}",
        400 - out.len()
    );
    let mut s = Sanitizer::new(true);
    let digits: String = std::iter::repeat_n('7', 400).collect();
    assert!(!s.push(&digits).is_empty());
}

#[test]
fn number_words_spells_whole_numbers() {
    assert_eq!(number_words("0"), "zero");
    assert_eq!(number_words("007"), "seven");
    assert_eq!(number_words("72"), "seventy two");
    assert_eq!(number_words("1250"), "one thousand two hundred fifty");
    assert_eq!(number_words("1000000"), "one million");
    assert_eq!(
        number_words("1000000000000000000"),
        "one zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero"
    );
}

/// Sanitizes `text` pushed in pieces cut at `cuts`.
fn chunked(text: &str, cuts: &[usize], verbalize: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    bounds.push(0);
    bounds.push(chars.len());
    bounds.sort_unstable();
    let mut s = Sanitizer::new(verbalize);
    let mut out = String::new();
    for w in bounds.windows(2) {
        let piece: String = chars[w[0]..w[1]].iter().collect();
        out.push_str(&s.push(&piece));
    }
    out.push_str(&s.finish());
    out
}

/// Pieces that make up realistic replies, including every special form the sanitizer reads.
const PIECES: &[&str] = &[
    " ",
    " ",
    " ",
    "\n",
    "Sure",
    "the",
    "cafe",
    "I",
    "you",
    "Hi",
    "ok",
    ".",
    ",",
    "!",
    "?",
    ":",
    ";",
    "(",
    ")",
    "[",
    "]",
    "<",
    ">",
    "-",
    "_",
    "*",
    "/",
    "\\",
    "\"",
    "'",
    "@",
    "+",
    "#",
    "$",
    "%",
    "&",
    "=",
    "^",
    "°",
    "€",
    "→",
    "←",
    "😀",
    ":)",
    ":-(",
    ";)",
    ":D",
    "xD",
    "XD",
    "<3",
    "</3",
    "^_^",
    "-_-",
    "T_T",
    "o_O",
    ":/",
    ":P",
    "->",
    "<-",
    "=>",
    "soooo",
    "hmmmm",
    "www",
    "https://",
    "http://",
    "example",
    ".com",
    ".org",
    "jane.doe",
    "@example.com",
    "e.g.",
    "i.e.",
    "vs",
    "v1.2.3",
    "3.14",
    "10:30",
    "A:1",
    "3:2",
    "+1",
    "415",
    "555",
    "0100",
    "(415)",
    "555-0100",
    "$19.99",
    "$5",
    "million",
    "72°F",
    "-5°C",
    "50%",
    "10",
    "1",
    "km",
    "km/h",
    "kg",
    "mph",
    "GB",
    "1st",
    "2nd",
    "24/7",
    "5-10",
    "\\n",
    "\\\"",
    "/n",
    "y/n",
    "c++",
    "**bold**",
    "*waves*",
    "<end_of_turn>",
    "`code`",
    "# ",
    "- ",
    "snake_case",
    "0.99",
    "1,250",
    "III",
    "Note:",
    "x:D",
    "haha:D",
];

/// A reply made of [`PIECES`].
fn reply() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(PIECES), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn chunking_never_changes_the_result(
        text in "[a-zA-Z0-9 ,.!?*_<>|#$%&\\-\n😀❤️\u{200d}]{0,80}",
        cuts in proptest::collection::vec(0usize..200, 0..12),
        verbalize in any::<bool>(),
    ) {
        prop_assert_eq!(chunked(&text, &cuts, verbalize), sanitize(&text, verbalize));
    }

    #[test]
    fn chunking_never_changes_the_result_on_special_characters(
        text in "[a-zA-Z0-9 :;()\\[\\]<>^_\\-\\\\/@.+°$%€£,!?*#&='\"\n→←xDTowm]{0,100}",
        cuts in proptest::collection::vec(0usize..200, 0..16),
        verbalize in any::<bool>(),
    ) {
        prop_assert_eq!(chunked(&text, &cuts, verbalize), sanitize(&text, verbalize));
    }

    #[test]
    fn chunking_never_changes_the_result_on_replies(
        text in reply(),
        cuts in proptest::collection::vec(0usize..400, 0..24),
        verbalize in any::<bool>(),
    ) {
        prop_assert_eq!(chunked(&text, &cuts, verbalize), sanitize(&text, verbalize));
    }

    #[test]
    fn chunking_never_changes_the_result_on_any_text(
        text in "\\PC{0,80}",
        cuts in proptest::collection::vec(0usize..200, 0..12),
        verbalize in any::<bool>(),
    ) {
        prop_assert_eq!(chunked(&text, &cuts, verbalize), sanitize(&text, verbalize));
    }

    #[test]
    fn output_is_clean(
        text in prop_oneof!["\\PC{0,120}", reply(), "[a-z0-9 :;()<>^_\\-\\\\/@.+°$%*\n]{0,100}"],
        verbalize in any::<bool>(),
    ) {
        let out = sanitize(&text, verbalize);
        prop_assert!(!out.contains("  "), "{:?}", out);
        prop_assert!(!out.starts_with(' ') && !out.ends_with(' '), "{:?}", out);
        prop_assert!(!out.chars().any(|c| is_pictograph(c) || c == '*' || c == '\n'), "{:?}", out);
        prop_assert!(!out.contains([PROTECT, UNPROTECT]), "{:?}", out);
    }
}

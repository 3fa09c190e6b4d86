//! Streaming output sanitizer for speech.
//!
//! Three character-level stages, each holding back only what it must to decide:
//! 1. **markup**: drops emoji and pictographs, `*actions*` (with their text), markdown emphasis
//!    markers (`**`, `__`, `_`, `` ` ``, `~`), heading and bullet markers at line starts, stray
//!    brackets and model formatting tokens such as `<end_of_turn>` or `<|im_end|>`;
//! 2. **spacing**: collapses whitespace (newlines included) to single spaces, drops leading and
//!    trailing space, removes space before `, . ! ? ; : )`, adds one after `, ! ? ; :` (and after
//!    `.` before a capital) where it is missing, and collapses repeated punctuation (`!!!` → `!`,
//!    `.....` → `...`);
//! 3. **verbalize** (optional): numbers, `%`, `$`, `&`, `+`, `=`, `@`, `#` into words.
//!
//! Each stage sees one character at a time, so the output does not depend on how the text was
//! chunked: the concatenation of everything [`Sanitizer::push`] and [`Sanitizer::finish`] return
//! equals [`sanitize`] of the whole text.

/// Longest `*action*` span (characters) before the `*` is treated as stray.
const MAX_ACTION: usize = 80;
/// Longest `<token>` before `<` is treated as text.
const MAX_TAG: usize = 40;

fn is_pictograph(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // emoji, pictographs, transport, flags (regional indicators)
        | 0x2600..=0x27BF   // misc symbols, dingbats
        | 0x2B00..=0x2BFF   // arrows & symbols (⭐ etc.)
        | 0x2300..=0x23FF   // misc technical (⌚ ⏰)
        | 0xFE00..=0xFE0F   // variation selectors
        | 0x200D            // zero-width joiner
        | 0x20E3            // combining keycap
        | 0xE0020..=0xE007F // tag characters
        | 0x2190..=0x21FF   // arrows
        | 0x25A0..=0x25FF   // geometric shapes (bullets)
        | 0x2022            // bullet
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Markup {
    Normal,
    /// Saw one `*`; the next char decides (second `*` = emphasis, else an action opens).
    Star,
    /// Inside `*...` or `[...`, holding the text until the closing char.
    Action(String, char),
    /// A `-` or `>` at a line start: a list or quote marker when a space follows.
    LineMarker(char),
    /// Inside `<...`, holding the text.
    Tag(String),
    /// At a line start after `#`s or a bullet dash: skip the marker's spaces.
    SkipMarker,
}

#[derive(Debug, Clone)]
struct MarkupStage {
    state: Markup,
    line_start: bool,
}

impl MarkupStage {
    fn new() -> Self {
        Self {
            state: Markup::Normal,
            line_start: true,
        }
    }

    fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        match std::mem::replace(&mut self.state, Markup::Normal) {
            Markup::Star => {
                if c == '*' {
                    // `**` emphasis marker: dropped, text kept.
                } else if c.is_whitespace() {
                    // A bullet (`* item`) or a lone star: dropped.
                    self.normal(c, out);
                } else {
                    self.state = Markup::Action(String::new(), '*');
                    self.step(c, out);
                }
            }
            Markup::LineMarker(m) => {
                if c == ' ' || c == '\t' {
                    self.state = Markup::SkipMarker;
                } else {
                    self.emit(m, out);
                    self.step(c, out);
                }
            }
            Markup::Action(mut held, close) => {
                if c == close {
                    // Closed: the whole action is dropped.
                } else if c == '\n' || held.chars().count() >= MAX_ACTION {
                    // Not an action after all: the star is dropped, the text goes on.
                    for h in held.chars() {
                        self.normal(h, out);
                    }
                    self.normal(c, out);
                } else {
                    held.push(c);
                    self.state = Markup::Action(held, close);
                }
            }
            Markup::Tag(mut held) => {
                let tag_char =
                    c.is_ascii_alphanumeric() || matches!(c, '|' | '_' | '/' | '-' | '▁' | '.');
                if c == '>' && !held.is_empty() {
                    // A formatting token: dropped.
                } else if tag_char && held.chars().count() < MAX_TAG {
                    held.push(c);
                    self.state = Markup::Tag(held);
                } else {
                    // Plain text (`a < b`): `<` stays.
                    self.emit('<', out);
                    for h in held.chars() {
                        self.normal(h, out);
                    }
                    self.step(c, out);
                }
            }
            Markup::SkipMarker => {
                if c == ' ' || c == '\t' || c == '#' {
                    self.state = Markup::SkipMarker;
                } else {
                    self.step(c, out);
                }
            }
            Markup::Normal => self.normal(c, out),
        }
    }

    fn normal(&mut self, c: char, out: &mut impl FnMut(char)) {
        let at_line_start = self.line_start;
        if c == '\n' {
            self.line_start = true;
            out(c);
            return;
        }
        if !(c == ' ' || c == '\t') {
            self.line_start = false;
        }
        match c {
            '*' => self.state = Markup::Star,
            '<' => self.state = Markup::Tag(String::new()),
            '[' => self.state = Markup::Action(String::new(), ']'),
            '#' if at_line_start => self.state = Markup::SkipMarker,
            '-' | '>' if at_line_start => self.state = Markup::LineMarker(c),
            '_' | '`' | '~' | ']' | '{' | '}' | '|' | '\\' => {}
            c if is_pictograph(c) => {}
            c => out(c),
        }
    }

    fn emit(&mut self, c: char, out: &mut impl FnMut(char)) {
        self.line_start = false;
        out(c);
    }

    fn finish(&mut self, out: &mut impl FnMut(char)) {
        match std::mem::replace(&mut self.state, Markup::Normal) {
            Markup::Action(held, _) => {
                for h in held.chars() {
                    self.normal(h, out);
                }
            }
            Markup::LineMarker(m) => self.emit(m, out),
            Markup::Tag(held) => {
                self.emit('<', out);
                for h in held.chars() {
                    self.normal(h, out);
                }
            }
            Markup::Star | Markup::SkipMarker | Markup::Normal => {}
        }
    }
}

fn is_closing_punct(c: char) -> bool {
    matches!(c, ',' | '.' | '!' | '?' | ';' | ':' | ')')
}

#[derive(Debug, Clone, Default)]
struct SpacingStage {
    /// Last emitted char.
    last: Option<char>,
    /// The one before it.
    before_last: Option<char>,
    /// Whitespace seen since the last emitted char.
    pending_space: bool,
    /// Consecutive dots just emitted.
    dots: usize,
}

impl SpacingStage {
    fn push_out(&mut self, c: char, out: &mut impl FnMut(char)) {
        self.before_last = self.last;
        self.last = Some(c);
        out(c);
    }

    fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        if c.is_whitespace() {
            self.pending_space = self.last.is_some();
            return;
        }
        if is_closing_punct(c) {
            if self.last.is_none() {
                return; // a reply never starts with punctuation
            }
            let collapse = match c {
                '.' => self.last == Some('.') && self.dots >= 3,
                ')' => false,
                _ => self.last == Some(c),
            };
            if collapse {
                self.pending_space = false;
                return;
            }
            self.pending_space = false;
            self.dots = if c == '.' { self.dots + 1 } else { 0 };
            self.push_out(c, out);
            return;
        }
        let space = if self.pending_space {
            self.last != Some('(')
        } else {
            match self.last {
                Some(',' | ':') => {
                    !(self.before_last.is_some_and(|b| b.is_ascii_digit()) && c.is_ascii_digit())
                }
                Some('!' | '?' | ';') => c.is_alphanumeric(),
                Some('.') => c.is_uppercase() && self.before_last.is_some_and(|b| b.is_lowercase()),
                _ => false,
            }
        };
        if space && self.last.is_some() {
            self.push_out(' ', out);
        }
        self.pending_space = false;
        self.dots = 0;
        self.push_out(c, out);
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn below_thousand(n: u64, words: &mut Vec<String>) {
    let (h, r) = (n / 100, n % 100);
    if h > 0 {
        words.push(format!("{} hundred", ONES[h as usize]));
    }
    if r > 0 || h == 0 {
        if r < 20 {
            if r > 0 || words.is_empty() {
                words.push(ONES[r as usize].to_owned());
            }
        } else if r % 10 == 0 {
            words.push(TENS[(r / 10) as usize].to_owned());
        } else {
            words.push(format!(
                "{}-{}",
                TENS[(r / 10) as usize],
                ONES[(r % 10) as usize]
            ));
        }
    }
}

/// Spells a whole number in English words (digits beyond a trillion are read one by one).
pub fn number_words(digits: &str) -> String {
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return "zero".into();
    }
    let Ok(mut n) = digits.parse::<u64>() else {
        return digit_words(digits);
    };
    if n >= 1_000_000_000_000_000 {
        return digit_words(digits);
    }
    let scales = ["", " thousand", " million", " billion", " trillion"];
    let mut groups = Vec::new();
    while n > 0 {
        groups.push(n % 1000);
        n /= 1000;
    }
    let mut parts = Vec::new();
    for (i, g) in groups.iter().enumerate().rev() {
        if *g == 0 {
            continue;
        }
        let mut w = Vec::new();
        below_thousand(*g, &mut w);
        parts.push(format!("{}{}", w.join(" "), scales[i]));
    }
    parts.join(" ")
}

fn digit_words(digits: &str) -> String {
    digits
        .chars()
        .filter_map(|d| d.to_digit(10).map(|v| ONES[v as usize]))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, Default)]
struct VerbalizeStage {
    /// Digits of the number being read (separators removed).
    int: String,
    /// Fraction digits after a decimal point.
    frac: Option<String>,
    /// A `,` or `.` right after digits, undecided (separator or punctuation).
    sep: Option<char>,
    /// Saw `$` before the number.
    dollars: bool,
    last: Option<char>,
    need_space: bool,
}

impl VerbalizeStage {
    fn emit(&mut self, c: char, out: &mut impl FnMut(char)) {
        if self.need_space && c.is_alphanumeric() {
            out(' ');
        }
        self.need_space = false;
        self.last = Some(c);
        out(c);
    }

    fn word(&mut self, w: &str, out: &mut impl FnMut(char)) {
        if self.last.is_some_and(|l| !l.is_whitespace() && l != '(') {
            out(' ');
        }
        for c in w.chars() {
            out(c);
        }
        self.last = w.chars().last();
        self.need_space = true;
    }

    fn flush_number(&mut self, out: &mut impl FnMut(char)) {
        if self.int.is_empty() {
            if self.dollars {
                self.dollars = false;
                self.word("dollars", out);
            }
            return;
        }
        let mut words = number_words(&self.int);
        if let Some(frac) = self.frac.take() {
            words.push_str(" point ");
            words.push_str(&digit_words(&frac));
        }
        if self.dollars {
            words.push_str(if self.int == "1" {
                " dollar"
            } else {
                " dollars"
            });
            self.dollars = false;
        }
        self.int.clear();
        self.word(&words, out);
        if let Some(s) = self.sep.take() {
            self.emit(s, out);
        }
    }

    fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        if c.is_ascii_digit() {
            if let Some(s) = self.sep.take() {
                match (s, &mut self.frac) {
                    ('.', None) => self.frac = Some(String::new()),
                    (',', None) => {}
                    _ => {
                        self.sep = Some(s);
                        self.flush_number(out);
                    }
                }
            }
            match &mut self.frac {
                Some(f) => f.push(c),
                None => self.int.push(c),
            }
            return;
        }
        if !self.int.is_empty() && self.sep.is_none() && (c == '.' || c == ',') {
            self.sep = Some(c);
            return;
        }
        self.flush_number(out);
        match c {
            '%' => self.word("percent", out),
            '&' => self.word("and", out),
            '+' => self.word("plus", out),
            '=' => self.word("equals", out),
            '@' => self.word("at", out),
            '#' => self.word("number", out),
            '$' => self.dollars = true,
            c if c.is_whitespace() => {
                if self.last.is_some_and(|l| !l.is_whitespace()) {
                    self.need_space = false;
                    self.last = Some(' ');
                    out(' ');
                }
            }
            c => self.emit(c, out),
        }
    }

    fn finish(&mut self, out: &mut impl FnMut(char)) {
        self.flush_number(out);
    }
}

/// An incremental sanitizer for one reply.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    markup: MarkupStage,
    spacing: SpacingStage,
    verbalize: Option<VerbalizeStage>,
}

impl Sanitizer {
    /// A sanitizer; `verbalize` turns numbers and symbols into words.
    pub fn new(verbalize: bool) -> Self {
        Self {
            markup: MarkupStage::new(),
            spacing: SpacingStage::default(),
            verbalize: verbalize.then(VerbalizeStage::default),
        }
    }

    /// Feeds a chunk; returns the text that is decided.
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            self.feed(c, &mut out);
        }
        out
    }

    fn feed(&mut self, c: char, out: &mut String) {
        let Self {
            markup,
            spacing,
            verbalize,
        } = self;
        markup.step(c, &mut |m| {
            spacing.step(m, &mut |s| match verbalize {
                Some(v) => v.step(s, &mut |x| out.push(x)),
                None => out.push(s),
            })
        });
    }

    /// Ends the reply; returns what was still held back.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        let Self {
            markup,
            spacing,
            verbalize,
        } = self;
        markup.finish(&mut |m| {
            spacing.step(m, &mut |s| match verbalize {
                Some(v) => v.step(s, &mut |x| out.push(x)),
                None => out.push(s),
            })
        });
        if let Some(v) = verbalize {
            v.finish(&mut |x| out.push(x));
        }
        out
    }
}

/// Sanitizes a whole text at once.
pub fn sanitize(text: &str, verbalize: bool) -> String {
    let mut s = Sanitizer::new(verbalize);
    let mut out = s.push(text);
    out.push_str(&s.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CASES: &[(&str, &str)] = &[
        ("Hello there!", "Hello there!"),
        ("  Hello   there  ", "Hello there"),
        ("Hi 😀 there", "Hi there"),
        ("Great job! 🎉🎉", "Great job!"),
        ("I love you ❤️", "I love you"),
        ("👍", ""),
        ("Family: 👨‍👩‍👧 fun", "Family: fun"),
        ("*smiles* Hi there", "Hi there"),
        ("Hi *waves happily* how are you?", "Hi how are you?"),
        ("This is **really** good", "This is really good"),
        ("This is __very__ nice", "This is very nice"),
        ("Use `code` here", "Use code here"),
        ("~~strike~~ this", "strike this"),
        ("# Title\nText", "Title Text"),
        ("- one\n- two", "one two"),
        ("* item one\n* item two", "item one item two"),
        ("Wow!!!", "Wow!"),
        ("Really???", "Really?"),
        ("What?!", "What?!"),
        ("Wait.....", "Wait..."),
        ("Hmm...", "Hmm..."),
        ("Hello , world", "Hello, world"),
        ("Hello ,world", "Hello, world"),
        ("Yes.Sure", "Yes. Sure"),
        ("Wait!What", "Wait! What"),
        ("It costs 3.50 now", "It costs 3.50 now"),
        ("Pi is 3.14159", "Pi is 3.14159"),
        ("At 12:30 today", "At 12:30 today"),
        ("1,000 people", "1,000 people"),
        ("e.g. this", "e.g. this"),
        ("Line one\nLine two", "Line one Line two"),
        ("Tabs\t\there", "Tabs here"),
        ("Done<end_of_turn>", "Done"),
        ("Done<|im_end|>", "Done"),
        ("a < b and c", "a < b and c"),
        ("[laughs] okay", "okay"),
        ("{json} stuff", "json stuff"),
        ("-5 degrees", "-5 degrees"),
        ("> quoted", "quoted"),
        ("( hello )", "(hello)"),
        ("lonely * star", "lonely star"),
        ("unclosed *action never ends", "unclosed action never ends"),
        ("Hey,,, you", "Hey, you"),
        ("Why ?", "Why?"),
        (", leading comma", "leading comma"),
        ("Ok ; fine", "Ok; fine"),
        ("smile :)", "smile:)"),
        ("café naïve", "café naïve"),
        ("", ""),
    ];

    const VERBAL: &[(&str, &str)] = &[
        ("I have 3 cats", "I have three cats"),
        ("It is 50% off", "It is fifty percent off"),
        ("It costs $5", "It costs five dollars"),
        ("It costs $1", "It costs one dollar"),
        ("Pi is 3.14", "Pi is three point one four"),
        ("In 2024.", "In two thousand twenty-four."),
        ("1,250 people", "one thousand two hundred fifty people"),
        ("Tom & Jerry", "Tom and Jerry"),
        ("2+2=4", "two plus two equals four"),
        ("me@home", "me at home"),
        ("We're #1", "We're number one"),
        ("1, 2, 3", "one, two, three"),
        ("101 dalmatians", "one hundred one dalmatians"),
        ("7000000", "seven million"),
    ];

    #[test]
    fn table() {
        for (input, expected) in CASES {
            assert_eq!(sanitize(input, false), *expected, "input {input:?}");
        }
        assert!(CASES.len() + VERBAL.len() >= 40);
    }

    #[test]
    fn verbalize_table() {
        for (input, expected) in VERBAL {
            assert_eq!(sanitize(input, true), *expected, "input {input:?}");
        }
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
    }

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
        fn output_is_clean(text in "\\PC{0,120}") {
            let out = sanitize(&text, false);
            prop_assert!(!out.contains("  "));
            prop_assert!(!out.starts_with(' ') && !out.ends_with(' '));
            prop_assert!(!out.chars().any(|c| is_pictograph(c) || c == '*' || c == '\n'));
        }
    }
}

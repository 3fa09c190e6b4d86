//! Verbalization: numbers, money, temperatures, percentages, units, times, ratios, ranges,
//! fractions, ordinals, phone numbers, e-mail addresses, hosts and symbols as English words.
//! Pure functions over one held word; the word stage decides what is held.

use super::lexicon::{ABBREVIATIONS, UNITS, currency, per_word, unit_words};

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

/// Words of a number below a thousand.
fn below_thousand(n: u64, words: &mut Vec<&'static str>) {
    let (h, r) = (n / 100, n % 100);
    if h > 0 {
        words.push(ONES[h as usize % 20]);
        words.push("hundred");
    }
    if r >= 20 {
        words.push(TENS[(r / 10) as usize % 10]);
        if r % 10 > 0 {
            words.push(ONES[(r % 10) as usize]);
        }
    } else if r > 0 || h == 0 {
        words.push(ONES[r as usize % 20]);
    }
}

/// Spells a whole number in English words (digits beyond a quadrillion are read one by one).
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
    let scales = ["", "thousand", "million", "billion", "trillion"];
    let mut groups = Vec::new();
    while n > 0 {
        groups.push(n % 1000);
        n /= 1000;
    }
    let mut words = Vec::new();
    for (i, g) in groups.iter().enumerate().rev() {
        if *g == 0 {
            continue;
        }
        below_thousand(*g, &mut words);
        if let Some(s) = scales.get(i).filter(|s| !s.is_empty()) {
            words.push(s);
        }
    }
    words.join(" ")
}

/// Reads digits one by one ("four one five").
pub(super) fn digit_words(digits: &str) -> String {
    digits
        .chars()
        .filter_map(|d| d.to_digit(10).map(|v| ONES[v as usize]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ordinal form of spelled number words ("twenty one" → "twenty first").
fn ordinal_words(words: &str) -> String {
    let (head, last) = match words.rsplit_once(' ') {
        Some((h, l)) => (format!("{h} "), l),
        None => (String::new(), words),
    };
    let last = match last {
        "one" => "first".to_owned(),
        "two" => "second".to_owned(),
        "three" => "third".to_owned(),
        "five" => "fifth".to_owned(),
        "eight" => "eighth".to_owned(),
        "nine" => "ninth".to_owned(),
        "twelve" => "twelfth".to_owned(),
        l => match l.strip_suffix('y') {
            Some(stem) => format!("{stem}ieth"),
            None => format!("{l}th"),
        },
    };
    head + &last
}

/// The plural of a number word ("ninety" → "nineties", "six" → "sixes").
fn plural(w: &str) -> String {
    match w.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if w.ends_with('x') => format!("{w}es"),
        None => format!("{w}s"),
    }
}

/// A decade: "80" → "eighties", "1990" → "nineteen nineties", "2000" → "two thousands";
/// "100s" → "hundreds".
fn decade(int: &str) -> Option<String> {
    if !int.ends_with('0') || int.starts_with('0') {
        return None;
    }
    match int {
        "100" => return Some("hundreds".into()),
        "1000" => return Some("thousands".into()),
        "2000" => return Some("two thousands".into()),
        _ if int.len() == 3 => return Some(plural(&number_words(int))),
        _ => {}
    }
    let (century, years) = match int.len() {
        2 => ("", int),
        4 if !int.starts_with("20") || int.ends_with("00") => int.split_at(2),
        4 => ("twenty", int.get(2..)?),
        _ => return None,
    };
    let century = match century {
        "" | "twenty" => century.to_owned(),
        c if years == "00" => return Some(format!("{} hundreds", number_words(c))),
        c => number_words(c),
    };
    let years = if years == "00" {
        "hundred".to_owned()
    } else {
        number_words(years)
    };
    let spoken = plural(&years);
    Some(if century.is_empty() {
        spoken
    } else {
        format!("{century} {spoken}")
    })
}

/// Spoken text under construction: words are separated by single spaces, punctuation sticks to
/// the word before it.
#[derive(Debug, Default)]
pub(super) struct Spoken {
    /// The text so far.
    pub(super) text: String,
    /// The last piece was a word: a letter or digit right after it needs a space.
    need_space: bool,
    /// Last visible character (protection marks do not count).
    last: Option<char>,
}

impl Spoken {
    /// Appends a word (or several), spaced from what precedes it.
    pub(super) fn word(&mut self, w: &str) {
        if w.is_empty() {
            return;
        }
        if self.need_space || self.last.is_some_and(char::is_alphanumeric) {
            self.text.push(' ');
        }
        self.text.push_str(w);
        self.last = w.chars().last();
        self.need_space = true;
    }

    /// Appends one character as written.
    pub(super) fn ch(&mut self, c: char) {
        if self.need_space && c.is_alphanumeric() {
            self.text.push(' ');
        }
        self.need_space = false;
        self.last = Some(c);
        self.text.push(c);
    }

    /// Appends text that must reach the output unchanged (a kept URL or e-mail address).
    pub(super) fn verbatim(&mut self, raw: &str) {
        if self.need_space {
            self.text.push(' ');
        }
        self.need_space = false;
        self.text.push(super::PROTECT);
        self.text.push_str(raw);
        self.text.push(super::UNPROTECT);
        self.last = raw.chars().last();
    }
}

/// A parsed number: sign, integer digits, fraction digits, or three or more dotted groups.
#[derive(Debug, Default, Clone)]
struct Num {
    neg: bool,
    int: String,
    frac: Option<String>,
    dotted: Vec<String>,
}

impl Num {
    /// Whether it is exactly one (a singular unit follows).
    fn is_one(&self) -> bool {
        !self.neg && self.frac.is_none() && self.dotted.is_empty() && self.int == "1"
    }

    /// The number in words ("minus three point one four", "one dot two dot three").
    fn words(&self) -> String {
        let mut w = String::new();
        if self.neg {
            w.push_str("minus ");
        }
        if !self.dotted.is_empty() {
            let groups: Vec<String> = self.dotted.iter().map(|g| int_words(g)).collect();
            w.push_str(&groups.join(" dot "));
            return w;
        }
        if self.int.is_empty() {
            w.push_str("point ");
        } else {
            w.push_str(&int_words(&self.int));
        }
        if let Some(f) = &self.frac {
            if !self.int.is_empty() {
                w.push_str(" point ");
            }
            w.push_str(&digit_words(f));
        }
        w
    }
}

/// Integer digits in words; a leading zero means a code read digit by digit ("007").
fn int_words(d: &str) -> String {
    if d.len() > 1 && d.starts_with('0') {
        digit_words(d)
    } else {
        number_words(d)
    }
}

/// How many digits follow from `i`.
fn digits_at(s: &[char], i: usize) -> usize {
    s.get(i..)
        .map_or(0, |t| t.iter().take_while(|c| c.is_ascii_digit()).count())
}

/// Whether a digit is at `i`.
fn is_digit_at(s: &[char], i: usize) -> bool {
    s.get(i).is_some_and(char::is_ascii_digit)
}

/// Parses digits at `i`: thousands commas (`1,250`), a decimal part, or dotted groups.
fn parse_num(s: &[char], mut i: usize) -> Option<(Num, usize)> {
    let mut num = Num::default();
    let n = digits_at(s, i);
    num.int = s.get(i..i + n)?.iter().collect();
    i += n;
    if n > 0 && n <= 3 {
        while s.get(i) == Some(&',') && digits_at(s, i + 1) == 3 {
            num.int.extend(s.get(i + 1..i + 4)?);
            i += 4;
        }
    }
    let mut groups = Vec::new();
    while s.get(i) == Some(&'.') && is_digit_at(s, i + 1) {
        let m = digits_at(s, i + 1);
        groups.push(s.get(i + 1..i + 1 + m)?.iter().collect::<String>());
        i += 1 + m;
    }
    if n == 0 && groups.is_empty() {
        return None;
    }
    match groups.len() {
        0 => {}
        1 => num.frac = groups.pop(),
        _ => {
            num.dotted.push(std::mem::take(&mut num.int));
            num.dotted.extend(groups);
        }
    }
    Some((num, i))
}

/// Money in words: "nineteen dollars and ninety nine cents", "two point five million dollars".
fn money_words(cur: char, num: &Num, scale: Option<&str>) -> String {
    let Some((_, one, many, sub_one, sub_many)) = currency(cur) else {
        return num.words();
    };
    let unit = if num.is_one() && scale.is_none() {
        one
    } else {
        many
    };
    let sign = if num.neg { "minus " } else { "" };
    let plain = Num {
        neg: false,
        ..num.clone()
    };
    if let Some(s) = scale {
        return format!("{sign}{} {s} {unit}", plain.words());
    }
    let cents = match &num.frac {
        Some(f) if f.len() <= 2 && !sub_many.is_empty() && num.dotted.is_empty() => {
            format!("{f:0<2}")
        }
        _ => return format!("{sign}{} {unit}", plain.words()),
    };
    let whole = Num {
        frac: None,
        ..plain
    };
    let int_zero = whole.int.trim_start_matches('0').is_empty();
    let whole_unit = if whole.is_one() { one } else { many };
    let sub = if cents == "01" { sub_one } else { sub_many };
    let cents_words = number_words(&cents);
    match (int_zero, cents == "00") {
        (true, true) => format!("{sign}zero {many}"),
        (true, false) => format!("{sign}{cents_words} {sub}"),
        (false, true) => format!("{sign}{} {whole_unit}", whole.words()),
        (false, false) => format!(
            "{sign}{} {whole_unit} and {cents_words} {sub}",
            whole.words()
        ),
    }
}

/// A clock time ("ten thirty", "ten oh five", "ten o'clock") or a ratio ("three to two").
fn time_or_ratio(h: &str, m: &str) -> String {
    let hours = h.parse::<u32>().unwrap_or(99);
    let mins = m.parse::<u32>().unwrap_or(99);
    if h.len() <= 2 && m.len() == 2 && hours <= 24 && mins <= 59 {
        let hw = number_words(h);
        return match m.strip_prefix('0') {
            Some("0") => format!("{hw} o'clock"),
            Some(d) => format!("{hw} oh {}", number_words(d)),
            None => format!("{hw} {}", number_words(m)),
        };
    }
    format!("{} to {}", int_words(h), int_words(m))
}

/// A fraction: "one half", "three quarters", "nine out of ten", else both numbers ("twenty four seven").
fn fraction(a: &str, b: &str) -> String {
    let (x, y) = (a.parse::<u64>().unwrap_or(0), b.parse::<u64>().unwrap_or(0));
    match (x, y) {
        (1, 2) => "one half".into(),
        (1, 3) => "one third".into(),
        (2, 3) => "two thirds".into(),
        (1, 4) => "one quarter".into(),
        (3, 4) => "three quarters".into(),
        (x, y) if x >= 1 && x <= y && y <= 10 => {
            format!("{} out of {}", number_words(a), number_words(b))
        }
        _ => format!("{} {}", int_words(a), int_words(b)),
    }
}

/// The letters from `i` on.
fn letters_at(s: &[char], i: usize) -> String {
    s.get(i..)
        .map(|t| t.iter().take_while(|c| c.is_alphabetic()).collect())
        .unwrap_or_default()
}

/// Whether `pat` is at `i` and ends a letter run (`km` in `10km/h` no, in `10km.` yes).
fn match_at(s: &[char], i: usize, pat: &str) -> bool {
    let n = pat.chars().count();
    s.get(i..i + n)
        .is_some_and(|t| t.iter().copied().eq(pat.chars()))
        && s.get(i + n).is_none_or(|c| !c.is_alphabetic() && *c != '/')
}

/// A scale glued to an amount of money (`$5k`, `$2.5M`, `$3bn`): (word, characters).
fn money_scale(s: &[char], i: usize) -> Option<(&'static str, usize)> {
    [
        ("k", "thousand"),
        ("K", "thousand"),
        ("M", "million"),
        ("m", "million"),
        ("mn", "million"),
    ]
    .into_iter()
    .chain([("B", "billion"), ("b", "billion"), ("bn", "billion")])
    .find(|(p, _)| match_at(s, i, p))
    .map(|(p, w)| (w, p.len()))
}

/// `/unit` after an amount: ("per kilogram", characters).
fn per_unit(s: &[char], i: usize) -> Option<(String, usize)> {
    if s.get(i) != Some(&'/') {
        return None;
    }
    let unit = letters_at(s, i + 1);
    let w = per_word(&unit).filter(|_| match_at(s, i + 1, &unit))?;
    Some((format!("per {w}"), 1 + unit.chars().count()))
}

/// A suffix glued to a plain number (`%`, `°F`, `km`, `km/h`, `st`, `x`, `k`): (words,
/// characters, whether the words replace the number's: ordinals).
fn number_suffix(s: &[char], i: usize, num: &Num) -> Option<(String, usize, bool)> {
    let one = num.is_one();
    let deg = if one { "degree" } else { "degrees" };
    let c = *s.get(i)?;
    let found = match c {
        '%' => ("percent".to_owned(), 1),
        '℃' => (format!("{deg} Celsius"), 1),
        '℉' => (format!("{deg} Fahrenheit"), 1),
        '°' if match_at(s, i + 1, "C") => (format!("{deg} Celsius"), 2),
        '°' if match_at(s, i + 1, "F") => (format!("{deg} Fahrenheit"), 2),
        '°' => (deg.to_owned(), 1),
        '/' => return per_unit(s, i).map(|(w, n)| (w, n, false)),
        _ => {
            let letters = letters_at(s, i);
            let len = letters.chars().count();
            if let Some((abbr, w1, wn)) = UNITS
                .iter()
                .find(|u| u.0.contains('/') && match_at(s, i, u.0))
            {
                let w = if one { *w1 } else { *wn };
                return Some((w.to_owned(), abbr.chars().count(), false));
            }
            let whole = num.frac.is_none() && num.dotted.is_empty() && !num.int.is_empty();
            let ordinal = matches!(letters.to_lowercase().as_str(), "st" | "nd" | "rd" | "th");
            if ordinal && whole && match_at(s, i, &letters) {
                return Some((ordinal_words(&int_words(&num.int)), len, true));
            }
            if !match_at(s, i, &letters) {
                return None;
            }
            if letters == "s" {
                return decade(&num.int).map(|w| (w, 1, true));
            }
            match letters.as_str() {
                "k" => ("thousand".to_owned(), 1),
                "x" => ("times".to_owned(), 1),
                l => (unit_words(l, one)?.to_owned(), len),
            }
        }
    };
    Some((found.0, found.1, false))
}

/// An amount of money: currency symbol and number.
#[derive(Debug, Clone)]
pub(super) struct Money {
    cur: char,
    num: Num,
}

impl Money {
    /// A whole word that is just an amount (`$5`, `€2.50`, `-$3`, `5€`).
    pub(super) fn parse(w: &[char]) -> Option<Money> {
        let (m, end) = amount_head(w)?;
        (end == w.len()).then_some(m)
    }

    /// The amount in words, with an optional scale word ("two point five million dollars").
    pub(super) fn words(&self, scale: Option<&str>) -> String {
        money_words(self.cur, &self.num, scale)
    }
}

/// Sign, currency and number at the start of `s` (currency before or after the number).
fn amount_head(s: &[char]) -> Option<(Money, usize)> {
    let mut j = 0;
    let neg = s.first() == Some(&'-');
    j += usize::from(neg);
    let mut cur = s.get(j).and_then(|&c| currency(c)).map(|e| e.0);
    j += usize::from(cur.is_some());
    let (mut num, mut end) = parse_num(s, j)?;
    num.neg = neg;
    if cur.is_none() {
        cur = s.get(end).and_then(|&c| currency(c)).map(|e| e.0);
        end += usize::from(cur.is_some());
    }
    Some((Money { cur: cur?, num }, end))
}

/// The digits from `i` on, and how many there are.
fn digits_str(s: &[char], i: usize) -> (String, usize) {
    let n = digits_at(s, i);
    (s.get(i..i + n).unwrap_or(&[]).iter().collect(), n)
}

/// A clock time or ratio: `:` and digits at `j`, after the hours `h`. Its words and end.
fn colon_at(s: &[char], j: usize, h: &str) -> Option<(String, usize)> {
    if s.get(j) != Some(&':') {
        return None;
    }
    let (mins, m) = digits_str(s, j + 1);
    (m > 0).then(|| (time_or_ratio(h, &mins), j + 1 + m))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// An ISO date after the year `y`: `-05-01` at `j` → "May first, two thousand twenty four".
fn iso_date(s: &[char], j: usize, y: &str) -> Option<(String, usize)> {
    let (month, m) = digits_str(s, j + 1);
    let (day, d) = digits_str(s, j + 4);
    let ok = y.len() == 4 && s.get(j) == Some(&'-') && m == 2 && s.get(j + 3) == Some(&'-');
    let month_name = MONTHS.get(month.parse::<usize>().ok()?.checked_sub(1)?)?;
    let day_n = day.parse::<u32>().ok()?;
    (ok && d == 2 && (1..=31).contains(&day_n)).then(|| {
        let day_words = ordinal_words(&number_words(&day));
        (
            format!("{month_name} {day_words}, {}", number_words(y)),
            j + 6,
        )
    })
}

/// Times (`10:30`, `8:00-22:00`), ratios (`3:2`), ISO dates and fractions (`1/2`, `4.5/5`) after
/// a number ending at `j`: their words and end.
fn compound(s: &[char], j: usize, num: &Num) -> Option<(String, usize)> {
    let plain = !num.neg && num.frac.is_none() && num.dotted.is_empty();
    if plain && let Some((w, e)) = colon_at(s, j, &num.int) {
        let (h2, n2) = digits_str(s, e + 1);
        return match colon_at(s, e + 1 + n2, &h2) {
            Some((w2, e2)) if n2 > 0 && matches!(s.get(e), Some('-' | '–')) => {
                Some((format!("{w} to {w2}"), e2))
            }
            _ => Some((w, e)),
        };
    }
    if plain && let Some(date) = iso_date(s, j, &num.int) {
        return Some(date);
    }
    let (den, m) = digits_str(s, j + 1);
    if s.get(j) != Some(&'/') || m == 0 || num.neg || !num.dotted.is_empty() {
        return None;
    }
    let words = match num.frac {
        Some(_) => format!("{} out of {}", num.words(), int_words(&den)),
        None => fraction(&num.int, &den),
    };
    Some((words, j + 1 + m))
}

/// Reads a number expression at `i` (sign, currency, number, range, time, fraction, suffix) into
/// `sp`. Returns the end index and, when it ends in a bare number, whether that number is one.
fn number_expr(s: &[char], i: usize, sp: &mut Spoken) -> Option<(usize, Option<bool>)> {
    let rest = s.get(i..)?;
    let neg = rest.first() == Some(&'-');
    let pre = usize::from(neg);
    let cur = rest.get(pre).and_then(|&c| currency(c)).map(|e| e.0);
    let (mut num, mut j) = parse_num(rest, pre + usize::from(cur.is_some()))?;
    num.neg = neg;
    if let Some((words, end)) = compound(rest, j, &num).filter(|_| cur.is_none()) {
        sp.word(&words);
        return Some((i + end, None));
    }
    let mut range = None;
    if matches!(rest.get(j), Some('-' | '–')) {
        let k = j + 1 + usize::from(rest.get(j + 1).is_some_and(|&c| currency(c).is_some()));
        if let Some((hi, e)) = parse_num(rest, k) {
            range = Some(hi);
            j = e;
        }
    }
    let cur = cur.or_else(|| {
        let c = rest.get(j).and_then(|&c| currency(c)).map(|e| e.0);
        j += usize::from(c.is_some());
        c
    });
    if let Some(c) = cur {
        let scale = money_scale(rest, j);
        j += scale.map_or(0, |x| x.1);
        let scale = scale.map(|x| x.0);
        match &range {
            None => sp.word(&money_words(c, &num, scale)),
            Some(hi) => {
                let unit = currency(c).map_or("", |e| e.2);
                let sc = scale.map(|x| format!(" {x}")).unwrap_or_default();
                sp.word(&format!("{} to {}{sc} {unit}", num.words(), hi.words()));
            }
        }
        if let Some((w, n)) = per_unit(rest, j) {
            sp.word(&w);
            j += n;
        }
        return Some((i + j, None));
    }
    let last = range.clone().unwrap_or_else(|| num.clone());
    let suffix = number_suffix(rest, j, &last);
    let ordinal = suffix.as_ref().is_some_and(|x| x.2);
    match &range {
        Some(_) if ordinal => sp.word(&format!("{} to", num.words())),
        Some(hi) => sp.word(&format!("{} to {}", num.words(), hi.words())),
        None if ordinal => {}
        None => sp.word(&num.words()),
    }
    if let Some((w, n, _)) = suffix {
        sp.word(&w);
        return Some((i + j + n, None));
    }
    Some((i + j, Some(last.is_one() && range.is_none())))
}

/// Verbalizes the characters of a word (no URL or e-mail inside) into `sp`. `number` is the
/// previous word's bare number (whether it was one), for units written apart (`10 km`). Returns
/// whether the text ends in a bare number, and if so whether it is one.
pub(super) fn verbal_text(s: &[char], number: Option<bool>, sp: &mut Spoken) -> Option<bool> {
    let opening = s
        .iter()
        .take_while(|c| matches!(c, '(' | '"' | '“'))
        .count();
    if opening > 0 && opening < s.len() {
        s.iter().take(opening).for_each(|&c| sp.ch(c));
        return verbal_text(s.get(opening..).unwrap_or(&[]), number, sp);
    }
    let whole: String = s.iter().collect();
    let (core, punct) = split_trailing(&whole);
    if let Some(w) = number.and_then(|one| unit_words(core, one)) {
        sp.word(w);
        punct.chars().for_each(|c| sp.ch(c));
        return None;
    }
    if let Some((_, w)) = ABBREVIATIONS.iter().find(|(a, _)| *a == core) {
        sp.word(w);
        punct
            .strip_prefix('.')
            .unwrap_or(punct)
            .chars()
            .for_each(|c| sp.ch(c));
        return None;
    }
    let mut i = 0;
    let mut ends_number = None;
    while let Some(&c) = s.get(i) {
        ends_number = None;
        let prev_word = i > 0 && s.get(i - 1).is_some_and(|p| p.is_alphanumeric());
        let starts_number = c.is_ascii_digit()
            || (c == '.' && !prev_word && is_digit_at(s, i + 1))
            || (c == '-' && !prev_word && (is_digit_at(s, i + 1) || money_at(s, i + 1)))
            || money_at(s, i);
        let glued = digits_at(s, i);
        if c.is_ascii_digit() && prev_word && glued >= 3 {
            // A code after letters (`abc123`): digit by digit.
            let (digits, _) = digits_str(s, i);
            sp.word(&digit_words(&digits));
            i += glued;
            continue;
        }
        if starts_number && let Some((end, n)) = number_expr(s, i, sp) {
            i = end.max(i + 1);
            ends_number = n;
            continue;
        }
        i += symbol(s, i, sp);
    }
    ends_number
}

/// Whether a currency symbol followed by a digit is at `i`.
fn money_at(s: &[char], i: usize) -> bool {
    s.get(i).is_some_and(|&c| currency(c).is_some()) && is_digit_at(s, i + 1)
}

/// Reads the character (or letter run) at `i`; returns how many characters it used.
fn symbol(s: &[char], i: usize, sp: &mut Spoken) -> usize {
    let Some(&c) = s.get(i) else { return 1 };
    if c.is_alphabetic() {
        let run = letters_at(s, i);
        sp.word(&run);
        return run.chars().count().max(1);
    }
    let next = s.get(i + 1).copied();
    let w = match c {
        '%' => "percent",
        '&' => "and",
        '+' => "plus",
        '=' => "equals",
        '@' => "at",
        '×' => "times",
        '℃' => "degrees Celsius",
        '℉' => "degrees Fahrenheit",
        '°' if match_at(s, i + 1, "C") => "degrees Celsius",
        '°' if match_at(s, i + 1, "F") => "degrees Fahrenheit",
        '°' => "degrees",
        '#' if next.is_some_and(char::is_alphabetic) => "",
        '#' => "number",
        ':' if next.is_some_and(|n| n.is_ascii_digit()) => {
            sp.ch(' ');
            return 1;
        }
        c => match currency(c) {
            Some(e) => e.2,
            None => {
                sp.ch(c);
                return 1;
            }
        },
    };
    sp.word(w);
    if w.starts_with("degrees ") && c == '°' {
        2
    } else {
        1
    }
}

/// Splits trailing sentence punctuation off a word: (`core`, `punct`).
pub(super) fn split_trailing(w: &str) -> (&str, &str) {
    let core = w.trim_end_matches(['.', ',', '!', '?', ';', ':', ')', '"', '\'']);
    (core, &w[core.len()..])
}

/// Digit groups of a phone-like text: an optional leading `+`, then digit groups separated by
/// `-`, `.`, spaces or parentheses. `None` when anything else appears.
pub(super) fn phone_groups(s: &str) -> Option<(bool, Vec<String>)> {
    let plus = s.starts_with('+');
    let body = s.strip_prefix('+').unwrap_or(s);
    let mut groups = Vec::new();
    let mut cur = String::new();
    let mut last = '(';
    for c in body.chars() {
        match c {
            '0'..='9' => cur.push(c),
            '-' | '.' if last.is_ascii_digit() || last == ')' => {}
            ' ' | '(' | ')' => {}
            _ => return None,
        }
        if !c.is_ascii_digit() && !cur.is_empty() {
            groups.push(std::mem::take(&mut cur));
        }
        last = c;
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    (last.is_ascii_digit() || last == ')').then_some(())?;
    (!groups.is_empty()).then_some((plus, groups))
}

/// Whether digit groups form a phone number: with `+`, 7 to 15 digits; without, at least two
/// groups ending in four digits, the others at most three (`555-0100`, `415 555 0100`).
pub(super) fn is_phone(plus: bool, groups: &[String]) -> bool {
    let total: usize = groups.iter().map(String::len).sum();
    if !(7..=15).contains(&total) {
        return false;
    }
    if plus {
        return true;
    }
    let Some((last, rest)) = groups.split_last() else {
        return false;
    };
    last.len() == 4 && !rest.is_empty() && rest.iter().all(|g| g.len() <= 3)
}

/// A phone number read digit by digit, groups separated by commas ("plus one, four one five").
pub(super) fn phone_words(plus: bool, groups: &[String]) -> String {
    let digits: Vec<String> = groups.iter().map(|g| digit_words(g)).collect();
    let body = digits.join(", ");
    if plus { format!("plus {body}") } else { body }
}

/// Reads an address part: letters as written, digits one by one, `.` "dot", `@` "at", `-`
/// "dash", `_` "underscore", `+` "plus".
pub(super) fn address_words(s: &str) -> String {
    let mut sp = Spoken::default();
    let mut run = String::new();
    let flush = |run: &mut String, sp: &mut Spoken| {
        if !run.is_empty() {
            sp.word(run);
            run.clear();
        }
    };
    for c in s.chars() {
        let w = match c {
            '.' => "dot",
            '@' => "at",
            '-' => "dash",
            '_' => "underscore",
            '+' => "plus",
            '0'..='9' => {
                flush(&mut run, &mut sp);
                sp.word(&digit_words(&c.to_string()));
                continue;
            }
            c if c.is_alphabetic() => {
                run.push(c);
                continue;
            }
            _ => continue,
        };
        flush(&mut run, &mut sp);
        sp.word(w);
    }
    flush(&mut run, &mut sp);
    sp.text
}

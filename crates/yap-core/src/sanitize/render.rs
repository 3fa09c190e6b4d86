//! Rendering one held word: finds web addresses, e-mail addresses, emoticons and arrows in it and
//! reads the rest as plain text (stretched letters, underscores, sentence colons, and with
//! verbalization numbers and symbols). Pure functions; the word stage decides what is held.

use super::lexicon::{ARROWS, EMOTICONS, LETTER_EMOTICONS, TLDS, arrow_char};
use super::verbal::{
    Spoken, address_words, is_phone, phone_groups, phone_words, split_trailing, verbal_text,
};

/// What a span of a word is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// A web address (with a scheme, `www.`, or a known top-level domain).
    Url,
    Email,
    Emoticon,
    Arrow(&'static str),
}

/// A span `[a, b)` of a word's characters.
#[derive(Debug, Clone, Copy)]
struct Seg {
    a: usize,
    b: usize,
    kind: Kind,
}

/// Context a word is read in.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WordCtx {
    /// Numbers and symbols become words.
    pub(super) verbalize: bool,
    /// The previous word was a bare number (whether it was one): `km` after it is a unit.
    pub(super) number: Option<bool>,
    /// The previous word was a subject pronoun: `<3` reads "love".
    pub(super) subject: bool,
    /// Nothing precedes on this line or sentence: an arrow here is a list marker, dropped.
    pub(super) after_stop: bool,
}

/// A rendered word.
#[derive(Debug, Default)]
pub(super) struct Rendered {
    /// Output text (kept addresses between protection marks).
    pub(super) text: String,
    /// The word ended with a removed emoticon.
    pub(super) ends_emoticon: bool,
    /// The word ended with a bare number (whether it was one).
    pub(super) number: Option<bool>,
}

/// Whether `i` starts a token: the start of the word or after a non-alphanumeric character.
fn boundary(w: &[char], i: usize) -> bool {
    i == 0 || w.get(i - 1).is_none_or(|c| !c.is_alphanumeric())
}

/// Whether `pat` appears at `i`.
fn starts_with(w: &[char], i: usize, pat: &str) -> bool {
    pat.chars()
        .enumerate()
        .all(|(k, p)| w.get(i + k) == Some(&p))
}

/// Whether `c` may appear in a URL.
fn is_url_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '{' | '}' | '|' | '\\' | '^' | '`')
}

/// End of a URL starting at `i` whose characters run to `end`, without trailing punctuation.
fn trim_url(w: &[char], i: usize, mut end: usize) -> usize {
    while end > i {
        let Some(&c) = w.get(end - 1) else { break };
        let span = w.get(i..end).unwrap_or(&[]);
        let unbalanced = |open: char, close: char| {
            span.iter().filter(|&&x| x == close).count()
                > span.iter().filter(|&&x| x == open).count()
        };
        let trailing = matches!(c, '.' | ',' | '!' | '?' | ';' | ':' | '*' | '_' | '\'')
            || (c == ')' && unbalanced('(', ')'))
            || (c == ']' && unbalanced('[', ']'));
        if !trailing {
            break;
        }
        end -= 1;
    }
    end
}

/// End of the run of characters matching `ok` from `i`.
fn run_end(w: &[char], i: usize, ok: impl Fn(char) -> bool) -> usize {
    i + w
        .get(i..)
        .map_or(0, |t| t.iter().take_while(|&&c| ok(c)).count())
}

/// A URL with a scheme (`https://…`) or `www.` at `i`: its end.
fn url_at(w: &[char], i: usize) -> Option<usize> {
    let letters = run_end(w, i, |c| c.is_ascii_alphabetic());
    let host = if letters - i >= 2 && starts_with(w, letters, "://") {
        letters + 3
    } else if (letters - i == 3)
        && w.get(i..letters)?
            .iter()
            .all(|c| c.eq_ignore_ascii_case(&'w'))
        && w.get(letters) == Some(&'.')
    {
        letters + 1
    } else {
        return None;
    };
    let end = trim_url(w, i, run_end(w, i, is_url_char));
    (end > host && w.get(host).is_some_and(char::is_ascii_alphanumeric)).then_some(end)
}

/// Whether `c` may appear in a domain label.
fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// Dotted labels at `i` ending in a known top-level domain (`example.com`): the host's end.
fn host_at(w: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    let mut labels = 0;
    let mut last;
    loop {
        let e = run_end(w, j, is_label_char);
        if e == j {
            return None;
        }
        labels += 1;
        last = (j, e);
        if w.get(e) == Some(&'.') && w.get(e + 1).is_some_and(|&c| is_label_char(c)) {
            j = e + 1;
        } else {
            break;
        }
    }
    let tld: String = w.get(last.0..last.1)?.iter().collect();
    (labels >= 2 && TLDS.contains(&tld.as_str())).then_some(last.1)
}

/// A bare domain (`example.com/path`) at `i`: its end.
fn domain_at(w: &[char], i: usize) -> Option<usize> {
    let host = host_at(w, i)?;
    let port = w.get(host) == Some(&':') && w.get(host + 1).is_some_and(char::is_ascii_digit);
    if port || matches!(w.get(host), Some('/' | '?' | '#')) {
        return Some(trim_url(w, i, run_end(w, i, is_url_char)).max(host));
    }
    Some(host)
}

/// An e-mail address at `i`: its end.
fn email_at(w: &[char], i: usize) -> Option<usize> {
    let local = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-');
    let at = run_end(w, i, local);
    if at == i || w.get(at) != Some(&'@') || w.get(i) == Some(&'.') || w.get(at - 1) == Some(&'.') {
        return None;
    }
    let mut j = at + 1;
    let mut labels = Vec::new();
    loop {
        let e = run_end(w, j, is_label_char);
        if e == j {
            break;
        }
        labels.push((j, e));
        if w.get(e) == Some(&'.') && w.get(e + 1).is_some_and(|&c| is_label_char(c)) {
            j = e + 1;
        } else {
            break;
        }
    }
    let &(ls, le) = labels.last()?;
    let tld = w.get(ls..le)?;
    (labels.len() >= 2 && tld.len() >= 2 && tld.iter().all(char::is_ascii_alphabetic)).then_some(le)
}

/// An emoticon at `i` (with repeated mouths): its end.
fn emoticon_at(w: &[char], i: usize) -> Option<usize> {
    let first = *w.get(i)?;
    if !":;=^->.<xXToOu¯".contains(first) {
        return None;
    }
    let e = EMOTICONS
        .iter()
        .chain(LETTER_EMOTICONS)
        .filter(|e| starts_with(w, i, e))
        .max_by_key(|e| e.len())?;
    let mut end = i + e.chars().count();
    if let Some(mouth) = e.chars().last().filter(|m| ")(DPp3][".contains(*m)) {
        end = run_end(w, end, |c| c == mouth);
    }
    let wordy = e.chars().any(char::is_alphanumeric);
    let right = w.get(end).is_none_or(|c| !c.is_alphanumeric() && *c != '/');
    // `haha:D` loses its smiley, `x:D` and `2:3` do not.
    let after_word = matches!(first, ':' | ';' | '=')
        && i >= 2
        && w.get(i - 2..i)
            .is_some_and(|p| p.iter().all(|c| c.is_alphabetic()));
    (right && (!wordy || boundary(w, i) || after_word)).then_some(end)
}

/// An arrow at `i`: its end and word.
fn arrow_at(w: &[char], i: usize) -> Option<(usize, &'static str)> {
    if let Some(word) = w.get(i).and_then(|&c| arrow_char(c)) {
        return Some((i + 1, word));
    }
    ARROWS
        .iter()
        .find(|(a, _)| starts_with(w, i, a))
        .map(|(a, word)| (i + a.chars().count(), *word))
}

/// An address, emoticon or arrow at `i`: its end and kind.
fn special_at(w: &[char], i: usize) -> Option<(usize, Kind)> {
    if boundary(w, i) && w.get(i).is_some_and(char::is_ascii_alphanumeric) {
        if starts_with(w, i, "mailto:")
            && let Some(e) = email_at(w, i + 7)
        {
            return Some((e, Kind::Email));
        }
        if let Some(e) = email_at(w, i) {
            return Some((e, Kind::Email));
        }
        if let Some(e) = url_at(w, i).or_else(|| domain_at(w, i)) {
            return Some((e, Kind::Url));
        }
    }
    if let Some(e) = emoticon_at(w, i) {
        return Some((e, Kind::Emoticon));
    }
    arrow_at(w, i).map(|(e, word)| (e, Kind::Arrow(word)))
}

/// Splits a word into plain text, addresses, emoticons and arrows.
fn segments(w: &[char]) -> Vec<Seg> {
    let mut segs = Vec::new();
    let (mut i, mut plain) = (0, 0);
    while i < w.len() {
        match special_at(w, i) {
            Some((b, kind)) if b > i => {
                if plain < i {
                    segs.push(Seg {
                        a: plain,
                        b: i,
                        kind: Kind::Plain,
                    });
                }
                segs.push(Seg { a: i, b, kind });
                i = b;
                plain = b;
            }
            _ => i += 1,
        }
    }
    if plain < w.len() {
        segs.push(Seg {
            a: plain,
            b: w.len(),
            kind: Kind::Plain,
        });
    }
    segs
}

/// Plain text of a word: stretched letters shortened to two (`soooo` → `soo`; three capitals
/// such as `III` or `AAA` stay), `_` read as a space, a space after a sentence colon (`Note:this`).
fn clean(w: &[char], a: usize, b: usize) -> Vec<char> {
    let mut out = Vec::with_capacity(b - a);
    let mut i = a;
    while let Some(&c) = w.get(i).filter(|_| i < b) {
        if c.is_alphabetic() {
            let lower = c.to_lowercase().next();
            let e = run_end(w, i, |x| x.to_lowercase().next() == lower).min(b);
            let run = w.get(i..e).unwrap_or(&[]);
            let keep_three = run.iter().all(|x| x.is_uppercase()) || run.iter().all(|&x| x == 'w');
            let keep = if run.len() >= 3 && !(run.len() == 3 && keep_three) {
                2
            } else {
                run.len()
            };
            out.extend(run.iter().take(keep));
            i = e.max(i + 1);
            continue;
        }
        match c {
            '_' => out.push(' '),
            ':' => {
                out.push(':');
                let letters_before = i >= a + 2
                    && w.get(i - 2..i)
                        .is_some_and(|p| p.iter().all(|x| x.is_alphabetic()));
                if letters_before && w.get(i + 1).is_some_and(|n| n.is_alphabetic()) {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The host of a URL in words, without scheme and `www.` ("example dot com").
fn host_words(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#', ':']).next().unwrap_or(rest);
    let host = match host.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("www.") => host.get(4..).unwrap_or(host),
        _ => host,
    };
    address_words(host)
}

/// A whole word that is a phone number ("415-555-0100", "+14155550100"): its words.
pub(super) fn phone_word(w: &str) -> Option<String> {
    let (core, punct) = split_trailing(w);
    let (plus, groups) = phone_groups(core)?;
    is_phone(plus, &groups).then(|| format!("{}{punct}", phone_words(plus, &groups)))
}

/// Renders a word in its context.
pub(super) fn render(w: &[char], ctx: WordCtx) -> Rendered {
    if ctx.verbalize {
        let s: String = w.iter().collect();
        if let Some(text) = phone_word(&s) {
            return Rendered {
                text,
                ..Rendered::default()
            };
        }
    }
    let segs = segments(w);
    let mut sp = Spoken::default();
    let mut r = Rendered::default();
    let whole_word = segs.len() == 1;
    for (k, seg) in segs.iter().enumerate() {
        let raw = w.get(seg.a..seg.b).unwrap_or(&[]);
        r.ends_emoticon = false;
        r.number = None;
        match seg.kind {
            Kind::Plain => {
                let text = clean(w, seg.a, seg.b);
                if ctx.verbalize {
                    r.number = verbal_text(&text, ctx.number.filter(|_| k == 0), &mut sp);
                } else {
                    text.iter().for_each(|&c| sp.ch(c));
                }
            }
            Kind::Url | Kind::Email => {
                let s: String = raw.iter().collect();
                match (ctx.verbalize, seg.kind) {
                    (false, _) => sp.verbatim(&s),
                    (true, Kind::Url) => sp.word(&host_words(&s)),
                    (true, _) => sp.word(&address_words(s.trim_start_matches("mailto:"))),
                }
            }
            Kind::Emoticon if whole_word && ctx.subject && raw == ['<', '3'] => sp.word("love"),
            Kind::Emoticon => r.ends_emoticon = true,
            Kind::Arrow(_) if k == 0 && ctx.after_stop => {}
            Kind::Arrow(word) => sp.word(word),
        }
    }
    r.text = sp.text;
    r
}

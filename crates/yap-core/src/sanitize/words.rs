//! Stage 3: words. Passes plain words on as they come and holds a word from its first
//! undecided character to its end: a character that may start an emoticon, arrow, URL, e-mail,
//! number or escape-like form (`:` `;` `=` `<` `>` `^` `-` `_` `/` `@`, and with verbalization
//! digits and any symbol), a third identical letter (`sooo`), or a prefix of `xD`, `T_T`, `o_O`
//! (and with verbalization `https://`, `www.`, `e.g.`, `vs`, a unit after a number). The held
//! word is then rendered whole ([`super::render`]). With verbalization, a word may also wait
//! for the next one: a phone number's groups (`+1 415 555 0100`), money before a scale
//! (`$2.5 million`); and a removed emoticon waits for the next letter (a capital turns it into a
//! full stop). A word is held for at most [`MAX_HOLD`] characters.

use super::lexicon::{LETTER_EMOTICONS, SCALES, SUBJECTS, arrow_char, unit_prefix, unit_words};
use super::render::{Rendered, WordCtx, phone_word, render};
use super::verbal::{Money, is_phone, phone_groups, phone_words, split_trailing};

/// Most characters of one word held before it is rendered anyway.
pub(super) const MAX_HOLD: usize = 160;
/// Most characters of a passed-on word kept as context.
const MAX_WORD: usize = 160;
/// Prefixes held with verbalization until they match or differ.
const VERBAL_PREFIXES: &[&str] = &[
    "http://", "https://", "www.", "mailto:", "e.g.", "i.e.", "vs.",
];

/// A decision that waits for the next word.
#[derive(Debug, Clone)]
enum Wait {
    /// Digit groups of a possible phone number, and the words they came from.
    Phone {
        plus: bool,
        groups: Vec<String>,
        words: Vec<Vec<char>>,
    },
    /// An amount of money that a scale word may follow.
    Money(Money),
    /// A removed emoticon after a word: a following capital makes it a full stop.
    Emoticon,
}

/// The word stage.
#[derive(Debug, Clone)]
pub(super) struct WordStage {
    verbalize: bool,
    /// The current word (characters since the last whitespace).
    word: Vec<char>,
    /// How many of its characters were passed on.
    sent: usize,
    /// Held until the word ends.
    locked: bool,
    /// Context from the previous word.
    ctx: WordCtx,
    /// Last visible character passed on.
    last_out: Option<char>,
    /// A line break came after it.
    line_break: bool,
    /// A decision waiting for the next word, and whether whitespace was held after it.
    wait: Option<(Wait, bool)>,
}

/// Whether `c` may pass on at once when nothing of its word is held: letters, apostrophes and
/// closing punctuation; without verbalization also digits and most symbols.
fn is_pass(c: char, verbalize: bool) -> bool {
    if c.is_alphabetic() || matches!(c, '\'' | '’' | ',' | '!' | '?' | '"' | '“' | '”' | ')')
    {
        return true;
    }
    !verbalize
        && !matches!(
            c,
            ':' | ';' | '=' | '<' | '>' | '^' | '-' | '_' | '/' | '@' | '¯' | '—' | '–'
        )
        && arrow_char(c).is_none()
}

/// Whether `a` and `b` are the same letter, ignoring case.
fn same_letter(a: char, b: char) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(&b) && a.is_ascii_alphabetic();
    }
    a.is_alphabetic() && a.to_lowercase().eq(b.to_lowercase())
}

/// Whether `tail` could still grow into `pat`.
fn prefix_of(tail: &[char], pat: &str) -> bool {
    let mut p = pat.chars();
    tail.iter().all(|&c| p.next() == Some(c))
}

/// Whether `tail` could still grow into emoticon `e` (ASCII), or is `e` with its mouth repeated
/// (`xDD`).
fn emoticon_prefix(tail: &[char], e: &str) -> bool {
    let n = e.len();
    match (tail.get(..n), e.chars().last()) {
        (Some(head), Some(mouth)) if prefix_of(head, e) => tail
            .get(n..)
            .is_some_and(|rest| rest.iter().all(|&c| c == mouth)),
        _ => prefix_of(tail, e),
    }
}

impl WordStage {
    /// A fresh stage.
    pub(super) fn new(verbalize: bool) -> Self {
        Self {
            verbalize,
            word: Vec::new(),
            sent: 0,
            locked: false,
            ctx: WordCtx {
                verbalize,
                ..WordCtx::default()
            },
            last_out: None,
            line_break: false,
            wait: None,
        }
    }

    /// Passes one character on to the spacing stage.
    fn pass(&mut self, c: char, out: &mut impl FnMut(char)) {
        if !c.is_whitespace() && c != super::PROTECT && c != super::UNPROTECT {
            self.last_out = Some(c);
            self.line_break = false;
        }
        out(c);
    }

    /// Passes text on to the spacing stage.
    fn pass_str(&mut self, s: &str, out: &mut impl FnMut(char)) {
        for c in s.chars() {
            self.pass(c, out);
        }
    }

    /// Feeds one character.
    pub(super) fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        if c.is_whitespace() {
            self.end_word(out);
            self.line_break |= c == '\n';
            match &mut self.wait {
                Some((_, space)) => *space = true,
                None => self.pass(c, out),
            }
            return;
        }
        self.word.push(c);
        if self.wait.is_some()
            && let Some((wait, space)) = self.wait.take()
        {
            if self.wait_continues(&wait) {
                self.wait = Some((wait, space));
            } else {
                // The word cannot complete what waits: settle it, then read the word afresh.
                let first = self.word.first().copied();
                self.resolve(wait, space, first, out);
                let word = std::mem::take(&mut self.word);
                for &w in &word {
                    self.step(w, out);
                }
                return;
            }
        }
        if self.wait.is_some() || self.locked {
            if self.word.len() - self.sent > MAX_HOLD {
                self.end_word(out);
            }
            return;
        }
        if !is_pass(c, self.verbalize) || self.triple_run() {
            self.locked = true;
            return;
        }
        let boundary = self.sent == 0
            || self
                .word
                .get(self.sent - 1)
                .is_none_or(|p| !p.is_alphanumeric());
        if boundary && self.prefix_hold() {
            return;
        }
        for i in self.sent..self.word.len() {
            if let Some(&h) = self.word.get(i) {
                self.pass(h, out);
            }
        }
        self.sent = self.word.len();
        if self.sent > MAX_WORD {
            self.word.drain(..self.sent - 2);
            self.sent = 2;
        }
    }

    /// Whether the word ends with three identical letters (`sooo`).
    fn triple_run(&self) -> bool {
        match self.word.as_slice() {
            [.., a, b, c] => same_letter(*b, *c) && same_letter(*a, *c),
            _ => false,
        }
    }

    /// Whether the unsent tail, starting at a word boundary, is a prefix of something that reads
    /// differently when complete.
    fn prefix_hold(&self) -> bool {
        let tail = self.word.get(self.sent..).unwrap_or(&[]);
        let opening = tail
            .iter()
            .take_while(|c| matches!(c, '(' | '"' | '“'))
            .count();
        let tail = tail.get(opening..).unwrap_or(&[]);
        let Some(&first) = tail.first().filter(|_| tail.len() <= 8) else {
            return opening > 0 && self.verbalize;
        };
        if matches!(first, 'x' | 'X' | 'T' | 'o' | 'O' | 'u' | 'U')
            && LETTER_EMOTICONS.iter().any(|e| emoticon_prefix(tail, e))
        {
            return true;
        }
        if !self.verbalize {
            return false;
        }
        if matches!(first, 'h' | 'w' | 'm' | 'e' | 'i' | 'v')
            && VERBAL_PREFIXES.iter().any(|p| prefix_of(tail, p))
        {
            return true;
        }
        let unit = self.sent == 0 && self.ctx.number.is_some();
        if !unit {
            return false;
        }
        let tail: String = tail.iter().collect();
        let (core, _) = split_trailing(&tail);
        unit_prefix(&tail) || unit_words(core, false).is_some()
    }

    /// Whether the current word may still complete what waits: digit groups for a phone
    /// number, a scale word (`million`) for money, each maybe with closing punctuation.
    fn wait_continues(&self, wait: &Wait) -> bool {
        let w = &self.word;
        // Without its closing punctuation.
        let core = w
            .iter()
            .rposition(|c| !".,!?;:)".contains(*c))
            .map_or(0, |p| p + 1);
        let head = w.get(..core).unwrap_or(&[]);
        match wait {
            Wait::Phone { .. } => {
                let group = |c: &char| c.is_ascii_digit() || "()-.".contains(*c);
                w.first().is_some_and(|c| c.is_ascii_digit() || *c == '(') && head.iter().all(group)
            }
            Wait::Money(..) => {
                let whole: String = w.iter().collect();
                let head: String = head.iter().collect();
                SCALES
                    .iter()
                    .any(|s| s.starts_with(whole.as_str()) || *s == head)
            }
            Wait::Emoticon => false,
        }
    }

    /// Settles what waits; `next` is the next word's first character (`None`: end of text).
    fn resolve(&mut self, wait: Wait, space: bool, next: Option<char>, out: &mut impl FnMut(char)) {
        match wait {
            Wait::Emoticon => {
                if next.is_some_and(char::is_uppercase) {
                    self.pass('.', out);
                }
            }
            Wait::Phone {
                plus,
                groups,
                words,
            } => {
                if is_phone(plus, &groups) {
                    self.pass_str(&phone_words(plus, &groups), out);
                    self.ctx.number = None;
                } else {
                    for (k, w) in words.iter().enumerate() {
                        if k > 0 {
                            self.pass(' ', out);
                        }
                        self.emit_rendered(w, 0, out);
                    }
                }
            }
            Wait::Money(m) => {
                self.pass_str(&m.words(None), out);
                self.ctx.number = None;
            }
        }
        if space && next.is_some() {
            self.pass(' ', out);
        }
    }

    /// Renders a held word (its first `sent` characters already passed on) and passes it on.
    fn emit_rendered(&mut self, w: &[char], sent: usize, out: &mut impl FnMut(char)) -> Rendered {
        self.ctx.after_stop = self.line_break
            || self
                .last_out
                .is_none_or(|c| matches!(c, '.' | '!' | '?' | ':' | ';'));
        let mut r = render(w, self.ctx);
        let head = w.get(..sent).unwrap_or(&[]);
        let text = match strip_head(&r.text, head) {
            Some(t) => t,
            None => render(w.get(sent..).unwrap_or(&[]), self.ctx).text,
        };
        self.pass_str(&text, out);
        self.ctx.number = r.number;
        self.ctx.subject = false;
        r.text = text;
        r
    }

    /// Ends the current word: renders what was held, or extends or settles what waits.
    fn end_word(&mut self, out: &mut impl FnMut(char)) {
        if self.word.is_empty() {
            return;
        }
        let word = std::mem::take(&mut self.word);
        let sent = std::mem::replace(&mut self.sent, 0);
        self.locked = false;
        if let Some((wait, space)) = self.wait.take() {
            self.extend_wait(wait, space, &word, out);
        } else if sent == word.len() {
            self.ctx.number = None;
            self.ctx.subject = word.len() <= 4
                && matches!(
                    word.first(),
                    Some('I' | 'i' | 'w' | 'W' | 'y' | 'Y' | 't' | 'T' | 'u')
                )
                && SUBJECTS.iter().any(|p| p.chars().eq(word.iter().copied()));
        } else {
            self.held_word(&word, sent, out);
        }
        self.word = word;
        self.word.clear();
    }

    /// A word that was held (at least in part): waits for the next word or is rendered.
    fn held_word(&mut self, word: &[char], sent: usize, out: &mut impl FnMut(char)) {
        if sent == 0
            && self.verbalize
            && let Some(wait) = self.wait_for(word)
        {
            self.wait = Some((wait, false));
            return;
        }
        let r = self.emit_rendered(word, sent, out);
        if r.ends_emoticon && self.last_out.is_some_and(char::is_alphanumeric) {
            self.wait = Some((Wait::Emoticon, false));
        }
    }

    /// Whether a whole held word must wait for the next: a phone start (`+1`, `415`, `(415)`)
    /// or an amount of money (`$2.5`).
    fn wait_for(&self, word: &[char]) -> Option<Wait> {
        let s: String = word.iter().collect();
        if let Some((plus, groups)) = phone_groups(&s) {
            let digits: usize = groups.iter().map(String::len).sum();
            let area = groups.len() == 1 && digits == 3 && !s.contains(['-', '.']);
            if (plus && digits < 15 && phone_word(&s).is_none()) || (!plus && area) {
                return Some(Wait::Phone {
                    plus,
                    groups,
                    words: vec![word.to_vec()],
                });
            }
        }
        Money::parse(word).map(Wait::Money)
    }

    /// The word after a waiting one has ended.
    fn extend_wait(&mut self, wait: Wait, space: bool, word: &[char], out: &mut impl FnMut(char)) {
        let s: String = word.iter().collect();
        let (core, punct) = split_trailing(&s);
        match wait {
            Wait::Phone {
                plus,
                mut groups,
                mut words,
            } => {
                if let Some((false, more)) = phone_groups(core) {
                    groups.extend(more);
                    words.push(word.to_vec());
                    let digits: usize = groups.iter().map(String::len).sum();
                    let full = groups.last().is_some_and(|g| g.len() >= 4) && !plus;
                    if punct.is_empty() && !full && digits < 15 {
                        self.wait = Some((
                            Wait::Phone {
                                plus,
                                groups,
                                words,
                            },
                            false,
                        ));
                        return;
                    }
                    if is_phone(plus, &groups) {
                        self.pass_str(&phone_words(plus, &groups), out);
                        self.pass_str(punct, out);
                        self.ctx.number = None;
                        return;
                    }
                    let last = words.pop().unwrap_or_default();
                    self.resolve(
                        Wait::Phone {
                            plus,
                            groups,
                            words,
                        },
                        space,
                        Some(' '),
                        out,
                    );
                    self.held_word(&last, 0, out);
                    return;
                }
                self.resolve(
                    Wait::Phone {
                        plus,
                        groups,
                        words,
                    },
                    space,
                    Some(' '),
                    out,
                );
            }
            Wait::Money(m) => {
                if SCALES.contains(&core) {
                    self.pass_str(&m.words(Some(core)), out);
                    self.pass_str(punct, out);
                    self.ctx.number = None;
                    return;
                }
                self.resolve(Wait::Money(m), space, Some(' '), out);
            }
            Wait::Emoticon => {}
        }
        self.held_word(word, 0, out);
    }

    /// Ends the text: renders what is held and settles what waits.
    pub(super) fn finish(&mut self, out: &mut impl FnMut(char)) {
        self.end_word(out);
        if let Some((wait, space)) = self.wait.take() {
            self.resolve(wait, space, None, out);
        }
    }
}

/// `text` without the already passed-on `head` (protection marks kept); `None` if it differs.
fn strip_head(text: &str, head: &[char]) -> Option<String> {
    let mut h = head.iter().peekable();
    let mut rest = String::with_capacity(text.len());
    for c in text.chars() {
        if c == super::PROTECT || c == super::UNPROTECT {
            rest.push(c);
            continue;
        }
        match h.peek() {
            Some(&&x) if x == c => {
                h.next();
            }
            Some(_) => return None,
            None => rest.push(c),
        }
    }
    h.peek().is_none().then_some(rest)
}

//! Stage 2: markup. Drops emoji and pictographs, `*actions*` (with their text), markdown
//! emphasis markers (`**`, `__`, `_`, `` ` ``, `~`), heading, bullet and quote markers at line
//! starts, brackets (`[aside]` keeps its words) and model tokens such as `<end_of_turn>` or
//! `<|im_end|>`. Arrows pass (the word stage reads them). Holds an open `*action*` (at most
//! [`MAX_ACTION`] characters), an open `<token>` (at most [`MAX_TAG`]), a line-start `-`/`>`, or
//! one `_` run until the character that decides it.

use super::lexicon::arrow_char;

/// Longest `*action*` span (characters) before the `*` is treated as stray.
pub(super) const MAX_ACTION: usize = 80;
/// Longest `<token>` before `<` is treated as text.
pub(super) const MAX_TAG: usize = 40;

/// Whether `c` is an emoji or pictograph (dropped from speech).
pub(super) fn is_pictograph(c: char) -> bool {
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
    /// Inside `*...`, holding the text (and its length in characters) until the closing `*`.
    Action(String, usize),
    /// A `-` or `>` at a line start: a list or quote marker when a space follows.
    LineMarker(char),
    /// Inside `<...`, holding the text.
    Tag(String),
    /// At a line start after `#`s or a bullet dash: skip the marker's spaces.
    SkipMarker,
    /// A run of `_` (count): kept only between two word characters or two symbols (`snake_case`,
    /// `^_^`), dropped as emphasis next to a space or a word edge.
    Underscore(usize),
}

/// The markup stage.
#[derive(Debug, Clone)]
pub(super) struct MarkupStage {
    state: Markup,
    line_start: bool,
    /// Last character passed on.
    prev: Option<char>,
}

/// Whether `c` counts as a word character for `_` (letters and digits).
fn wordish(c: char) -> bool {
    c.is_alphanumeric()
}

impl MarkupStage {
    /// A fresh stage.
    pub(super) fn new() -> Self {
        Self {
            state: Markup::Normal,
            line_start: true,
            prev: None,
        }
    }

    /// Feeds one character.
    pub(super) fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        if matches!(self.state, Markup::Normal) {
            return self.normal(c, out);
        }
        match std::mem::replace(&mut self.state, Markup::Normal) {
            Markup::Star => {
                if c == '*' {
                    // `**` emphasis marker: dropped, text kept.
                } else if c.is_whitespace() {
                    // A bullet (`* item`) or a lone star: dropped.
                    self.normal(c, out);
                } else {
                    self.state = Markup::Action(String::new(), 0);
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
            Markup::Action(held, n) => self.action(held, n, c, out),
            Markup::Tag(held) => self.tag(held, c, out),
            Markup::SkipMarker => {
                if c == ' ' || c == '\t' || c == '#' {
                    self.state = Markup::SkipMarker;
                } else {
                    self.step(c, out);
                }
            }
            Markup::Underscore(n) => {
                if c == '_' {
                    self.state = Markup::Underscore(n + 1);
                    return;
                }
                self.underscores(n, Some(c), out);
                self.step(c, out);
            }
            Markup::Normal => self.normal(c, out),
        }
    }

    /// One character inside an open `*action`.
    fn action(&mut self, mut held: String, n: usize, c: char, out: &mut impl FnMut(char)) {
        if c == '*' {
            // Closed: the whole action is dropped.
        } else if c == '\n' || n >= MAX_ACTION {
            // Not an action after all: the star is dropped, the text goes on.
            for h in held.chars() {
                self.step(h, out);
            }
            self.step(c, out);
        } else {
            held.push(c);
            self.state = Markup::Action(held, n + 1);
        }
    }

    /// One character inside an open `<token`.
    fn tag(&mut self, mut held: String, c: char, out: &mut impl FnMut(char)) {
        let tag_char = c.is_ascii_alphanumeric() || matches!(c, '|' | '_' | '/' | '-' | '▁' | '.');
        let opens_like_token = held
            .chars()
            .next()
            .is_some_and(|h| h.is_ascii_alphabetic() || h == '|' || h == '/');
        if c == '>' && opens_like_token {
            // A formatting token: dropped.
        } else if tag_char && held.chars().count() < MAX_TAG {
            held.push(c);
            self.state = Markup::Tag(held);
        } else {
            // Plain text (`a < b`, `<3`, `<-`): `<` stays.
            self.emit('<', out);
            for h in held.chars() {
                self.step(h, out);
            }
            self.step(c, out);
        }
    }

    /// Decides a run of `n` underscores followed by `next` (`None`: end of text).
    fn underscores(&mut self, n: usize, next: Option<char>, out: &mut impl FnMut(char)) {
        let (Some(p), Some(x)) = (self.prev, next) else {
            return;
        };
        let symbol = |c: char| !c.is_whitespace() && !wordish(c);
        let inside = (wordish(p) && (wordish(x) || x == '(')) || (symbol(p) && symbol(x));
        if n == 1 && inside {
            self.emit('_', out);
        }
    }

    /// One character outside any held markup.
    fn normal(&mut self, c: char, out: &mut impl FnMut(char)) {
        let at_line_start = self.line_start;
        if c == '\n' {
            self.line_start = true;
            self.prev = Some(c);
            out(c);
            return;
        }
        if !(c == ' ' || c == '\t') {
            self.line_start = false;
        }
        match c {
            '*' => self.state = Markup::Star,
            '<' => self.state = Markup::Tag(String::new()),
            '_' => self.state = Markup::Underscore(1),
            '#' if at_line_start => self.state = Markup::SkipMarker,
            '-' | '>' if at_line_start => self.state = Markup::LineMarker(c),
            '[' | ']' => {
                self.prev = Some(' ');
                out(' ');
            }
            '|' if self.prev == Some(':') => self.emit(c, out),
            '`' | '~' | '{' | '}' | '|' | '\\' => {}
            c if !c.is_ascii() && arrow_char(c).is_some() => self.emit(c, out),
            c if !c.is_ascii() && is_pictograph(c) => {}
            c => {
                self.prev = Some(c);
                out(c);
            }
        }
    }

    /// Passes one character on (no longer at a line start).
    fn emit(&mut self, c: char, out: &mut impl FnMut(char)) {
        self.line_start = false;
        self.prev = Some(c);
        out(c);
    }

    /// Ends the text: releases what was held.
    pub(super) fn finish(&mut self, out: &mut impl FnMut(char)) {
        match std::mem::replace(&mut self.state, Markup::Normal) {
            Markup::Action(held, _) => {
                for h in held.chars() {
                    self.step(h, out);
                }
                self.finish(out);
            }
            Markup::LineMarker(m) => self.emit(m, out),
            Markup::Tag(held) => {
                self.emit('<', out);
                for h in held.chars() {
                    self.step(h, out);
                }
                self.finish(out);
            }
            Markup::Underscore(n) => self.underscores(n, None, out),
            Markup::Star | Markup::SkipMarker | Markup::Normal => {}
        }
    }
}

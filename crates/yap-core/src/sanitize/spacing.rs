//! Stage 4: spacing. Collapses whitespace (newlines included) to single spaces, drops leading
//! and trailing space, removes space before `, . ! ? ; : )` and after `(`, adds one between `, ! ? ;` and a
//! letter or digit (and after `.` between a lowercase letter and a capital) where it is missing, and
//! collapses repeated punctuation (`!!!` → `!`, `.....` → `...`; `::` stays). It never adds a space after a
//! colon (`10:30`, `A:1`, `https://`; the word stage spaces a sentence colon). Text between
//! [`PROTECT`] and [`UNPROTECT`] (a kept URL or e-mail address) passes unchanged. Holds only a
//! pending space.

use super::{PROTECT, UNPROTECT};

/// Punctuation that sticks to the word before it.
fn is_closing_punct(c: char) -> bool {
    matches!(c, ',' | '.' | '!' | '?' | ';' | ':' | ')')
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
enum Verbatim {
    #[default]
    Off,
    /// The next character starts a protected run (spaced like a word start).
    First,
    /// Inside a protected run.
    Rest,
}

/// The spacing stage.
#[derive(Debug, Clone, Default)]
pub(super) struct SpacingStage {
    /// Last emitted char.
    last: Option<char>,
    /// The one before it.
    before_last: Option<char>,
    /// Whitespace seen since the last emitted char.
    pending_space: bool,
    /// Consecutive dots just emitted.
    dots: usize,
    verbatim: Verbatim,
}

impl SpacingStage {
    /// Emits one character.
    fn push_out(&mut self, c: char, out: &mut String) {
        self.before_last = self.last;
        self.last = Some(c);
        out.push(c);
    }

    /// Feeds one character.
    pub(super) fn step(&mut self, c: char, out: &mut String) {
        match (c, self.verbatim) {
            (PROTECT, _) => {
                self.verbatim = Verbatim::First;
                return;
            }
            (UNPROTECT, _) => {
                self.verbatim = Verbatim::Off;
                return;
            }
            (_, Verbatim::Rest) => {
                self.dots = 0;
                self.push_out(c, out);
                return;
            }
            (_, Verbatim::First) => self.verbatim = Verbatim::Rest,
            (_, Verbatim::Off) => {}
        }
        if c.is_whitespace() {
            self.pending_space = self.last.is_some();
            return;
        }
        if is_closing_punct(c) {
            self.punct(c, out);
            return;
        }
        let space = if self.pending_space {
            self.last != Some('(')
        } else {
            match self.last {
                Some(',') => {
                    c.is_alphanumeric()
                        && !(self.before_last.is_some_and(|b| b.is_ascii_digit())
                            && c.is_ascii_digit())
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

    /// Closing punctuation: no space before it, repeats collapsed.
    fn punct(&mut self, c: char, out: &mut String) {
        if self.last.is_none() {
            return; // a reply never starts with punctuation
        }
        let collapse = match c {
            '.' => self.last == Some('.') && self.dots >= 3,
            ')' | ':' => false,
            _ => self.last == Some(c),
        };
        self.pending_space = false;
        if collapse {
            return;
        }
        self.dots = if c == '.' { self.dots + 1 } else { 0 };
        self.push_out(c, out);
    }
}

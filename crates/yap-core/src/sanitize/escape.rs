//! Stage 1: escapes. `\n`, `\r`, `\t` written as text (also doubled, `\\n`, and a literal
//! `/n` that stands for a line break) become real whitespace; `\"` and `\*` become a space; a
//! backslash before other punctuation is a markdown or JSON escape and keeps the character
//! (`\'`, `\/`, `\_`); before a letter or digit it becomes a space (`C:\Users`). The two
//! private-use characters the word stage uses as protection marks are dropped. Holds at most two
//! characters (`/n` until the character after it shows whether it was meant as a line break).

use super::{PROTECT, UNPROTECT};

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Normal,
    /// After one or more backslashes.
    Backslash,
    /// After `/`.
    Slash,
    /// After `/n`: a line break unless a lowercase letter follows (`and/nor`, `y/n`).
    SlashN,
}

/// The escape stage.
#[derive(Debug, Clone)]
pub(super) struct EscapeStage {
    state: State,
    /// Last character passed on (`\n` after an escape).
    prev: Option<char>,
}

impl EscapeStage {
    /// A fresh stage.
    pub(super) fn new() -> Self {
        Self {
            state: State::Normal,
            prev: None,
        }
    }

    /// Passes one character on.
    fn emit(&mut self, c: char, out: &mut impl FnMut(char)) {
        self.prev = Some(c);
        out(c);
    }

    /// Whether `/n` followed by `next` (`None`: end of text) is a written line break.
    fn slash_n_breaks(&self, next: Option<char>) -> bool {
        let prev_word = self.prev.is_some_and(char::is_alphanumeric);
        match next {
            None => !prev_word,
            Some(n) if n.is_lowercase() => false,
            Some(n) => {
                !prev_word
                    || n.is_uppercase()
                    || n.is_ascii_digit()
                    || matches!(n, '/' | '\\' | '-' | '*' | '#')
            }
        }
    }

    /// Feeds one character.
    pub(super) fn step(&mut self, c: char, out: &mut impl FnMut(char)) {
        match self.state {
            State::Normal => match c {
                '\\' => self.state = State::Backslash,
                '/' => self.state = State::Slash,
                PROTECT | UNPROTECT => {}
                c => self.emit(c, out),
            },
            State::Backslash => {
                self.state = State::Normal;
                match c {
                    '\\' => self.state = State::Backslash,
                    'n' | 'r' => self.emit('\n', out),
                    't' => self.emit('\t', out),
                    '"' | '*' => self.emit(' ', out),
                    c if c.is_ascii_punctuation() => self.emit(c, out),
                    c if c.is_alphanumeric() => {
                        self.emit(' ', out);
                        self.step(c, out);
                    }
                    c => self.step(c, out),
                }
            }
            State::Slash => {
                self.state = State::Normal;
                if c == 'n' {
                    self.state = State::SlashN;
                } else {
                    self.emit('/', out);
                    self.step(c, out);
                }
            }
            State::SlashN => {
                self.state = State::Normal;
                if self.slash_n_breaks(Some(c)) {
                    self.emit('\n', out);
                } else {
                    self.emit('/', out);
                    self.emit('n', out);
                }
                self.step(c, out);
            }
        }
    }

    /// Ends the text.
    pub(super) fn finish(&mut self, out: &mut impl FnMut(char)) {
        match std::mem::replace(&mut self.state, State::Normal) {
            State::Slash => self.emit('/', out),
            State::SlashN => {
                if self.slash_n_breaks(None) {
                    self.emit('\n', out);
                } else {
                    self.emit('/', out);
                    self.emit('n', out);
                }
            }
            State::Normal | State::Backslash => {}
        }
    }
}

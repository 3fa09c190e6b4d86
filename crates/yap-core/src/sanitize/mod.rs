//! Streaming output sanitizer for speech.
//!
//! A chat model's reply is turned into text a TTS engine can read, token by token. Four stages
//! see one character at a time, each holding back only what it must to decide:
//! 1. **escape** ([`escape`]): `\n`, `\t`, `\"` and a literal `/n` written as text become
//!    whitespace, other backslashes are dropped;
//! 2. **markup** ([`markup`]): drops emoji and pictographs, `*actions*` (with their text),
//!    markdown emphasis, heading, bullet and quote markers, code marks, brackets (keeping the
//!    words inside) and model tokens such as `<end_of_turn>` or `<|im_end|>`;
//! 3. **words** ([`words`], [`render`], [`verbal`]): removes text emoticons (`:)`, `xD`, `^_^`),
//!    reads arrows as words (`→` "to", `<-` "from"), keeps URLs and e-mail addresses intact,
//!    shortens stretched letters (`soooo` → `soo`), spaces a sentence colon (`Note:this`) and
//!    leaves other colons alone (`10:30`, `A:1`, `3:2`); with verbalization on it also reads
//!    numbers, money, temperatures, percentages, units, phone numbers, e-mail addresses and
//!    URL hosts as words;
//! 4. **spacing** ([`spacing`]): collapses whitespace and repeated punctuation, and fixes the
//!    spaces around punctuation.
//!
//! Invariants (tested by properties below and by the case table in
//! `tests/sanitize_table.rs`):
//! - **chunk invariance**: every stage is a deterministic function of the characters seen so
//!   far and never looks at chunk boundaries, so the concatenation of everything
//!   [`Sanitizer::push`] and [`Sanitizer::finish`] return equals [`sanitize`] of the whole text;
//! - **bounded hold**: plain words pass as they arrive; a word is held only from its first
//!   undecided character to its end, and never more than `MAX_HOLD` (160) characters; with
//!   verbalization a phone number may wait for its following digit groups (at most 15 digits);
//! - **clean output**: no leading, trailing or double spaces, no newlines, emoji or `*`;
//! - **no panics** on any input.

mod escape;
mod lexicon;
mod markup;
mod render;
mod spacing;
mod verbal;
mod words;

/// Spells a whole number in English words.
pub use verbal::number_words;

/// Marks the start of text that must pass the spacing stage unchanged (a kept URL or address).
/// Both marks are dropped from the input (escape stage), so they cannot be forged.
const PROTECT: char = '\u{E000}';
/// Marks the end of protected text.
const UNPROTECT: char = '\u{E001}';

/// An incremental sanitizer for one reply.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    escape: escape::EscapeStage,
    markup: markup::MarkupStage,
    words: words::WordStage,
    spacing: spacing::SpacingStage,
}

impl Sanitizer {
    /// A sanitizer; `verbalize` turns numbers and symbols into words.
    pub fn new(verbalize: bool) -> Self {
        Self {
            escape: escape::EscapeStage::new(),
            markup: markup::MarkupStage::new(),
            words: words::WordStage::new(verbalize),
            spacing: spacing::SpacingStage::default(),
        }
    }

    /// Feeds a chunk; returns the text that is decided.
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let Self {
            escape,
            markup,
            words,
            spacing,
        } = self;
        for c in text.chars() {
            escape.step(c, &mut |e| {
                markup.step(e, &mut |m| {
                    words.step(m, &mut |w| spacing.step(w, &mut out))
                })
            });
        }
        out
    }

    /// Ends the reply; returns what was still held back.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        let Self {
            escape,
            markup,
            words,
            spacing,
        } = self;
        escape.finish(&mut |e| {
            markup.step(e, &mut |m| {
                words.step(m, &mut |w| spacing.step(w, &mut out))
            })
        });
        markup.finish(&mut |m| words.step(m, &mut |w| spacing.step(w, &mut out)));
        words.finish(&mut |w| spacing.step(w, &mut out));
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
mod tests;

//! Sanitizer overhead per streamed token.
//!
//! `reply` / `reply_verbalize` stream an ordinary reply (markup, emoji, a number); they are the
//! before/after numbers in `docs/sanitizer.md`. `special` / `special_verbalize` stream a reply
//! full of the forms the word stage reads (URL, e-mail, phone, money, emoticons, arrows).
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use criterion::{Criterion, Throughput, criterion_main};
use yap_core::sanitize::Sanitizer;

/// A reply as an LLM streams it: word-sized pieces with some markup, emoji and numbers.
const REPLY: &str = "Oh, *laughs softly* that's **such** a good question! 😄 Honestly, I think the \
                     best part of a rainy day is staying in with a warm cup of tea... maybe 2 cups, \
                     and a good book. What about you?? Do you like 50% dark chocolate or milk? 🍫";

/// A reply dense in special forms.
const SPECIAL: &str = "Sure! Meet me at 10:30 → the cafe :) lol that's soooo good xD. Email me at \
                       jane.doe@example.com or call +1 415 555 0100, it's 72°F out and only $19.99!! \
                       See https://www.example.com/menu?x=1 for 5-10 km of trails ^_^";

/// Splits a reply into word-sized pieces with their leading space, as tokens arrive.
fn pieces(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in reply.chars() {
        if c == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sanitizer");
    for (name, text) in [("reply", REPLY), ("special", SPECIAL)] {
        let tokens = pieces(text);
        group.throughput(Throughput::Elements(tokens.len() as u64));
        for verbalize in [false, true] {
            let id = if verbalize {
                format!("{name}_verbalize")
            } else {
                name.to_owned()
            };
            group.bench_function(id, |b| {
                b.iter(|| {
                    let mut s = Sanitizer::new(verbalize);
                    let mut n = 0;
                    for t in &tokens {
                        n += s.push(std::hint::black_box(t)).len();
                    }
                    n + s.finish().len()
                })
            });
        }
    }
    group.finish();
}

/// The criterion group (in a module: the macro's function carries no doc comment).
mod group {
    criterion::criterion_group!(benches, super::bench);
}

criterion_main!(group::benches);

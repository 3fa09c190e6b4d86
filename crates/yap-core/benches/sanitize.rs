//! Sanitizer overhead per streamed token.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use yap_core::sanitize::Sanitizer;

/// A reply as an LLM streams it: word-sized pieces with some markup, emoji and numbers.
fn pieces() -> Vec<String> {
    let reply = "Oh, *laughs softly* that's **such** a good question! 😄 Honestly, I think the \
                 best part of a rainy day is staying in with a warm cup of tea... maybe 2 cups, \
                 and a good book. What about you?? Do you like 50% dark chocolate or milk? 🍫";
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
    let tokens = pieces();
    let mut group = c.benchmark_group("sanitizer");
    group.throughput(Throughput::Elements(tokens.len() as u64));
    for verbalize in [false, true] {
        group.bench_function(
            if verbalize {
                "reply_verbalize"
            } else {
                "reply"
            },
            |b| {
                b.iter(|| {
                    let mut s = Sanitizer::new(verbalize);
                    let mut n = 0;
                    for t in &tokens {
                        n += s.push(std::hint::black_box(t)).len();
                    }
                    n + s.finish().len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

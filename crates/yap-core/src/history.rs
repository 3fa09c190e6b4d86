//! Conversation history: parsing client transcripts and trimming to a token budget.

use crate::prompt::{ChatMessage, Role};

/// Parses a `User:` / `Assistant:` transcript into messages.
///
/// Accepted speaker prefixes (case-insensitive): `User`, `Human`, `Me` for the user;
/// `Assistant`, `AI`, `Bot`, `Companion`, `Yap` for the companion. A line without a prefix
/// continues the previous message (or starts a user message when it is the first).
pub fn parse_transcript(text: &str) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let (role, rest) = match trimmed.split_once(':') {
            Some((speaker, rest)) => match speaker.trim().to_ascii_lowercase().as_str() {
                "user" | "human" | "me" => (Some(Role::User), rest.trim()),
                "assistant" | "ai" | "bot" | "companion" | "yap" => {
                    (Some(Role::Assistant), rest.trim())
                }
                _ => (None, trimmed),
            },
            None => (None, trimmed),
        };
        match (role, out.last_mut()) {
            (Some(role), Some(last)) if last.role == role => {
                last.content.push('\n');
                last.content.push_str(rest);
            }
            (Some(role), _) => out.push(ChatMessage::new(role, rest)),
            (None, Some(last)) => {
                last.content.push('\n');
                last.content.push_str(rest);
            }
            (None, None) => out.push(ChatMessage::new(Role::User, rest)),
        }
    }
    out
}

/// Merges a client transcript with the history the server kept for the session: when one is a
/// prefix of the other (the client sent a stale or a fuller copy of the same conversation) the
/// longer one wins; when they diverge, the client's transcript is taken as the truth.
pub fn merge(server: &[ChatMessage], client: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let same =
        |a: &ChatMessage, b: &ChatMessage| a.role == b.role && a.content.trim() == b.content.trim();
    let common = server
        .iter()
        .zip(&client)
        .take_while(|(a, b)| same(a, b))
        .count();
    if common == client.len() && server.len() >= client.len() {
        server.to_vec()
    } else {
        client
    }
}

/// Trims history from the oldest end: when its tokens exceed `max_tokens`, drops whole oldest
/// messages until at most `retention_pct`% of `max_tokens` remain. Trimming in such chunks keeps
/// the kept history byte-stable for many turns, so the engine's prefix cache stays valid.
pub fn trim(
    history: &mut Vec<ChatMessage>,
    count: impl Fn(&str) -> usize,
    max_tokens: usize,
    retention_pct: usize,
) -> usize {
    let sizes: Vec<usize> = history.iter().map(|m| count(&m.content) + 4).collect();
    let total: usize = sizes.iter().sum();
    if total <= max_tokens {
        return 0;
    }
    let target = max_tokens * retention_pct.min(100) / 100;
    let mut remaining = total;
    let mut drop = 0;
    while drop < history.len() && remaining > target {
        remaining -= sizes[drop];
        drop += 1;
    }
    // Never start the kept history with an assistant message.
    while drop < history.len() && history[drop].role == Role::Assistant {
        drop += 1;
    }
    history.drain(..drop);
    drop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_speakers_and_continuations() {
        let h = parse_transcript(
            "hello\nUser: hi there\nAssistant: hey!\nhow are you?\nuser: fine\nUSER: really",
        );
        assert_eq!(h.len(), 3);
        assert_eq!(h[0], ChatMessage::new(Role::User, "hello\nhi there"));
        assert_eq!(
            h[1],
            ChatMessage::new(Role::Assistant, "hey!\nhow are you?")
        );
        assert_eq!(h[2], ChatMessage::new(Role::User, "fine\nreally"));
    }

    #[test]
    fn merge_keeps_the_fuller_copy() {
        let u = |t: &str| ChatMessage::new(Role::User, t);
        let a = |t: &str| ChatMessage::new(Role::Assistant, t);
        let server = vec![u("hi"), a("hello"), u("how are you"), a("good")];
        // stale client copy: server wins
        assert_eq!(merge(&server, vec![u("hi"), a("hello ")]), server);
        // fuller client copy: client wins
        let fuller = [server.clone(), vec![u("more")]].concat();
        assert_eq!(merge(&server, fuller.clone()), fuller);
        // diverged: client wins
        assert_eq!(merge(&server, vec![u("other")]), vec![u("other")]);
        assert_eq!(merge(&[], vec![u("x")]), vec![u("x")]);
    }

    #[test]
    fn trims_oldest_in_chunks() {
        let mut h: Vec<ChatMessage> = (0..10)
            .map(|i| {
                ChatMessage::new(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    "x".repeat(96),
                )
            })
            .collect();
        // each message costs 100 "tokens": 1000 total, budget 500 → keep ≤ 200
        let dropped = trim(&mut h, |s| s.len(), 500, 40);
        assert_eq!(dropped, 8);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].role, Role::User);
        let dropped = trim(&mut h, |s| s.len(), 500, 40);
        assert_eq!(dropped, 0);
    }
}

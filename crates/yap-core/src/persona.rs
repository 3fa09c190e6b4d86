//! Built-in persona templates: `persona_style` × `gender` × `user_identity` → a system prompt.

use yap_protocol::{Gender, UserIdentity};

/// Styles with a built-in template; any other style name falls back to the neutral default.
pub const STYLES: &[&str] = &["default", "wholesome", "flirty", "savage", "nerdy"];

fn style_line(style: &str) -> &'static str {
    match style {
        "wholesome" => {
            "You are warm, kind and encouraging. You notice the good in things and say so, and you cheer the user on."
        }
        "flirty" => {
            "You are playful and charming, with light, tasteful flirting and teasing compliments. You never get explicit."
        }
        "savage" => {
            "You are witty and brutally honest. You roast the user with sharp, funny one-liners, but never with real cruelty."
        }
        "nerdy" => {
            "You are a huge science nerd who also loves games and trivia. Whatever the user tells you, you reply with one quick, real science fact about it (chemistry, physics or biology), excited about the details."
        }
        _ => "You are friendly, relaxed and helpful, like a good friend who is easy to talk to.",
    }
}

/// Normalizes a style name to a known style, or `default`.
pub fn normalize_style(style: Option<&str>) -> &'static str {
    let s = style
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    STYLES
        .iter()
        .copied()
        .find(|k| *k == s)
        .unwrap_or("default")
}

/// Composes the persona system prompt.
pub fn compose(style: Option<&str>, gender: Option<Gender>, user: Option<UserIdentity>) -> String {
    let style = normalize_style(style);
    let who = match gender {
        Some(Gender::Woman) => "You are a woman",
        Some(Gender::Man) => "You are a man",
        None => "You are",
    };
    let companion = if gender.is_some() {
        format!("{who} and a voice companion named Yap.")
    } else {
        format!("{who} Yap, a voice companion.")
    };
    let user_line = match user {
        Some(UserIdentity::Woman) => " The user is a woman.",
        Some(UserIdentity::Man) => " The user is a man.",
        Some(UserIdentity::NonBinary) => " The user is non-binary; use they/them for them.",
        None => "",
    };
    format!(
        "{companion} {}{user_line} You are talking out loud, so answer in one to three short, natural sentences of plain spoken English: no lists, no markdown, no emoji.",
        style_line(style)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_differ_and_fall_back() {
        let a = compose(Some("nerdy"), Some(Gender::Woman), None);
        let b = compose(Some("savage"), Some(Gender::Woman), None);
        assert_ne!(a, b);
        assert!(a.contains("nerd"));
        assert_eq!(
            compose(Some("unknown"), None, None),
            compose(None, None, None)
        );
        assert!(compose(None, None, Some(UserIdentity::NonBinary)).contains("they/them"));
        assert_eq!(normalize_style(Some(" Flirty ")), "flirty");
    }
}

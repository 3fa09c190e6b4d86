//! ToolModel behaviour on the tiny BERT fixture: left truncation keeps the newest tokens, the
//! positive label is found by name, batching does not change verdicts.

use std::path::PathBuf;

use yap_tool::{ToolModel, user_context};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

#[test]
fn truncation_keeps_the_newest_tokens() {
    let full = ToolModel::load(&fixture(), None).unwrap();
    let cut = ToolModel::load(&fixture(), Some(8)).unwrap();
    assert_eq!(cut.max_tokens(), 8);
    let text = "look at this outfit what do you think can you see my screen right now";
    let all = full.encode(text).unwrap();
    let kept = cut.encode(text).unwrap();
    assert_eq!(kept.len(), 8);
    // [CLS] + the last 6 content tokens + [SEP]
    assert_eq!(kept[0], all[0]);
    assert_eq!(kept[7], *all.last().unwrap());
    assert_eq!(&kept[1..7], &all[all.len() - 7..all.len() - 1]);
}

#[test]
fn budget_is_capped_by_the_position_table() {
    // The fixture has 64 positions: a larger TOOL_HISTORY_TOKENS is capped.
    let m = ToolModel::load(&fixture(), Some(10_000)).unwrap();
    assert_eq!(m.max_tokens(), 64);
}

#[test]
fn batched_and_single_verdicts_agree() {
    let m = ToolModel::load(&fixture(), None).unwrap();
    let texts = ["look at this", "tell me a joke about cats please", "hi"];
    let batch = m.classify(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        let one = m.classify(&[t]).unwrap().remove(0);
        assert!((one.yes_probability - b.yes_probability).abs() < 1e-5);
        assert_eq!(b.yes_label, "yes");
        assert_eq!(b.no_label, "no");
    }
}

#[test]
fn user_context_puts_the_current_utterance_last() {
    let c = user_context(["first", " ", "second "], " now ");
    assert_eq!(c, "first\nsecond\nnow");
}

//! ToolModel behaviour on the tiny BERT fixture: left truncation keeps the newest tokens, the
//! positive label is found by name, batching does not change verdicts.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

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

#[tokio::test]
async fn adaptive_window_runs_a_lone_request_at_once_and_a_fixed_one_waits() {
    use std::time::{Duration, Instant};
    use yap_tool::{ServiceConfig, ToolService};
    for (adaptive, min, max) in [(true, 0, 900), (false, 1000, 10_000)] {
        let model = ToolModel::load(&fixture(), None).unwrap();
        let cfg = ServiceConfig {
            threads: 1,
            batch_window: Duration::from_millis(1000),
            max_batch: 16,
            adaptive,
        };
        let service = ToolService::start(model, cfg).unwrap();
        let t = Instant::now();
        let v = service
            .classify(yap_tool::ToolInput::utterance("look at this"))
            .await
            .unwrap();
        let ms = t.elapsed().as_millis();
        assert!((min..max).contains(&ms), "adaptive={adaptive}: {ms} ms");
        assert!((0.0..=1.0).contains(&v.yes_probability));
        // A withdrawn request (its future dropped) is never computed.
        if !adaptive {
            let s2 = std::sync::Arc::clone(&service);
            let pending = tokio::spawn(async move {
                s2.classify(yap_tool::ToolInput::utterance("never mind"))
                    .await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            pending.abort();
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let st = service.stats();
            assert_eq!(st.skipped_cancelled, 1, "{st:?}");
            assert_eq!(st.classified, 1, "{st:?}");
        }
    }
}

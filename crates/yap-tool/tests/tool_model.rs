//! ToolModel behaviour on the tiny BERT fixture: the pair encoding keeps the newest history and the
//! whole utterance, the positive label is found by name, batching does not change verdicts.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::path::PathBuf;

use yap_tool::{ToolInput, ToolModel, user_context};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

fn turn(history: &[&str], utterance: &str) -> ToolInput {
    ToolInput {
        history: history.iter().map(|h| (*h).to_owned()).collect(),
        utterance: utterance.to_owned(),
    }
}

#[test]
fn pair_encoding_keeps_the_newest_history_and_the_whole_utterance() {
    // The fixture reads 2 earlier turns joined by " [SEP] ", 24 tokens at most.
    let m = ToolModel::load(&fixture(), None).unwrap();
    assert_eq!(m.max_tokens(), 24);
    assert_eq!(m.history_turns(), Some(2));
    let alone = m.encode(&turn(&[], "look at this")).unwrap();
    // [CLS] [SEP] utterance [SEP]: segment 0 is empty.
    assert_eq!(alone.type_ids.iter().filter(|&&t| t == 0).count(), 2);
    let n = alone.ids.len();
    assert_eq!(
        alone.ids[2..n - 1],
        m.encode(&turn(&[], " look at this ")).unwrap().ids[2..n - 1]
    );
    let long = "tell me a joke about cats what is the capital of france";
    let older = "an older turn";
    let with = m.encode(&turn(&[older, long], "look at this")).unwrap();
    assert_eq!(with.ids.len(), 24);
    // The utterance is whole, in segment 1, at the end.
    assert_eq!(with.ids[24 - (n - 2)..], alone.ids[2..]);
    assert!(with.type_ids[24 - (n - 2)..].iter().all(|&t| t == 1));
    // History is cut from the left: its newest tokens are kept, right before the first [SEP].
    let body = |text: &str| {
        let e = m.encode(&turn(&[], text)).unwrap();
        e.ids[2..e.ids.len() - 1].to_vec()
    };
    let sep = alone.ids[1];
    let all: Vec<u32> = [body(older), vec![sep], body(long)].concat();
    let first_sep = with.type_ids.iter().position(|&t| t == 1).unwrap() - 1;
    let kept = &with.ids[1..first_sep];
    assert!(kept.len() < all.len(), "the history was cut");
    assert_eq!(kept, &all[all.len() - kept.len()..]);
    // Only the last 2 turns are read.
    let three = m.encode(&turn(&["a", "b", "c"], "look")).unwrap();
    let two = m.encode(&turn(&["b", "c"], "look")).unwrap();
    assert_eq!(three, two);
    // An utterance longer than the budget is cut from the right, with no history.
    let huge = m
        .encode(&turn(&["hi"], &format!("{long} {long} {long}")))
        .unwrap();
    assert_eq!(huge.ids.len(), 24);
    assert_eq!(huge.type_ids.iter().filter(|&&t| t == 0).count(), 2);
}

#[test]
fn the_tuned_threshold_comes_from_the_config() {
    let m = ToolModel::load(&fixture(), None).unwrap();
    assert_eq!(m.tuned_threshold(), Some(0.5));
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

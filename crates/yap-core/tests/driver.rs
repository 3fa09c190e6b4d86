//! The turn driver's rules, with a scripted engine and a fake classifier (no model, no socket).
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use yap_core::prompt::PromptFormat;
use yap_core::tool::SharedClassifier;
use yap_core::{
    CancelReason, CompletionInput, Core, CoreConfig, DeployMode, FrameSink, SessionUpdate,
    TurnFrame, TurnInput, TurnOutcome,
};
use yap_testkit::fake::FakeClassifier;
use yap_testkit::scripted::{Script, ScriptedEngine, char_model_text};

#[derive(Default)]
struct Rec(Mutex<Vec<TurnFrame>>, Mutex<bool>);

impl FrameSink for Rec {
    fn send(&self, f: TurnFrame) -> bool {
        self.0.lock().unwrap().push(f);
        !*self.1.lock().unwrap()
    }
}

impl Rec {
    fn frames(&self) -> Vec<TurnFrame> {
        self.0.lock().unwrap().clone()
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.frames()
            .iter()
            .map(|f| match f {
                TurnFrame::Ack(_) => "ack",
                TurnFrame::Tool(_) => "tool",
                TurnFrame::Token(_) => "token",
                TurnFrame::Final(_) => "final",
                TurnFrame::Done(_) => "done",
                TurnFrame::Cancelled(_) => "cancelled",
                TurnFrame::Error(_) => "error",
            })
            .collect()
    }
    fn terminals(&self) -> usize {
        self.frames().iter().filter(|f| f.is_terminal()).count()
    }
    fn text(&self) -> String {
        self.frames()
            .iter()
            .filter_map(|f| match f {
                TurnFrame::Token(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn core(
    mode: DeployMode,
    engine: &ScriptedEngine,
    tool: Option<Arc<FakeClassifier>>,
    tweak: impl FnOnce(&mut CoreConfig),
) -> Arc<Core> {
    let mut config = CoreConfig {
        deploy_mode: mode,
        ..CoreConfig::default()
    };
    tweak(&mut config);
    let format = PromptFormat::new(char_model_text()).unwrap();
    Core::new(
        Arc::new(engine.clone()),
        Some(format),
        tool.map(|t| t as SharedClassifier),
        config,
    )
}

fn reply(pieces: &[&str], ms: u64) -> ScriptedEngine {
    ScriptedEngine::new(Script::reply(pieces, Duration::from_millis(ms)))
}

fn turn(text: &str) -> TurnInput {
    TurnInput {
        utterance: text.into(),
        ..TurnInput::default()
    }
}

async fn run_turn(core: &Arc<Core>, session: &str, input: TurnInput) -> Arc<Rec> {
    let rec = Arc::new(Rec::default());
    let h = core
        .start_turn(core.sessions().get(session), input, rec.clone())
        .await;
    h.wait().await;
    rec
}

#[tokio::test]
async fn tool_frame_precedes_tokens_and_final_precedes_done() {
    let engine = reply(&["Sure", ", I", " see it."], 5);
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(40)));
    let c = core(DeployMode::Both, &engine, Some(tool), |_| {});
    let rec = run_turn(
        &c,
        "s1",
        TurnInput {
            final_frame: true,
            ..turn("look at this")
        },
    )
    .await;
    assert_eq!(
        rec.kinds(),
        ["tool", "token", "token", "token", "final", "done"]
    );
    let TurnFrame::Tool(d) = &rec.frames()[0] else {
        panic!()
    };
    assert!(d.yes);
    let rec = run_turn(&c, "s1", turn("thanks")).await;
    assert_eq!(rec.kinds()[0], "tool");
    assert_eq!(rec.terminals(), 1);
}

#[tokio::test]
async fn screen_prefixes_reach_the_prompt_and_the_next_turn() {
    let engine = reply(&["ok"], 1);
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(1)));
    let c = core(DeployMode::Both, &engine, Some(tool.clone()), |c| {
        c.tool_overlap = false
    });
    run_turn(&c, "p", turn("look at my drawing")).await;
    run_turn(&c, "p", turn("it is a cat in a hat")).await;
    run_turn(&c, "p", turn("anyway how are you")).await;
    let prompts: Vec<String> = engine
        .requests()
        .into_iter()
        .map(|r| r.prompt_text)
        .collect();
    assert!(
        prompts[0].contains("MUST CHECK SCREEN: look at my drawing"),
        "{}",
        prompts[0]
    );
    assert!(
        prompts[1].contains("ON THE SCREEN NOW: it is a cat in a hat"),
        "{}",
        prompts[1]
    );
    assert!(!prompts[1].contains("MUST CHECK SCREEN: it is"));
    assert!(
        prompts[2]
            .ends_with("<|im_start|>user\nanyway how are you<|im_end|>\n<|im_start|>assistant\n"),
        "{}",
        prompts[2]
    );
    // The tool model sees what the user said, without the prefixes.
    let inputs = tool.inputs();
    assert_eq!(
        inputs[2].history,
        ["look at my drawing", "it is a cat in a hat"]
    );
    // Per-session prefixes.
    let update = SessionUpdate {
        check_screen_prefix: Some("[LOOK]".into()),
        screen_checked_prefix: Some("[SAW]".into()),
        ..SessionUpdate::default()
    };
    run_turn(
        &c,
        "q",
        TurnInput {
            update,
            ..turn("look here")
        },
    )
    .await;
    run_turn(&c, "q", turn("a red car")).await;
    let prompts: Vec<String> = engine
        .requests()
        .into_iter()
        .map(|r| r.prompt_text)
        .collect();
    assert!(prompts[3].contains("[LOOK] look here"));
    assert!(prompts[4].contains("[SAW] a red car"));
}

#[tokio::test]
async fn overlapping_chat_restarts_with_the_prefix_on_yes_and_drops_its_tokens() {
    let engine = reply(&["spec", "ulative"], 1);
    engine.push(Script::reply(&["first"], Duration::from_millis(1)));
    engine.push(Script::reply(&["second"], Duration::from_millis(1)));
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(60)));
    let c = core(DeployMode::Both, &engine, Some(tool), |_| {});
    let rec = run_turn(&c, "r", turn("look at this")).await;
    assert_eq!(rec.text(), "second");
    let reqs = engine.requests();
    assert_eq!(reqs.len(), 2);
    assert!(!reqs[0].prompt_text.contains("MUST CHECK SCREEN"));
    assert!(
        reqs[1]
            .prompt_text
            .contains("MUST CHECK SCREEN: look at this")
    );
    // History records the reply that was sent, once.
    let h = c.sessions().get("r").snapshot().history;
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].content, "second");
}

#[tokio::test]
async fn late_tool_decision_is_no_and_counted() {
    let engine = reply(&["hi"], 1);
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(500)));
    let c = core(DeployMode::Both, &engine, Some(tool), |c| {
        c.tool_timeout = Duration::from_millis(30)
    });
    let rec = run_turn(&c, "t", turn("look at this")).await;
    let TurnFrame::Tool(d) = &rec.frames()[0] else {
        panic!("{:?}", rec.kinds())
    };
    assert!(!d.yes);
    assert_eq!(d.raw["fallback"], "timeout");
    assert_eq!(rec.kinds().last(), Some(&"done"));
    assert_eq!(
        c.counters()
            .tool_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn concurrent_starts_on_one_session_never_orphan_a_turn() {
    for _trial in 0..20 {
        let engine = reply(&["a", "b", "c", "d", "e", "f", "g", "h"], 20);
        let c = core(DeployMode::Chat, &engine, None, |_| {});
        let cell = c.sessions().get("race");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, cell) = (Arc::clone(&c), Arc::clone(&cell));
            tasks.push(tokio::spawn(async move {
                let rec = Arc::new(Rec::default());
                let h = c.start_turn(cell, turn("hello"), rec.clone()).await;
                (h, rec)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (h, _) in &all {
            h.cancel(CancelReason::Requested);
        }
        for (h, rec) in &all {
            let outcome = tokio::time::timeout(Duration::from_secs(2), h.wait())
                .await
                .expect("every turn ends");
            assert_eq!(rec.terminals(), 1, "{:?}", rec.kinds());
            assert_eq!(outcome, TurnOutcome::Cancelled);
        }
        assert_eq!(c.running_turns(), 0);
        let superseded = all
            .iter()
            .filter(|(_, r)| {
                r.frames().last() == Some(&TurnFrame::Cancelled(CancelReason::Superseded))
            })
            .count();
        assert_eq!(superseded, 7, "all but the last start were barged in");
    }
}

#[tokio::test]
async fn barge_in_ends_the_old_turn_before_the_new_one_starts() {
    let engine = reply(&["x"; 50], 10);
    let c = core(DeployMode::Chat, &engine, None, |_| {});
    let shared = Arc::new(Rec::default());
    let cell = c.sessions().get("b");
    let first = c
        .start_turn(Arc::clone(&cell), turn("one"), shared.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let second = c.start_turn(cell, turn("two"), shared.clone()).await;
    assert!(first.is_finished());
    second.wait().await;
    let k = shared.kinds();
    let cancelled = k.iter().position(|x| *x == "cancelled").unwrap();
    assert!(k[..cancelled].iter().all(|x| *x == "token"));
    assert_eq!(k.iter().filter(|x| **x == "done").count(), 1);
    assert_eq!(k.last(), Some(&"done"));
}

#[tokio::test]
async fn tool_mode_is_tool_then_done_and_history_stays_bounded() {
    let engine = reply(&[], 1);
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(1)));
    let c = core(DeployMode::Tool, &engine, Some(tool), |c| {
        c.chat_history_max_tokens = 2000
    });
    let big = "word ".repeat(2000);
    for _ in 0..50 {
        let rec = run_turn(&c, "tm", turn(&big)).await;
        assert_eq!(rec.kinds(), ["tool", "done"]);
    }
    let h = c.sessions().get("tm").snapshot().history;
    let bytes: usize = h.iter().map(|m| m.content.len()).sum();
    assert!(
        bytes < 10 * 2000 * 4,
        "history kept {bytes} bytes in tool mode"
    );
    assert!(engine.requests().is_empty());
}

#[tokio::test]
async fn a_dead_sink_cancels_the_turn_and_the_generation() {
    // Words with spaces: the speech filter holds a word until it ends, so "xxxx…" would stream nothing.
    let engine = reply(&["word "; 100], 5);
    let c = core(DeployMode::Chat, &engine, None, |_| {});
    let rec = Arc::new(Rec::default());
    let h = c
        .start_turn(c.sessions().get("d"), turn("hi"), rec.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    *rec.1.lock().unwrap() = true;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), h.wait())
            .await
            .unwrap(),
        TurnOutcome::Cancelled
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(engine.cancelled(), 1);
}

#[tokio::test]
async fn completions_apply_stop_strings_and_never_touch_sessions() {
    let engine = reply(&["Hello", " wor", "ld STOP", " more"], 1);
    let c = core(DeployMode::Chat, &engine, None, |_| {});
    let rec = Arc::new(Rec::default());
    let h = c.complete(
        CompletionInput {
            messages: None,
            raw_prompt: Some("Say hi".into()),
            prompt_ids: None,
            sampling: c.sampling_for(None, None),
            max_tokens: Some(10),
            stop: vec![" STOP".into()],
        },
        rec.clone(),
    );
    assert_eq!(h.wait().await, TurnOutcome::Completed);
    assert_eq!(rec.text(), "Hello world");
    assert_eq!(rec.kinds().last(), Some(&"done"));
    assert!(c.sessions().is_empty());
}

#[tokio::test]
async fn persona_over_budget_is_refused_without_a_tool_frame() {
    let engine = reply(&["x"], 1);
    let tool = Arc::new(FakeClassifier::new(&["look"], Duration::from_millis(1)));
    let c = core(DeployMode::Both, &engine, Some(tool), |c| {
        c.chat_prompt_max_tokens = 10
    });
    let update = SessionUpdate {
        persona_text: Some("a very long persona indeed".into()),
        ..SessionUpdate::default()
    };
    let rec = run_turn(
        &c,
        "pp",
        TurnInput {
            update,
            ..turn("hi")
        },
    )
    .await;
    assert_eq!(rec.kinds(), ["error"]);
    let TurnFrame::Error(e) = &rec.frames()[0] else {
        panic!()
    };
    assert_eq!(e.kind, yap_core::TurnErrorKind::PersonaTooLong);
}

//! A fake tool classifier: "yes" when the utterance contains a trigger word, after a delay;
//! records what it was asked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use yap_core::tool::{Classifier, ClassifyFuture, ToolInput, ToolVerdict};

/// The fake classifier.
#[derive(Debug)]
pub struct FakeClassifier {
    /// Words that make the verdict yes.
    pub triggers: Vec<String>,
    /// Time each classification takes.
    pub delay: Duration,
    /// Fail every classification with this message.
    pub fail: Option<String>,
    inputs: Mutex<Vec<ToolInput>>,
    finished: AtomicU64,
}

impl FakeClassifier {
    /// Says yes to utterances containing any of `triggers`, after `delay`.
    pub fn new(triggers: &[&str], delay: Duration) -> Self {
        Self {
            triggers: triggers.iter().map(|s| (*s).to_owned()).collect(),
            delay,
            fail: None,
            inputs: Mutex::new(Vec::new()),
            finished: AtomicU64::new(0),
        }
    }

    /// Inputs seen so far.
    pub fn inputs(&self) -> Vec<ToolInput> {
        self.inputs.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Classifications that ran to the end (not withdrawn).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

impl Classifier for FakeClassifier {
    fn classify(&self, input: ToolInput) -> ClassifyFuture<'_> {
        Box::pin(async move {
            let yes = self
                .triggers
                .iter()
                .any(|t| input.utterance.to_lowercase().contains(t.as_str()));
            if let Ok(mut i) = self.inputs.lock() {
                i.push(input);
            }
            tokio::time::sleep(self.delay).await;
            self.finished.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            Ok(ToolVerdict {
                yes_probability: if yes { 0.97 } else { 0.03 },
                yes_label: "yes".into(),
                no_label: "no".into(),
                tokens: 8,
            })
        })
    }
}

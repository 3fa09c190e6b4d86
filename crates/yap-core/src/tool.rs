//! The tool decision as the turn driver sees it: a classifier behind a trait (the real one is
//! [`yap_tool::ToolService`]; tests use a fake), and the verdict read against a threshold.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use yap_tool::{ToolInput, ToolVerdict};

/// A boxed classification future.
pub type ClassifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ToolVerdict, String>> + Send + 'a>>;

/// Decides whether a turn needs a screenshot. Dropping the future withdraws the request.
pub trait Classifier: Send + Sync {
    /// Classifies one turn.
    fn classify(&self, input: ToolInput) -> ClassifyFuture<'_>;
    /// Facts for `/healthz` (model name, labels, counters).
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The decision threshold the model was tuned for, when it says.
    fn tuned_threshold(&self) -> Option<f32> {
        None
    }
}

impl Classifier for yap_tool::ToolService {
    fn classify(&self, input: ToolInput) -> ClassifyFuture<'_> {
        Box::pin(async move {
            yap_tool::ToolService::classify(self, input)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn describe(&self) -> serde_json::Value {
        let st = self.stats();
        serde_json::json!({
            "model": self.name(),
            "labels": self.labels(),
            "max_tokens": self.max_tokens(),
            "classified": st.classified,
            "batches": st.batches,
            "peak_batch": st.peak_batch,
            "skipped_cancelled": st.skipped_cancelled,
        })
    }

    fn tuned_threshold(&self) -> Option<f32> {
        yap_tool::ToolService::tuned_threshold(self)
    }
}

/// A shared classifier.
pub type SharedClassifier = Arc<dyn Classifier>;

/// A tool decision, ready for the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDecision {
    /// Take a screenshot.
    pub yes: bool,
    /// Classifier output for the frame's `raw` (label, probability, ...).
    pub raw: serde_json::Value,
}

impl ToolDecision {
    /// Reads a verdict against a threshold; `ms` is the time since the turn began.
    pub fn from_verdict(v: &ToolVerdict, threshold: f32, ms: f64) -> Self {
        let yes = v.is_yes(threshold);
        let (label, probability) = if yes {
            (v.yes_label.clone(), v.yes_probability)
        } else {
            (v.no_label.clone(), 1.0 - v.yes_probability)
        };
        Self {
            yes,
            raw: serde_json::json!({
                "label": label,
                "probability": probability,
                "yes_probability": v.yes_probability,
                "threshold": threshold,
                "tokens": v.tokens,
                "ms": ms,
            }),
        }
    }

    /// The "no" a turn gets when its classification did not come back in time (or failed).
    pub fn fallback_no(reason: &str, ms: f64) -> Self {
        Self {
            yes: false,
            raw: serde_json::json!({ "label": "no", "fallback": reason, "ms": ms }),
        }
    }
}

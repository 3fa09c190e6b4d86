//! A turn's metrics and trace spans, recorded through the `metrics` and `tracing` facades (no-ops
//! until the binary installs a recorder or an exporter).
//!
//! Invariants: every turn is counted exactly once, when it ends ([`turn_ended`], from its one
//! terminal frame); latency histograms get a sample only for the marks the turn reached; token
//! histograms only for completed turns (a cancelled turn's usage is not known). Names and labels are listed in
//! `yap_server::metrics::CATALOG`.

use metrics::{counter, histogram};
use tracing::Span;

use super::output::Marks;
use super::{CancelReason, TurnErrorKind, TurnFrame};

/// The label of a cancel reason.
pub fn reason_label(r: CancelReason) -> &'static str {
    match r {
        CancelReason::Requested => "requested",
        CancelReason::Superseded => "superseded",
        CancelReason::Disconnected => "disconnected",
        CancelReason::Shutdown => "shutdown",
    }
}

/// The label of an error kind.
pub fn error_label(k: TurnErrorKind) -> &'static str {
    match k {
        TurnErrorKind::PersonaTooLong => "persona_too_long",
        TurnErrorKind::PromptTooLong => "prompt_too_long",
        TurnErrorKind::InvalidRequest => "invalid_request",
        TurnErrorKind::EngineUnavailable => "engine_unavailable",
        TurnErrorKind::Internal => "internal",
    }
}

fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

/// Records a finished turn from its terminal frame and marks: the outcome counter, latency and
/// token histograms, and the outcome on the turn's span.
pub fn turn_ended(dialect: &'static str, marks: &Marks, terminal: Option<&TurnFrame>, span: &Span) {
    let d = dialect;
    let (outcome, code, usage) = match terminal {
        Some(TurnFrame::Done(u)) => ("done", "", Some(u)),
        Some(TurnFrame::Cancelled(r)) => ("cancelled", reason_label(*r), None),
        Some(TurnFrame::Error(e)) => ("error", error_label(e.kind), None),
        _ => ("error", "internal", None),
    };
    counter!("yap_turns_total", "dialect" => d, "outcome" => outcome, "code" => code).increment(1);
    if matches!(
        terminal,
        Some(TurnFrame::Cancelled(CancelReason::Superseded))
    ) {
        counter!("yap_barge_ins_total", "dialect" => d).increment(1);
    }
    record_marks(d, outcome, marks);
    if let Some(u) = usage {
        histogram!("yap_prompt_tokens", "dialect" => d).record(f64::from(u.prompt_tokens));
        histogram!("yap_cached_prompt_tokens", "dialect" => d)
            .record(f64::from(u.cached_prompt_tokens));
        histogram!("yap_completion_tokens", "dialect" => d).record(f64::from(u.completion_tokens));
        span.record("prompt_tokens", u.prompt_tokens);
        span.record("cached_prompt_tokens", u.cached_prompt_tokens);
        span.record("completion_tokens", u.completion_tokens);
    }
    span.record("outcome", outcome);
    if !code.is_empty() {
        span.record("code", code);
    }
}

fn record_marks(d: &'static str, outcome: &'static str, m: &Marks) {
    if let Some(t) = m.tool_ms {
        histogram!("yap_toolcall_latency_seconds", "dialect" => d).record(secs(t));
    }
    if let Some(t) = m.first_token_ms {
        histogram!("yap_time_to_first_token_seconds", "dialect" => d).record(secs(t));
    }
    if let Some(t) = m.first_sentence_ms {
        histogram!("yap_time_to_first_sentence_seconds", "dialect" => d).record(secs(t));
    }
    if let Some(t) = m.end_ms {
        histogram!("yap_turn_duration_seconds", "dialect" => d, "outcome" => outcome)
            .record(secs(t));
    }
    if m.max_gap_ms > 0.0 {
        histogram!("yap_max_inter_token_gap_seconds", "dialect" => d).record(secs(m.max_gap_ms));
    }
}

/// Records the time from a cancel to the turn's terminal frame.
pub fn cancel_to_done(dialect: &'static str, reason: CancelReason, secs: f64) {
    histogram!("yap_cancel_to_done_seconds", "dialect" => dialect, "reason" => reason_label(reason))
        .record(secs);
}

/// Counts a tool decision that came too late (treated as no).
pub fn tool_timeout() {
    counter!("yap_tool_timeouts_total").increment(1);
}

/// Counts a failed tool classification.
pub fn tool_failure() {
    counter!("yap_tool_failures_total").increment(1);
}

/// The span of a turn (child of the current span: the connection or request that started it).
pub fn turn_span(id: u64, dialect: &'static str, session: &str) -> Span {
    tracing::info_span!(
        "turn",
        turn.id = id,
        dialect,
        session,
        outcome = tracing::field::Empty,
        code = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        cached_prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    )
}

/// The span of a tool classification (child of the turn).
pub fn tool_span(parent: &Span) -> Span {
    tracing::info_span!(parent: parent, "tool", decision = tracing::field::Empty, ms = tracing::field::Empty)
}

/// The span of a prompt's prefill: from the request to the engine until its first event.
pub fn prefill_span(parent: &Span, prompt_tokens: usize) -> Span {
    tracing::info_span!(parent: parent, "prefill", prompt_tokens)
}

/// The span of a generation's decode: from its first event to its end (a sibling of its
/// prefill under the same turn).
pub fn decode_span(parent: &Span) -> Span {
    tracing::info_span!(parent: parent, "decode", pieces = tracing::field::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_dashboard_s() {
        let reasons = [
            CancelReason::Requested,
            CancelReason::Superseded,
            CancelReason::Disconnected,
            CancelReason::Shutdown,
        ]
        .map(reason_label);
        assert_eq!(
            reasons,
            ["requested", "superseded", "disconnected", "shutdown"]
        );
        assert_eq!(
            error_label(TurnErrorKind::EngineUnavailable),
            "engine_unavailable"
        );
    }
}

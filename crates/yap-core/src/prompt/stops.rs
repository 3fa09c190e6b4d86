//! Stop strings: text is held back while it may be the start of a stop string and cut at a full
//! match. Runs in the turn driver (never on an engine's decode thread).
//!
//! Invariant: the concatenation of everything `push` returns before a hit, plus `flush`, is the
//! input up to (not including) the first stop string.

/// Holds back streamed text that may be the start of a stop string; cuts at a full match.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what may be emitted now and whether a stop string was reached
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&stop[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases whatever is held back (at the end of a generation).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for c in chunks {
            let (o, hit) = f.push(c);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&f.flush());
        (out, false)
    }

    #[test]
    fn stop_filter_cuts_across_chunks() {
        assert_eq!(
            run(&["\nUser:"], &["Hi", " there\n", "Us", "er: more"]),
            ("Hi there".into(), true)
        );
        assert_eq!(
            run(&["\nUser:"], &["Hi\n", "Usual"]),
            ("Hi\nUsual".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["END", "\n\n"], &["one\n", "\ntwo"]),
            ("one".into(), true)
        );
    }

    #[test]
    fn stop_filter_holds_only_possible_prefixes() {
        let mut f = StopFilter::new(["\nUser:".to_string()]);
        assert_eq!(f.push("abc\nU"), ("abc".into(), false));
        assert_eq!(f.push("x"), ("\nUx".into(), false));
        assert_eq!(f.flush(), "");
    }
}

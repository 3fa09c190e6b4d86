//! Session state and the session store.
//!
//! Invariants:
//! - At most one turn runs per session: a new turn takes the session's gate, cancels the running
//!   turn and waits for its terminal frame, then registers itself — all under the gate, so two
//!   concurrent starts on one session serialize and neither turn is orphaned.
//! - The store is bounded: by bytes (`SESSION_CACHE_MB`, weighed by persona + history size) and
//!   by idle time (`SESSION_IDLE_TIMEOUT_S`); an evicted session's KV cache is released in the
//!   engine. Connection-owned sessions (protocol v1) are not in the store and are released when
//!   their connection drops them.

use std::sync::{Arc, Mutex, MutexGuard};

use moka::notification::RemovalCause;
use yap_engine_api::SharedEngine;
use yap_protocol::{Gender, UserIdentity};

use crate::persona;
use crate::prompt::{ChatMessage, Role};
use crate::turn::TurnHandle;

/// What a session remembers between turns.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Persona given as text (`persona_text` / `chat_prompt`), overriding templates.
    pub persona_text: Option<String>,
    /// Template persona style.
    pub persona_style: Option<String>,
    /// Assistant gender for templates.
    pub gender: Option<Gender>,
    /// User identity for templates.
    pub user_identity: Option<UserIdentity>,
    /// Conversation so far (user / assistant messages, as the chat model saw them).
    pub history: Vec<ChatMessage>,
    /// Sampling overrides kept for later turns.
    pub sampling: Option<yap_protocol::Sampling>,
    /// The last turn's tool decision was yes: the next utterance gets `SCREEN_CHECKED_PREFIX`.
    pub screen_pending: bool,
    /// Per-session `CHECK_SCREEN_PREFIX`.
    pub check_screen_prefix: Option<String>,
    /// Per-session `SCREEN_CHECKED_PREFIX`.
    pub screen_checked_prefix: Option<String>,
}

impl Session {
    /// The persona prompt in effect.
    pub fn persona(&self) -> String {
        self.persona_text.clone().unwrap_or_else(|| {
            persona::compose(
                self.persona_style.as_deref(),
                self.gender,
                self.user_identity,
            )
        })
    }

    /// Approximate bytes held (for the store's weigher).
    pub fn weight(&self) -> u32 {
        let text: usize = self
            .history
            .iter()
            .map(|m| m.content.len() + 32)
            .sum::<usize>()
            + self.persona_text.as_ref().map_or(0, String::len);
        u32::try_from(text + 512).unwrap_or(u32::MAX)
    }

    /// Earlier user utterances as the client said them (screen prefixes removed).
    pub fn user_utterances(&self, prefixes: &[&str]) -> Vec<String> {
        self.history
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| strip_prefixes(&m.content, prefixes).to_owned())
            .collect()
    }
}

/// `text` without any of `prefixes` at its start (repeatedly), trimmed.
pub fn strip_prefixes<'a>(text: &'a str, prefixes: &[&str]) -> &'a str {
    let mut t = text.trim_start();
    loop {
        let before = t.len();
        for p in prefixes.iter().filter(|p| !p.is_empty()) {
            if let Some(rest) = t.strip_prefix(p) {
                t = rest.trim_start();
            }
        }
        if t.len() == before {
            return t.trim_end();
        }
    }
}

/// A session and the gate that keeps its turns one at a time.
#[derive(Debug)]
pub struct SessionCell {
    key: String,
    state: Mutex<Session>,
    /// The running turn, behind the gate.
    pub(crate) gate: tokio::sync::Mutex<Option<TurnHandle>>,
}

impl SessionCell {
    /// A new, empty session with an engine cache key.
    pub fn new(key: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            key: key.into(),
            state: Mutex::new(Session::default()),
            gate: tokio::sync::Mutex::new(None),
        })
    }

    /// The engine cache key (the session id).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Locks the state (a poisoned lock is recovered: the state stays usable).
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> Session {
        self.lock().clone()
    }

    /// The running turn, if any (without waiting for the gate).
    pub fn running(&self) -> Option<TurnHandle> {
        self.gate
            .try_lock()
            .ok()
            .and_then(|g| g.clone())
            .filter(|t| !t.is_finished())
    }
}

/// Sessions by id, bounded in bytes and idle time.
pub struct SessionStore {
    cache: moka::sync::Cache<String, Arc<SessionCell>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &self.cache.entry_count())
            .finish()
    }
}

impl SessionStore {
    /// A store of at most `max_bytes` of session state; sessions unused for `idle` go. Evicted
    /// sessions' KV is released in `engine`.
    pub fn new(max_bytes: u64, idle: std::time::Duration, engine: SharedEngine) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            // Plain LRU: a new session must never be the one rejected.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_k: &String, v: &Arc<SessionCell>| v.lock().weight())
            .time_to_idle(idle)
            .eviction_listener(move |key: Arc<String>, _v, cause| {
                if cause != RemovalCause::Replaced {
                    engine.release(&key);
                }
            })
            .build();
        Self { cache }
    }

    /// The session of `id`, created when new.
    pub fn get(&self, id: &str) -> Arc<SessionCell> {
        self.cache.get_with(id.to_owned(), || SessionCell::new(id))
    }

    /// The session of `id` when it exists.
    pub fn peek(&self, id: &str) -> Option<Arc<SessionCell>> {
        self.cache.get(id)
    }

    /// Re-weighs a session after it grew or shrank.
    pub fn touch(&self, cell: &Arc<SessionCell>) {
        if self.cache.contains_key(cell.key()) {
            self.cache.insert(cell.key().to_owned(), Arc::clone(cell));
        }
    }

    /// Sessions held (approximate until pending maintenance runs).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of session state held (by the weigher).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use yap_engine_api::{
        ChatEngine, EngineError, EngineInfo, EngineRequest, GenerationStream, Readiness,
    };

    #[derive(Default)]
    struct Releases(StdMutex<Vec<String>>);
    impl ChatEngine for Releases {
        fn info(&self) -> EngineInfo {
            EngineInfo {
                kind: "t".into(),
                model: String::new(),
                context_tokens: 0,
            }
        }
        fn readiness(&self) -> Readiness {
            Readiness::Ready
        }
        fn generate(&self, _r: EngineRequest) -> Result<GenerationStream, EngineError> {
            Err(EngineError::Unavailable("test".into()))
        }
        fn release(&self, key: &str) {
            self.0.lock().unwrap().push(key.to_owned());
        }
    }

    #[test]
    fn store_is_bounded_by_bytes_and_releases_evicted_sessions() {
        let engine = Arc::new(Releases::default());
        let store = SessionStore::new(
            64 * 1024,
            std::time::Duration::from_secs(60),
            engine.clone(),
        );
        for i in 0..10_000 {
            let cell = store.get(&format!("s{i}"));
            cell.lock().persona_text = Some("x".repeat(1000));
            store.touch(&cell);
        }
        assert!(
            store.weighted_bytes() <= 64 * 1024,
            "{}",
            store.weighted_bytes()
        );
        assert!(store.len() < 100);
        assert!(
            engine.0.lock().unwrap().len() > 9_000,
            "evictions release KV"
        );
        assert!(!engine.0.lock().unwrap().iter().any(|k| k == "s9999"));
    }

    #[test]
    fn idle_sessions_expire() {
        let engine = Arc::new(Releases::default());
        let store = SessionStore::new(
            1 << 20,
            std::time::Duration::from_millis(50),
            engine.clone(),
        );
        store.get("a");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(store.peek("a").is_none());
        store.len();
        assert_eq!(engine.0.lock().unwrap().as_slice(), ["a".to_owned()]);
    }

    #[test]
    fn prefixes_are_stripped_for_the_tool_context() {
        let p = ["MUST CHECK SCREEN:", "ON THE SCREEN NOW:"];
        assert_eq!(strip_prefixes("MUST CHECK SCREEN: look", &p), "look");
        assert_eq!(
            strip_prefixes("MUST CHECK SCREEN: ON THE SCREEN NOW: a cat", &p),
            "a cat"
        );
        assert_eq!(strip_prefixes(" plain ", &p), "plain");
    }
}

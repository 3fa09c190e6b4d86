//! An engine that is still being loaded: `Loading` until the real engine is set, then a
//! transparent handle to it (or `Down` if loading failed). Lets a server listen at once and
//! answer health checks while a model loads.

use std::sync::{Mutex, OnceLock};

use crate::{
    ChatEngine, EngineError, EngineInfo, EngineRequest, EngineStats, GenerationStream, Readiness,
    SharedEngine,
};

/// A chat engine set once it is loaded.
#[derive(Default)]
pub struct DeferredEngine {
    inner: OnceLock<SharedEngine>,
    status: Mutex<Option<Readiness>>,
}

impl std::fmt::Debug for DeferredEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredEngine")
            .field("loaded", &self.inner.get().is_some())
            .finish()
    }
}

impl DeferredEngine {
    /// An engine loading `what`.
    pub fn new(what: impl Into<String>) -> Self {
        let e = Self::default();
        e.report(Readiness::Loading(what.into()));
        e
    }

    /// Says what the loading is at (or that it failed, with `Down`).
    pub fn report(&self, status: Readiness) {
        if let Ok(mut s) = self.status.lock() {
            *s = Some(status);
        }
    }

    /// The loaded engine takes over.
    pub fn set(&self, engine: SharedEngine) {
        let _ = self.inner.set(engine);
    }

    /// The loaded engine, once set.
    pub fn get(&self) -> Option<&SharedEngine> {
        self.inner.get()
    }
}

impl ChatEngine for DeferredEngine {
    fn info(&self) -> EngineInfo {
        match self.inner.get() {
            Some(e) => e.info(),
            None => EngineInfo {
                kind: "loading".into(),
                model: String::new(),
                context_tokens: 0,
            },
        }
    }

    fn readiness(&self) -> Readiness {
        match self.inner.get() {
            Some(e) => e.readiness(),
            None => self
                .status
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_else(|| Readiness::Loading("starting".into())),
        }
    }

    fn generate(&self, request: EngineRequest) -> Result<GenerationStream, EngineError> {
        match self.inner.get() {
            Some(e) => e.generate(request),
            None => Err(EngineError::Unavailable(
                "the chat engine is still loading".into(),
            )),
        }
    }

    fn release(&self, cache_key: &str) {
        if let Some(e) = self.inner.get() {
            e.release(cache_key);
        }
    }

    fn stats(&self) -> EngineStats {
        self.inner.get().map(|e| e.stats()).unwrap_or_default()
    }
}

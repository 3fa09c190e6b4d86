//! Which KV sequence each session owns, and what to keep, share or evict: the embedded engine's
//! bookkeeping, without a model.
//!
//! The decode thread asks [`SlotTable::admit`] what to do with a new request, applies the
//! returned [`KvOp`]s to the llama context in order, then feeds the prompt from
//! [`SlotTable::held`] on.
//!
//! Invariants (checked by the tests, including a property test over random histories):
//! - a key owns at most one slot and a slot holds at most one key;
//! - `held(slot)` is exactly the token sequence whose KV the slot's sequence holds (positions
//!   `0..len`) once the ops are applied;
//! - an active slot is never evicted, truncated or overwritten;
//! - after a request is admitted, the cells held by all slots plus what active requests may
//!   still add (their remaining prompt and reply budget) never exceed the KV capacity;
//! - with `compact` (one KV stream per sequence), an admitted request runs in the lowest slot that
//!   was not active, moving idle caches out of the way: llama.cpp's attention reads every stream
//!   between the lowest and the highest sequence of a batch, so active sequences kept together
//!   cost what they use, not what is cached.

use std::collections::HashMap;

/// A token id.
pub type Token = u32;

/// An operation on the KV cache the engine must apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Drop the whole sequence of a slot.
    Clear(usize),
    /// Drop the positions of a slot from `from` on.
    Truncate {
        /// The slot.
        slot: usize,
        /// First position dropped.
        from: usize,
    },
    /// Move the whole sequence of `src` to the empty `dst`, leaving `src` empty.
    Move {
        /// Slot moved out of.
        src: usize,
        /// Slot moved into.
        dst: usize,
    },
    /// Make positions `0..len` of `src` the whole sequence of `dst` (cleared first).
    Share {
        /// Donor slot.
        src: usize,
        /// Receiving slot.
        dst: usize,
        /// Positions shared.
        len: usize,
    },
}

/// What [`SlotTable::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Run now in `slot`; `shared` prompt tokens came from another session's cache.
    Run {
        /// The slot (= llama sequence id).
        slot: usize,
        /// Tokens shared from another slot.
        shared: usize,
    },
    /// Try again after a running request finishes.
    Wait,
    /// Can never fit, even with every other session evicted.
    TooLarge {
        /// Cells the request needs.
        needed: usize,
        /// Cells there are.
        capacity: usize,
    },
}

#[derive(Debug, Clone, Default)]
struct Slot {
    key: Option<String>,
    tokens: Vec<Token>,
    last_used: u64,
    active: bool,
    /// Cells an active request may still add (prompt left + reply budget left).
    reserved: usize,
}

/// The slot table of the embedded engine.
#[derive(Debug, Clone)]
pub struct SlotTable {
    slots: Vec<Slot>,
    by_key: HashMap<String, usize>,
    tick: u64,
    capacity: usize,
    share: bool,
    min_shared: usize,
    compact: bool,
}

fn lcp(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl SlotTable {
    /// A table of `slots` sequences sharing `capacity` KV cells; `share` lets a new session copy
    /// another's cached prefix when it is at least `min_shared` tokens longer than its own, or
    /// take over an idle cache its prompt continues.
    pub fn new(slots: usize, capacity: usize, share: bool, min_shared: usize) -> Self {
        Self {
            slots: vec![Slot::default(); slots.max(1)],
            by_key: HashMap::new(),
            tick: 0,
            capacity,
            share,
            min_shared,
            compact: false,
        }
    }

    /// Keeps running requests in the lowest slots (for one KV stream per sequence).
    pub fn compacting(mut self, compact: bool) -> Self {
        self.compact = compact;
        self
    }

    /// The tokens a slot's KV holds.
    pub fn held(&self, slot: usize) -> &[Token] {
        self.slots.get(slot).map_or(&[], |s| s.tokens.as_slice())
    }

    /// KV cells held by all slots.
    pub fn kv_used(&self) -> usize {
        self.slots.iter().map(|s| s.tokens.len()).sum()
    }

    /// Cells held plus those active requests may still add.
    pub fn committed(&self) -> usize {
        self.slots.iter().map(|s| s.tokens.len() + s.reserved).sum()
    }

    /// Sessions with a slot.
    pub fn sessions(&self) -> usize {
        self.by_key.len()
    }

    fn touch(&mut self, slot: usize) {
        self.tick += 1;
        self.slots[slot].last_used = self.tick;
    }

    fn lru_idle(&self, except: Option<usize>) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.active && s.key.is_some() && Some(*i) != except)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)
    }

    fn evict(&mut self, slot: usize, ops: &mut Vec<KvOp>) {
        if let Some(key) = self.slots[slot].key.take() {
            self.by_key.remove(&key);
        }
        if !self.slots[slot].tokens.is_empty() {
            ops.push(KvOp::Clear(slot));
        }
        self.slots[slot].tokens.clear();
    }

    /// The slot of `key`: its own, an idle cache the prompt wholly continues (a follow-up sent
    /// under a new key, as on the OpenAI path), else a free or least-recently-used idle one;
    /// `None` when the key's slot is busy or every slot is.
    fn slot_for(&mut self, key: &str, prompt: &[Token], ops: &mut Vec<KvOp>) -> Option<usize> {
        if let Some(&s) = self.by_key.get(key) {
            return (!self.slots[s].active).then_some(s);
        }
        let s = match self.continued(prompt) {
            Some(s) => {
                if let Some(old) = self.slots[s].key.take() {
                    self.by_key.remove(&old);
                }
                s
            }
            None => {
                let free = self.slots.iter().position(|s| s.key.is_none() && !s.active);
                let s = free.or_else(|| self.lru_idle(None))?;
                self.evict(s, ops);
                s
            }
        };
        self.slots[s].key = Some(key.to_owned());
        self.by_key.insert(key.to_owned(), s);
        Some(s)
    }

    /// The idle slot with the longest cache that is a whole prefix of `prompt` (sharing only).
    fn continued(&self, prompt: &[Token]) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| self.share && !s.active && s.key.is_some() && !s.tokens.is_empty())
            .filter(|(_, s)| s.tokens.len() >= self.min_shared && prompt.starts_with(&s.tokens))
            .max_by_key(|(_, s)| s.tokens.len())
            .map(|(i, _)| i)
    }

    /// Moves the idle, keyed cache of `src` into the free slot `dst`.
    fn relocate(&mut self, src: usize, dst: usize, ops: &mut Vec<KvOp>) {
        let moved = std::mem::take(&mut self.slots[src]);
        if !moved.tokens.is_empty() {
            ops.push(KvOp::Move { src, dst });
        }
        if let Some(key) = &moved.key {
            self.by_key.insert(key.clone(), dst);
        }
        self.slots[dst] = moved;
    }

    /// With `compact`, brings `slot` (idle, about to run) down to the lowest slot that is not
    /// active when that narrows the range of running slots, moving that slot's idle cache up
    /// (through a free slot when both hold caches).
    fn compact_to_low(&mut self, slot: usize, ops: &mut Vec<KvOp>) -> usize {
        let running = self.slots.iter().enumerate().filter(|(_, s)| s.active);
        let (lo, hi) = running.fold((usize::MAX, 0), |(lo, hi), (i, _)| (lo.min(i), hi.max(i)));
        if !self.compact || lo == usize::MAX {
            return slot;
        }
        let span = |x: usize| hi.max(x) - lo.min(x);
        let Some(low) = (0..slot).find(|&i| !self.slots[i].active) else {
            return slot;
        };
        if span(low) >= span(slot) {
            return slot;
        }
        let is_free = |s: &Slot| s.key.is_none() && s.tokens.is_empty() && !s.active;
        if is_free(&self.slots[low]) {
            self.relocate(slot, low, ops);
        } else if self.slots[slot].tokens.is_empty() {
            // A fresh slot: the idle cache below moves up into it.
            let mine = std::mem::take(&mut self.slots[slot]);
            self.relocate(low, slot, ops);
            self.slots[low] = mine;
            if let Some(key) = &self.slots[low].key {
                self.by_key.insert(key.clone(), low);
            }
        } else {
            let Some(tmp) = (0..self.slots.len())
                .rev()
                .find(|&i| i != slot && i != low && is_free(&self.slots[i]))
            else {
                return slot;
            };
            self.relocate(low, tmp, ops);
            self.relocate(slot, low, ops);
            self.relocate(tmp, slot, ops);
        }
        low
    }

    /// Keeps the longest usable prefix in `slot`: its own, or a longer one shared from another
    /// session. Returns the tokens shared.
    fn reuse_prefix(
        &mut self,
        slot: usize,
        prompt: &[Token],
        cap: usize,
        ops: &mut Vec<KvOp>,
    ) -> usize {
        let keep = lcp(&self.slots[slot].tokens, prompt).min(cap);
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| self.share && *i != slot && s.key.is_some())
            .map(|(i, s)| (i, lcp(&s.tokens, prompt).min(cap)))
            .max_by_key(|&(_, n)| n);
        match donor {
            Some((src, len)) if len > keep + self.min_shared => {
                ops.push(KvOp::Share {
                    src,
                    dst: slot,
                    len,
                });
                self.slots[slot].tokens = self.slots[src].tokens[..len].to_vec();
                len
            }
            _ => {
                if keep < self.slots[slot].tokens.len() {
                    ops.push(KvOp::Truncate { slot, from: keep });
                    self.slots[slot].tokens.truncate(keep);
                }
                0
            }
        }
    }

    /// Decides how to run a request of `key`: which slot, what its KV keeps, what to evict.
    /// The returned ops must be applied whatever the outcome.
    pub fn admit(&mut self, key: &str, prompt: &[Token], max_new: usize) -> (Vec<KvOp>, Outcome) {
        let mut ops = Vec::new();
        let Some(slot) = self.slot_for(key, prompt, &mut ops) else {
            return (ops, Outcome::Wait);
        };
        let slot = self.compact_to_low(slot, &mut ops);
        // At least one prompt token is fed again so the model yields logits for the reply.
        let cap = if max_new > 0 {
            prompt.len().saturating_sub(1)
        } else {
            prompt.len()
        };
        let shared = self.reuse_prefix(slot, prompt, cap, &mut ops);
        let needed = prompt.len() - self.slots[slot].tokens.len() + max_new;
        while self.committed() + needed > self.capacity {
            match self.lru_idle(Some(slot)) {
                Some(victim) => self.evict(victim, &mut ops),
                None => break,
            }
        }
        if self.committed() + needed > self.capacity {
            let alone = !self.slots.iter().any(|s| s.active);
            let outcome = if alone {
                Outcome::TooLarge {
                    needed: self.slots[slot].tokens.len() + needed,
                    capacity: self.capacity,
                }
            } else {
                Outcome::Wait
            };
            return (ops, outcome);
        }
        self.touch(slot);
        self.slots[slot].active = true;
        self.slots[slot].reserved = needed;
        (ops, Outcome::Run { slot, shared })
    }

    /// Records tokens that entered a slot's KV.
    pub fn fed(&mut self, slot: usize, tokens: &[Token]) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.tokens.extend_from_slice(tokens);
            s.reserved = s.reserved.saturating_sub(tokens.len());
        }
    }

    /// A request in `slot` ended; its KV stays cached for the session's next turn.
    pub fn finish(&mut self, slot: usize) {
        if slot < self.slots.len() {
            self.slots[slot].active = false;
            self.slots[slot].reserved = 0;
            self.touch(slot);
        }
    }

    /// The KV of a slot is unknown or gone (an op or a decode failed): forget its key and tokens.
    pub fn forget(&mut self, slot: usize) -> Vec<KvOp> {
        let mut ops = Vec::new();
        if slot < self.slots.len() {
            self.evict(slot, &mut ops);
            ops.push(KvOp::Clear(slot));
            ops.dedup();
        }
        ops
    }

    /// A session is gone: free its slot unless a request runs in it.
    pub fn release(&mut self, key: &str) -> Vec<KvOp> {
        let mut ops = Vec::new();
        if let Some(&s) = self.by_key.get(key)
            && !self.slots[s].active
        {
            self.evict(s, &mut ops);
        }
        ops
    }

    /// Evicts every idle session (the cache is full or fragmented).
    pub fn evict_idle(&mut self) -> Vec<KvOp> {
        let mut ops = Vec::new();
        while let Some(victim) = self.lru_idle(None) {
            self.evict(victim, &mut ops);
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(
        t: &mut SlotTable,
        key: &str,
        prompt: &[Token],
        max_new: usize,
    ) -> (Vec<KvOp>, usize, usize) {
        let (ops, out) = t.admit(key, prompt, max_new);
        let Outcome::Run { slot, shared } = out else {
            panic!("not admitted: {out:?}");
        };
        let keep = t.held(slot).len();
        t.fed(slot, &prompt[keep..]);
        (ops, slot, shared)
    }

    #[test]
    fn second_turn_reuses_the_common_prefix_and_truncates_the_rest() {
        let mut t = SlotTable::new(4, 1000, true, 4);
        let (_, s, _) = run(&mut t, "a", &[1, 2, 3, 4, 5], 3);
        t.fed(s, &[9, 9]);
        t.finish(s);
        let (ops, out) = t.admit("a", &[1, 2, 3, 7], 3);
        assert!(matches!(out, Outcome::Run { slot, shared: 0 } if slot == s));
        assert_eq!(ops, vec![KvOp::Truncate { slot: s, from: 3 }]);
        assert_eq!(t.held(s), &[1, 2, 3]);
    }

    #[test]
    fn identical_prompt_still_feeds_its_last_token() {
        let mut t = SlotTable::new(2, 1000, true, 4);
        let (_, s, _) = run(&mut t, "a", &[1, 2, 3], 2);
        t.finish(s);
        let (ops, _) = t.admit("a", &[1, 2, 3], 2);
        assert_eq!(ops, vec![KvOp::Truncate { slot: s, from: 2 }]);
        t.finish(s);
        // A prefill-only request of the same prompt needs nothing.
        let mut t = SlotTable::new(2, 1000, true, 4);
        let (_, s, _) = run(&mut t, "a", &[1, 2, 3], 0);
        t.finish(s);
        let (ops, _) = t.admit("a", &[1, 2, 3], 0);
        assert!(ops.is_empty());
        assert_eq!(t.held(s).len(), 3);
    }

    #[test]
    fn new_session_shares_a_longer_prefix_of_another() {
        let persona: Vec<Token> = (0..40).collect();
        let mut t = SlotTable::new(4, 1000, true, 16);
        let mut p1 = persona.clone();
        p1.extend([100, 101]);
        let (_, s1, _) = run(&mut t, "a", &p1, 5);
        t.finish(s1);
        let mut p2 = persona.clone();
        p2.extend([200]);
        let (ops, out) = t.admit("b", &p2, 5);
        let Outcome::Run { slot, shared } = out else {
            panic!("{out:?}")
        };
        assert_eq!(shared, 40);
        assert_eq!(
            ops,
            vec![KvOp::Share {
                src: s1,
                dst: slot,
                len: 40
            }]
        );
        // Without sharing, nothing is copied.
        let mut t = SlotTable::new(4, 1000, false, 16);
        let (_, s1, _) = run(&mut t, "a", &p1, 5);
        t.finish(s1);
        let (ops, out) = t.admit("b", &p2, 5);
        assert!(ops.is_empty());
        assert!(matches!(out, Outcome::Run { shared: 0, .. }));
    }

    #[test]
    fn least_recently_used_idle_session_is_evicted_for_a_slot() {
        let mut t = SlotTable::new(2, 1000, false, 4);
        let (_, sa, _) = run(&mut t, "a", &[1, 2], 1);
        t.finish(sa);
        let (_, sb, _) = run(&mut t, "b", &[3, 4], 1);
        t.finish(sb);
        let (_, sa2, _) = run(&mut t, "a", &[1, 2, 5], 1); // a is now the most recent
        t.finish(sa2);
        let (ops, out) = t.admit("c", &[6, 7], 1);
        assert_eq!(ops, vec![KvOp::Clear(sb)]);
        assert!(matches!(out, Outcome::Run { slot, .. } if slot == sb));
        assert_eq!(t.sessions(), 2);
    }

    #[test]
    fn busy_slots_make_requests_wait_and_a_lone_giant_is_too_large() {
        let mut t = SlotTable::new(1, 100, false, 4);
        let (_, s, _) = run(&mut t, "a", &[1; 10], 10);
        assert_eq!(t.admit("b", &[2; 5], 5).1, Outcome::Wait);
        assert_eq!(t.admit("a", &[1; 12], 5).1, Outcome::Wait);
        t.finish(s);
        let (_, out) = t.admit("b", &[2; 200], 5);
        assert!(
            matches!(out, Outcome::TooLarge { capacity: 100, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn kv_budget_evicts_idle_sessions_oldest_first_then_waits_for_active_ones() {
        let mut t = SlotTable::new(4, 100, false, 4);
        let (_, a, _) = run(&mut t, "a", &[1; 30], 0);
        t.finish(a);
        let (_, b, _) = run(&mut t, "b", &[2; 30], 0);
        t.finish(b);
        // 60 held; 50 more needed: a (oldest) goes.
        let (ops, out) = t.admit("c", &[3; 40], 10);
        assert_eq!(ops, vec![KvOp::Clear(a)]);
        assert!(matches!(out, Outcome::Run { .. }));
        assert!(t.committed() <= 100);
        // c is active and reserves 50: d needs 60, b is evicted, still too much → wait.
        let (ops, out) = t.admit("d", &[4; 50], 10);
        assert_eq!(ops, vec![KvOp::Clear(b)]);
        assert_eq!(out, Outcome::Wait);
    }

    #[test]
    fn release_frees_idle_slots_only() {
        let mut t = SlotTable::new(2, 100, false, 4);
        let (_, a, _) = run(&mut t, "a", &[1, 2], 3);
        assert!(
            t.release("a").is_empty(),
            "active sessions are not released"
        );
        t.finish(a);
        assert_eq!(t.release("a"), vec![KvOp::Clear(a)]);
        assert_eq!(t.sessions(), 0);
        assert_eq!(t.kv_used(), 0);
        assert!(t.release("nobody").is_empty());
    }

    /// What a KV cache with one stream per sequence holds after `ops` (the engine's semantics).
    fn apply_model(model: &mut [Vec<Token>], ops: &[KvOp]) {
        for op in ops {
            match *op {
                KvOp::Clear(s) => model[s].clear(),
                KvOp::Truncate { slot, from } => model[slot].truncate(from),
                KvOp::Share { src, dst, len } => model[dst] = model[src][..len].to_vec(),
                KvOp::Move { src, dst } => model[dst] = std::mem::take(&mut model[src]),
            }
        }
    }

    #[test]
    fn a_follow_up_under_a_new_key_continues_the_idle_cache_it_extends() {
        let mut t = SlotTable::new(4, 1000, true, 4);
        let first: Vec<Token> = (0..20).collect();
        let (_, s, _) = run(&mut t, "api:1", &first, 5);
        t.fed(s, &[50, 51, 52]);
        t.finish(s);
        let mut follow = t.held(s).to_vec();
        follow.extend([60, 61]);
        let (ops, out) = t.admit("api:2", &follow, 5);
        assert!(ops.is_empty(), "nothing is copied: {ops:?}");
        assert!(matches!(out, Outcome::Run { slot, shared: 0 } if slot == s));
        assert_eq!(t.sessions(), 1, "the old key is gone");
        // A prompt that diverges inside the cache copies instead (the donor keeps its cache).
        t.finish(s);
        let mut other = first[..10].to_vec();
        other.extend([70; 10]);
        let (ops, out) = t.admit("api:3", &other, 5);
        let Outcome::Run { slot, shared: 10 } = out else {
            panic!("{out:?}")
        };
        assert_ne!(slot, s);
        assert!(matches!(ops.as_slice(), [KvOp::Share { len: 10, .. }]));
    }

    #[test]
    fn with_compaction_running_requests_stay_together_at_the_bottom() {
        let mut t = SlotTable::new(8, 10_000, false, 4).compacting(true);
        let mut model = vec![Vec::new(); 8];
        let mut admit = |t: &mut SlotTable, key: &str, prompt: &[Token]| {
            let (ops, out) = t.admit(key, prompt, 4);
            apply_model(&mut model, &ops);
            let Outcome::Run { slot, .. } = out else {
                panic!("{out:?}")
            };
            let keep = t.held(slot).len();
            model[slot].extend_from_slice(&prompt[keep..]);
            t.fed(slot, &prompt[keep..]);
            for (i, m) in model.iter().enumerate() {
                assert_eq!(t.held(i), m.as_slice(), "slot {i} after {ops:?}");
            }
            slot
        };
        // Five sessions leave caches in slots 0..5; each ran alone, so nothing moved.
        for k in 0..5u32 {
            let s = admit(&mut t, &format!("s{k}"), &[k, k, k, k, k]);
            assert_eq!(s, k as usize);
            t.finish(s);
        }
        // s0 runs in 0; a new session would take free slot 5, but runs in 1, next to it: s1's
        // idle cache moves up into 5.
        let s0 = admit(&mut t, "s0", &[0, 0, 0, 0, 0, 1]);
        assert_eq!(s0, 0);
        let y = admit(&mut t, "y", &[8; 6]);
        assert_eq!(y, 1);
        assert_eq!(t.by_key["s1"], 5);
        // s4 returns while slots 0 and 1 run: it swaps with s2's idle cache (through free
        // slot 7), into 2.
        let s4 = admit(&mut t, "s4", &[4, 4, 4, 4, 4, 1]);
        assert_eq!(s4, 2);
        assert_eq!(t.by_key["s2"], 4);
        assert_eq!(t.sessions(), 6, "no cache was lost");
        // y is done: s3 returns into y's slot, between the two running ones.
        t.finish(y);
        let s3 = admit(&mut t, "s3", &[3, 3, 3, 3, 3, 1]);
        assert_eq!(s3, 1);
        assert_eq!(t.by_key["y"], 3);
        for k in [s0, s4, s3] {
            t.finish(k);
        }
        // With no free slot to swap through, a returning session stays where it is.
        for k in ["f6", "f7"] {
            let s = admit(&mut t, k, &[7; 5]);
            t.finish(s);
        }
        let s0 = admit(&mut t, "s0", &[0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(s0, 0);
        let s2 = admit(&mut t, "s2", &[2, 2, 2, 2, 2, 1]);
        assert_eq!(s2, 4);
        assert_eq!(t.sessions(), 8);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Admit(u8, Vec<u8>, u8),
        Feed(u8),
        Finish(u8),
        Release(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, proptest::collection::vec(0u8..4, 1..30), 0u8..20)
                .prop_map(|(k, p, n)| Step::Admit(k, p, n)),
            (0u8..6).prop_map(Step::Feed),
            (0u8..6).prop_map(Step::Finish),
            (0u8..6).prop_map(Step::Release),
        ]
    }

    fn check_history(steps: Vec<Step>, compact: bool) -> Result<(), TestCaseError> {
        let mut t = SlotTable::new(3, 120, true, 2).compacting(compact);
        let mut model = vec![Vec::new(); 3];
        let mut running: HashMap<u8, (usize, usize)> = HashMap::new(); // key → (slot, budget)
        for s in steps {
            match s {
                Step::Admit(k, p, n) => {
                    if running.contains_key(&k) {
                        continue;
                    }
                    let prompt: Vec<Token> = p.iter().map(|&x| Token::from(x)).collect();
                    let (ops, out) = t.admit(&k.to_string(), &prompt, n as usize);
                    apply_model(&mut model, &ops);
                    if let Outcome::Run { slot, .. } = out {
                        prop_assert!(running.values().all(|&(s, _)| s != slot));
                        prop_assert!(t.committed() <= 120);
                        let keep = t.held(slot).len();
                        prop_assert_eq!(t.held(slot), &prompt[..keep]);
                        t.fed(slot, &prompt[keep..]);
                        model[slot].extend_from_slice(&prompt[keep..]);
                        running.insert(k, (slot, n as usize));
                    }
                }
                Step::Feed(k) => {
                    if let Some((slot, budget)) = running.get_mut(&k)
                        && *budget > 0
                    {
                        t.fed(*slot, &[9]);
                        model[*slot].push(9);
                        *budget -= 1;
                    }
                }
                Step::Finish(k) => {
                    if let Some((slot, _)) = running.remove(&k) {
                        t.finish(slot);
                    }
                }
                Step::Release(k) => {
                    let ops = t.release(&k.to_string());
                    apply_model(&mut model, &ops);
                    if running.contains_key(&k) {
                        prop_assert!(ops.is_empty());
                    }
                }
            }
            prop_assert!(t.committed() <= 120 || running.is_empty());
            prop_assert_eq!(
                t.by_key.len(),
                t.slots.iter().filter(|s| s.key.is_some()).count()
            );
            for (key, &slot) in &t.by_key {
                prop_assert_eq!(t.slots[slot].key.as_deref(), Some(key.as_str()));
            }
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(t.held(i), m.as_slice(), "slot {} differs from the KV", i);
                prop_assert!(t.slots[i].key.is_some() || m.is_empty());
            }
            for (k, &(slot, _)) in &running {
                prop_assert_eq!(t.by_key.get(&k.to_string()), Some(&slot));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn invariants_hold_over_random_histories(steps in proptest::collection::vec(step(), 1..80)) {
            check_history(steps, false)?;
        }

        #[test]
        fn invariants_hold_over_random_histories_with_compaction(steps in proptest::collection::vec(step(), 1..80)) {
            check_history(steps, true)?;
        }
    }
}

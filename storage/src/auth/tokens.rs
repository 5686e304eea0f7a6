//! Simple tokens, as etcd hands them out by default: `<16 letters>.<log index>`, kept
//! in memory by every member. The entry that authenticates a user assigns its token
//! when it is applied, so once a member has applied that index the token is valid
//! there too; the index in the token says how far to wait.
//!
//! Owns the token → user table, each token's sliding expiry, and its bound. It must
//! never persist a token or decide whether a password is right: tokens die with the
//! process (a restarted member answers "invalid auth token" and clients authenticate
//! again, as with etcd), and passwords are checked before the entry is proposed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's --auth-token-ttl default: a token unused for this long is forgotten.
pub const DEFAULT_TOKEN_TTL_S: u64 = 300;
/// Tokens held at most. A full table forgets the token nearest its expiry: with
/// bcrypt's cost on every authentication, filling it takes far longer than a TTL.
pub const MAX_TOKENS: usize = 65_536;

pub struct SimpleTokens {
    ttl: Duration,
    /// token → (user, expiry).
    tokens: HashMap<String, (String, Instant)>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// The token of the entry at `index` that authenticated `user`.
    pub fn assign(&mut self, prefix: &str, index: u64, user: &str, now: Instant) -> String {
        let token = format!("{prefix}.{index}");
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.retain(|_, (_, expiry)| *expiry > now);
        }
        if self.tokens.len() >= MAX_TOKENS {
            let soonest = self
                .tokens
                .iter()
                .min_by_key(|(_, (_, expiry))| *expiry)
                .map(|(t, _)| t.clone());
            if let Some(t) = soonest {
                self.tokens.remove(&t);
            }
        }
        self.tokens
            .insert(token.clone(), (user.to_string(), now + self.ttl));
        debug_assert!(
            self.tokens.len() <= MAX_TOKENS,
            "the token table is bounded"
        );
        token
    }

    /// The user a live token stands for; using it restarts its TTL, as etcd's keeper.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, expiry) = self.tokens.get_mut(token)?;
        if *expiry <= now {
            self.tokens.remove(token);
            return None;
        }
        *expiry = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (authentication turned off).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The log index a simple token was assigned at: what a member must have applied
/// before it can know the token. None for anything not shaped like one.
pub fn token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_index_and_its_user_until_unused_for_the_ttl() {
        let t0 = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        let token = tokens.assign("abcdefghijklmnop", 42, "alice", t0);
        assert_eq!(token, "abcdefghijklmnop.42");
        assert_eq!(token_index(&token), Some(42));
        // Each use restarts the TTL.
        let used = t0 + Duration::from_secs(9);
        assert_eq!(tokens.user(&token, used).as_deref(), Some("alice"));
        let later = used + Duration::from_secs(9);
        assert_eq!(tokens.user(&token, later).as_deref(), Some("alice"));
        assert_eq!(tokens.user(&token, later + Duration::from_secs(10)), None);
        assert!(tokens.is_empty(), "an expired token is forgotten");
    }

    #[test]
    fn deleting_a_user_or_turning_auth_off_forgets_its_tokens() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        let a = tokens.assign("a", 1, "alice", now);
        let b = tokens.assign("b", 2, "bob", now);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&a, now), None);
        assert_eq!(tokens.user(&b, now).as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user(&b, now), None);
    }

    #[test]
    fn a_full_table_forgets_the_token_nearest_its_expiry() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(10));
        let first = tokens.assign("first", 0, "u", now);
        for i in 1..MAX_TOKENS as u64 {
            tokens.assign("t", i, "u", now + Duration::from_millis(1));
        }
        assert_eq!(tokens.len(), MAX_TOKENS);
        let last = tokens.assign("last", 0, "u", now + Duration::from_millis(2));
        assert_eq!(tokens.len(), MAX_TOKENS);
        assert_eq!(tokens.user(&first, now), None);
        assert!(tokens.user(&last, now).is_some());
    }

    #[test]
    fn only_a_prefix_and_a_number_are_a_token() {
        for bad in ["", "abc", ".5", "abc.", "abc.x", "a.1.2", "a.-1"] {
            assert_eq!(token_index(bad), None, "{bad:?}");
        }
    }
}

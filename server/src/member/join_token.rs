//! Join tokens: the shared secret a new member must know to join, as k3s's node token.
//!
//! The first member makes one (or takes --token / --token-file) and keeps it in
//! `<data-dir>/token` (mode 0600); every member that joins keeps the token it joined
//! with, so any member can admit the next. The token never crosses the network: the
//! joiner asks the member it joins through for a single-use nonce, and answers with
//! HMAC-SHA256(token, member id, peer URLs, nonce). A wrong token is refused before
//! anything changes in the cluster.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOKEN_FILE: &str = "token";
/// Nonces outstanding at once; the oldest is dropped beyond this.
const MAX_OUTSTANDING_NONCES: usize = 64;
/// A nonce must be answered within this.
const NONCE_TTL_MS: u64 = 60_000;
pub const NONCE_SIZE_BYTES: usize = 32;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// A new random token: "raftkv-" and 64 hex digits (256 bits).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("raftkv-{hex}")
}

pub fn load(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path(data_dir)) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the token durably, readable by its owner only.
pub fn store(data_dir: &Path, token: &str) -> std::io::Result<()> {
    let line = format!("{token}\n");
    raftkv_storage::durable::replace_file(&path(data_dir), line.as_bytes(), 0o600)
}

/// The token given on the command line (--token, or the first line of --token-file).
pub fn from_flags(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, String> {
    match (token, token_file) {
        (Some(_), Some(_)) => Err("give --token or --token-file, not both".to_string()),
        (Some(t), None) if t.trim().is_empty() => Err("--token is empty".to_string()),
        (Some(t), None) => Ok(Some(t.trim().to_string())),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read --token-file {}: {e}", file.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            if token.is_empty() {
                return Err(format!("--token-file {} is empty", file.display()));
            }
            Ok(Some(token))
        }
        (None, None) => Ok(None),
    }
}

fn mac(token: &str, member_id: u64, peer_urls: &[String], nonce: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any size"));
    mac.update(b"raftkv-join-v1\n");
    mac.update(&member_id.to_be_bytes());
    for url in peer_urls {
        mac.update(url.as_bytes());
        mac.update(b"\n");
    }
    mac.update(nonce);
    mac
}

/// What a joiner sends instead of the token.
pub fn prove(token: &str, member_id: u64, peer_urls: &[String], nonce: &[u8]) -> Vec<u8> {
    mac(token, member_id, peer_urls, nonce)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Checks a proof in constant time.
pub fn verify(
    token: &str,
    member_id: u64,
    peer_urls: &[String],
    nonce: &[u8],
    proof: &[u8],
) -> bool {
    mac(token, member_id, peer_urls, nonce)
        .verify_slice(proof)
        .is_ok()
}

/// Nonces this member handed out and not yet seen answered.
#[derive(Default)]
pub struct Challenges {
    nonces: Mutex<VecDeque<([u8; NONCE_SIZE_BYTES], Instant)>>,
}

impl Challenges {
    pub fn issue(&self) -> [u8; NONCE_SIZE_BYTES] {
        let nonce: [u8; NONCE_SIZE_BYTES] = rand::random();
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.len() >= MAX_OUTSTANDING_NONCES {
            nonces.pop_front();
        }
        nonces.push_back((nonce, Instant::now()));
        nonce
    }

    /// True once for a nonce this member issued less than `NONCE_TTL_MS` ago.
    pub fn take(&self, nonce: &[u8]) -> bool {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|(_, at)| at.elapsed() < Duration::from_millis(NONCE_TTL_MS));
        match nonces.iter().position(|(n, _)| n.as_slice() == nonce) {
            Some(i) => {
                nonces.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_checks_only_with_the_same_token_member_urls_and_nonce() {
        let urls = vec!["https://10.0.0.2:2380".to_string()];
        let nonce = [7u8; NONCE_SIZE_BYTES];
        let proof = prove("secret", 42, &urls, &nonce);
        assert!(verify("secret", 42, &urls, &nonce, &proof));
        assert!(!verify("other", 42, &urls, &nonce, &proof));
        assert!(!verify("secret", 43, &urls, &nonce, &proof));
        assert!(!verify(
            "secret",
            42,
            &["https://10.0.0.9:2380".to_string()],
            &nonce,
            &proof
        ));
        assert!(!verify(
            "secret",
            42,
            &urls,
            &[8u8; NONCE_SIZE_BYTES],
            &proof
        ));
    }

    #[test]
    fn nonces_are_single_use() {
        let c = Challenges::default();
        let n = c.issue();
        assert!(c.take(&n));
        assert!(!c.take(&n));
        assert!(!c.take(&[0u8; NONCE_SIZE_BYTES]));
    }
}

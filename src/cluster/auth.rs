//! Authentication of cluster requests: signing what this node sends and
//! checking what it receives, with the shared secret from
//! `cluster.secret_file` and the cluster id `cluster.name`.
//!
//! A request carries the sending node, the cluster name, the time of signing
//! (unix milliseconds), a random nonce and an HMAC-SHA256 over all of these
//! plus the method, the path and a SHA-256 of the body. A receiver refuses,
//! in this order: a request from another cluster, a bad signature, a time
//! more than [`MAX_SKEW`] from its own, and a (node, nonce) it has already
//! accepted.
//!
//! This module owns the signing format and the replay cache. It never reads
//! a clock or draws randomness (both come in as arguments, so tests are
//! exact), does no I/O, and never puts the secret or a whole signature into
//! an error message or `Debug` output. It does not decide whether the node id
//! belongs to the cluster's membership: that is the transport's call.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ring::{digest, hmac};

/// Header carrying the sending node's id (decimal).
pub const NODE_HEADER: &str = "x-highlander-node";
/// Header carrying the sender's `cluster.name`.
pub const CLUSTER_HEADER: &str = "x-highlander-cluster";
/// Header carrying the time of signing, in unix milliseconds (decimal).
pub const TIME_HEADER: &str = "x-highlander-time";
/// Header carrying a random nonce as 16 hex digits.
pub const NONCE_HEADER: &str = "x-highlander-nonce";
/// Header carrying the HMAC-SHA256 signature as 64 lowercase hex digits.
pub const SIGNATURE_HEADER: &str = "x-highlander-signature";

/// How far a request's time may be from ours (either way) before it is
/// refused as replayed or skewed.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// `MAX_SKEW` in the unit of the time header.
const MAX_SKEW_MS: u64 = MAX_SKEW.as_millis() as u64;

/// Bumped whenever the canonical string changes, so that nodes running
/// different formats refuse each other instead of misreading each other.
const FORMAT: &str = "highlander-cluster-auth-v1";

/// How much of a malformed header value an error repeats: enough to
/// recognise it, never a whole signature, never a flood of peer-chosen bytes.
const EXCERPT_CHARS: usize = 20;

/// Why a received cluster request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A header the signing format needs is absent.
    #[error(
        "cluster request without the {header} header: the sender is not a highlander node of this version, or something in between strips headers"
    )]
    Missing { header: &'static str },
    /// A header is present but cannot be parsed. `value` is an excerpt.
    #[error("cluster request with a malformed {header} header ({value:?}): expected {expected}")]
    Malformed {
        header: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The sender belongs to another cluster.
    #[error(
        "request from cluster {theirs:?} but this is cluster {ours:?}: check cluster.name / dns.zone on both nodes"
    )]
    WrongCluster { ours: String, theirs: String },
    /// The signature does not match; `node` is the id the request claims.
    #[error(
        "request claiming to be from node {node} has a bad signature: that node signed with a different secret (or the request was altered on the way); check that every node's cluster.secret_file holds the same secret"
    )]
    BadSignature { node: u64 },
    /// The request's time is too far from ours. `skew_ms` is positive when
    /// the sender's clock is ahead of ours.
    #[error(
        "node {node}'s clock is {} {}; keep node clocks within {} s (NTP)",
        seconds(skew_ms.unsigned_abs()),
        if *skew_ms > 0 { "ahead" } else { "behind" },
        max.as_secs()
    )]
    Skewed {
        node: u64,
        skew_ms: i64,
        max: Duration,
    },
    /// This (node, nonce) was accepted before: the request is a replay.
    #[error(
        "node {node} sent nonce {nonce:016x} again: refused as a replayed request (if node {node} really sent it twice, its random source is broken)"
    )]
    Replayed { node: u64, nonce: u64 },
}

/// Signs this node's requests and checks its peers'. One per node, shared by
/// all connections (it is `Send + Sync`).
pub struct Authenticator {
    /// This node's `cluster.name`, sent with and required of every request.
    cluster: String,
    /// The HMAC key made from the shared secret; the secret itself is not kept.
    key: hmac::Key,
    /// This node's id, sent with every request it signs.
    node: u64,
    /// Nonces of accepted requests, kept until a replay of them would be
    /// refused as skewed anyway.
    replays: Mutex<ReplayCache>,
}

/// The (node, nonce) pairs accepted within the last window.
///
/// Only requests with a good signature get in, so a peer without the secret
/// cannot fill it; its size is bounded by the cluster's request rate over
/// `2 * MAX_SKEW`.
#[derive(Default)]
struct ReplayCache {
    /// For lookup.
    seen: HashSet<(u64, u64)>,
    /// (expiry, node, nonce), ordered so that pruning takes from the front.
    /// Peers' clocks differ, so entries do not arrive in expiry order.
    by_expiry: BTreeSet<(u64, u64, u64)>,
    /// The latest `now` seen. Entries expiring before it may be gone, so a
    /// request that old is refused even if our clock has since stepped back:
    /// otherwise a step back would reopen the window for pruned nonces.
    horizon: u64,
}

impl ReplayCache {
    fn prune(&mut self, now: u64) {
        self.horizon = self.horizon.max(now);
        while let Some(&(expiry, node, nonce)) = self.by_expiry.first() {
            if expiry >= self.horizon {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&(node, nonce));
        }
    }

    fn len(&self) -> usize {
        self.seen.len()
    }
}

impl Authenticator {
    /// An authenticator for node `node` of cluster `cluster`, keyed with the
    /// shared `secret`.
    pub fn new(cluster: &str, secret: &[u8], node: u64) -> Self {
        Authenticator {
            cluster: cluster.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            node,
            replays: Mutex::new(ReplayCache::default()),
        }
    }

    /// The headers to attach to a request this node sends. `path` is the
    /// request target as sent (with any query string); `nonce` must be
    /// random, e.g. `rand::random()`.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix_ms: u64,
        nonce: u64,
    ) -> Vec<(&'static str, String)> {
        let canonical = canonical(
            &self.cluster,
            self.node,
            now_unix_ms,
            nonce,
            method,
            path,
            body,
        );
        let tag = hmac::sign(&self.key, canonical.as_bytes());
        vec![
            (NODE_HEADER, self.node.to_string()),
            (CLUSTER_HEADER, self.cluster.clone()),
            (TIME_HEADER, now_unix_ms.to_string()),
            (NONCE_HEADER, format!("{nonce:016x}")),
            (SIGNATURE_HEADER, hex(tag.as_ref())),
        ]
    }

    /// Checks a received request; returns the sending node's id. `header`
    /// looks up a header value by (lowercase) name. An accepted request's
    /// nonce is remembered, so calling this twice for the same request
    /// refuses the second.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        now_unix_ms: u64,
    ) -> Result<u64, AuthError> {
        let get = |name: &'static str| header(name).ok_or(AuthError::Missing { header: name });

        // Another cluster's node is a misconfiguration a person must see, so
        // it is named before anything that would only say "bad signature".
        let theirs = get(CLUSTER_HEADER)?;
        if theirs != self.cluster {
            return Err(AuthError::WrongCluster {
                ours: self.cluster.clone(),
                theirs: excerpt(&theirs),
            });
        }

        let node = parse_decimal(NODE_HEADER, &get(NODE_HEADER)?)?;
        let time = parse_decimal(TIME_HEADER, &get(TIME_HEADER)?)?;
        let nonce = parse_nonce(&get(NONCE_HEADER)?)?;
        let signature = parse_signature(&get(SIGNATURE_HEADER)?)?;

        let canonical = canonical(&self.cluster, node, time, nonce, method, path, body);
        // `hmac::verify` compares in constant time.
        hmac::verify(&self.key, canonical.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature { node })?;

        // A panic elsewhere while holding the lock leaves the cache
        // consistent (every mutation is a whole insert or removal), so
        // carrying on is safe.
        let mut replays = self.replays.lock().unwrap_or_else(PoisonError::into_inner);
        if time > now_unix_ms.saturating_add(MAX_SKEW_MS) {
            return Err(skewed(node, time, now_unix_ms));
        }
        let reference = now_unix_ms.max(replays.horizon);
        if time.saturating_add(MAX_SKEW_MS) < reference {
            return Err(skewed(node, time, reference));
        }

        replays.prune(now_unix_ms);
        if !replays.seen.insert((node, nonce)) {
            return Err(AuthError::Replayed { node, nonce });
        }
        // Kept until the request is old enough for the skew check to refuse
        // a replay of it.
        replays
            .by_expiry
            .insert((time.saturating_add(MAX_SKEW_MS), node, nonce));
        Ok(node)
    }

    fn remembered_nonces(&self) -> usize {
        self.replays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .field("secret", &"<redacted>")
            .field("remembered_nonces", &self.remembered_nonces())
            .finish()
    }
}

/// The signed string. Every field is on its own line; the fields that are
/// free text (cluster, method, path) are length-prefixed, so no choice of
/// them can make two different requests sign the same string.
fn canonical(
    cluster: &str,
    node: u64,
    time: u64,
    nonce: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let body_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    format!(
        "{FORMAT}\n{}:{cluster}\n{node}\n{time}\n{nonce:016x}\n{}:{method}\n{}:{path}\n{body_hash}",
        cluster.len(),
        method.len(),
        path.len(),
    )
}

fn skewed(node: u64, time: u64, now: u64) -> AuthError {
    let skew = i128::from(time) - i128::from(now);
    AuthError::Skewed {
        node,
        skew_ms: i64::try_from(skew).unwrap_or(if skew > 0 { i64::MAX } else { i64::MIN }),
        max: MAX_SKEW,
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn parse_decimal(header: &'static str, value: &str) -> Result<u64, AuthError> {
    let malformed = || AuthError::Malformed {
        header,
        value: excerpt(value),
        expected: "a decimal number without sign, like 1700000000000",
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    value.parse().map_err(|_| malformed())
}

fn parse_nonce(value: &str) -> Result<u64, AuthError> {
    let malformed = || AuthError::Malformed {
        header: NONCE_HEADER,
        value: excerpt(value),
        expected: "16 hex digits",
    };
    // Checked by hand: `from_str_radix` would also take a leading `+`.
    if value.len() != 16 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    u64::from_str_radix(value, 16).map_err(|_| malformed())
}

fn parse_signature(value: &str) -> Result<[u8; 32], AuthError> {
    let malformed = || AuthError::Malformed {
        header: SIGNATURE_HEADER,
        value: excerpt(value),
        expected: "64 hex digits (an HMAC-SHA256)",
    };
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return Err(malformed());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = hex_digit(pair[0]).ok_or_else(malformed)?;
        let low = hex_digit(pair[1]).ok_or_else(malformed)?;
        *byte = high << 4 | low;
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The start of a peer-supplied value, for an error message.
fn excerpt(value: &str) -> String {
    let mut chars = value.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Milliseconds as seconds for a person: "45 s", "45.2 s".
fn seconds(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{}.{} s", ms / 1000, ms % 1000 / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CLUSTER: &str = "a.example.";
    const SECRET: &[u8] = b"correct horse battery staple";
    const NOW: u64 = 1_700_000_000_000;

    fn headers(list: Vec<(&'static str, String)>) -> HashMap<String, String> {
        list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn lookup(h: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| h.get(name).cloned()
    }

    /// Node 2 signs `POST /raft/vote {"term":3}` at `NOW` with nonce 7.
    fn signed() -> HashMap<String, String> {
        let sender = Authenticator::new(CLUSTER, SECRET, 2);
        headers(sender.sign("POST", "/raft/vote", br#"{"term":3}"#, NOW, 7))
    }

    fn receiver() -> Authenticator {
        Authenticator::new(CLUSTER, SECRET, 1)
    }

    fn verify_at(
        receiver: &Authenticator,
        h: &HashMap<String, String>,
        now: u64,
    ) -> Result<u64, AuthError> {
        receiver.verify("POST", "/raft/vote", lookup(h), br#"{"term":3}"#, now)
    }

    #[test]
    fn round_trip_returns_the_sender() {
        let h = signed();
        assert_eq!(verify_at(&receiver(), &h, NOW).unwrap(), 2);
    }

    #[test]
    fn sign_produces_the_documented_header_formats() {
        let h = signed();
        assert_eq!(h.len(), 5);
        assert_eq!(h[NODE_HEADER], "2");
        assert_eq!(h[CLUSTER_HEADER], CLUSTER);
        assert_eq!(h[TIME_HEADER], NOW.to_string());
        assert_eq!(h[NONCE_HEADER], "0000000000000007");
        let sig = &h[SIGNATURE_HEADER];
        assert_eq!(sig.len(), 64);
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn hex_matches_a_known_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        let d = digest::digest(&digest::SHA256, b"abc");
        assert_eq!(
            hex(d.as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn assert_bad_signature(result: Result<u64, AuthError>, node: u64) {
        match result {
            Err(AuthError::BadSignature { node: n }) => assert_eq!(n, node),
            other => panic!("expected BadSignature from node {node}, got {other:?}"),
        }
    }

    #[test]
    fn tampered_body_is_refused() {
        let h = signed();
        let r = receiver().verify("POST", "/raft/vote", lookup(&h), br#"{"term":4}"#, NOW);
        assert_bad_signature(r, 2);
    }

    #[test]
    fn tampered_path_is_refused() {
        let h = signed();
        let r = receiver().verify("POST", "/raft/append", lookup(&h), br#"{"term":3}"#, NOW);
        assert_bad_signature(r, 2);
    }

    #[test]
    fn tampered_method_is_refused() {
        let h = signed();
        let r = receiver().verify("PUT", "/raft/vote", lookup(&h), br#"{"term":3}"#, NOW);
        assert_bad_signature(r, 2);
    }

    #[test]
    fn tampered_time_is_refused() {
        let mut h = signed();
        h.insert(TIME_HEADER.into(), (NOW + 1).to_string());
        assert_bad_signature(verify_at(&receiver(), &h, NOW), 2);
    }

    #[test]
    fn tampered_nonce_is_refused() {
        let mut h = signed();
        h.insert(NONCE_HEADER.into(), "0000000000000008".into());
        assert_bad_signature(verify_at(&receiver(), &h, NOW), 2);
    }

    #[test]
    fn tampered_node_is_refused_naming_the_claimed_node() {
        let mut h = signed();
        h.insert(NODE_HEADER.into(), "3".into());
        assert_bad_signature(verify_at(&receiver(), &h, NOW), 3);
    }

    #[test]
    fn tampered_signature_is_refused() {
        let mut h = signed();
        let mut sig = h[SIGNATURE_HEADER].clone().into_bytes();
        sig[0] = if sig[0] == b'0' { b'1' } else { b'0' };
        h.insert(SIGNATURE_HEADER.into(), String::from_utf8(sig).unwrap());
        assert_bad_signature(verify_at(&receiver(), &h, NOW), 2);
    }

    #[test]
    fn method_and_path_cannot_trade_characters() {
        // Without length prefixes "POST" + "/x" and "POS" + "T/x" could join
        // to the same text.
        let sender = Authenticator::new(CLUSTER, SECRET, 2);
        let h = headers(sender.sign("POST", "/x", b"", NOW, 1));
        let r = receiver().verify("POS", "T/x", lookup(&h), b"", NOW);
        assert_bad_signature(r, 2);
    }

    #[test]
    fn wrong_secret_is_refused_with_advice() {
        let sender = Authenticator::new(CLUSTER, b"another secret", 3);
        let h = headers(sender.sign("POST", "/raft/vote", br#"{"term":3}"#, NOW, 7));
        let err = verify_at(&receiver(), &h, NOW).unwrap_err();
        assert!(
            matches!(err, AuthError::BadSignature { node: 3 }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("node 3"), "{msg}");
        assert!(msg.contains("cluster.secret_file"), "{msg}");
    }

    #[test]
    fn other_cluster_is_refused_naming_both() {
        let sender = Authenticator::new("b.example.", SECRET, 2);
        let h = headers(sender.sign("POST", "/raft/vote", br#"{"term":3}"#, NOW, 7));
        let err = verify_at(&receiver(), &h, NOW).unwrap_err();
        match &err {
            AuthError::WrongCluster { ours, theirs } => {
                assert_eq!(ours, CLUSTER);
                assert_eq!(theirs, "b.example.");
            }
            other => panic!("expected WrongCluster, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "request from cluster \"b.example.\" but this is cluster \"a.example.\": check cluster.name / dns.zone on both nodes"
        );
    }

    #[test]
    fn wrong_cluster_is_reported_before_a_bad_signature() {
        // Another cluster has another secret too; the person needs to hear
        // about the cluster name, which is the actual mistake.
        let sender = Authenticator::new("b.example.", b"their secret", 2);
        let h = headers(sender.sign("GET", "/", b"", NOW, 1));
        let r = receiver().verify("GET", "/", lookup(&h), b"", NOW);
        assert!(matches!(r, Err(AuthError::WrongCluster { .. })), "{r:?}");
    }

    #[test]
    fn each_missing_header_is_named() {
        for name in [
            NODE_HEADER,
            CLUSTER_HEADER,
            TIME_HEADER,
            NONCE_HEADER,
            SIGNATURE_HEADER,
        ] {
            let mut h = signed();
            h.remove(name);
            match verify_at(&receiver(), &h, NOW) {
                Err(err @ AuthError::Missing { header }) => {
                    assert_eq!(header, name);
                    assert!(err.to_string().contains(name), "{err}");
                }
                other => panic!("without {name}: expected Missing, got {other:?}"),
            }
        }
    }

    fn assert_malformed(header: &'static str, value: &str) {
        let mut h = signed();
        h.insert(header.into(), value.into());
        match verify_at(&receiver(), &h, NOW) {
            Err(AuthError::Malformed { header: got, .. }) => assert_eq!(got, header),
            other => panic!("{header}: {value:?}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn non_numeric_time_is_malformed() {
        for value in [
            "soon",
            "",
            "+1700000000000",
            "-1",
            "1.5",
            "99999999999999999999",
        ] {
            assert_malformed(TIME_HEADER, value);
        }
    }

    #[test]
    fn non_numeric_node_is_malformed() {
        for value in ["two", "", "+2", " 2", "0x2"] {
            assert_malformed(NODE_HEADER, value);
        }
    }

    #[test]
    fn bad_nonce_and_signature_are_malformed() {
        assert_malformed(NONCE_HEADER, "7");
        assert_malformed(NONCE_HEADER, "000000000000000g");
        assert_malformed(NONCE_HEADER, "+000000000000007");
        assert_malformed(SIGNATURE_HEADER, "abc");
        assert_malformed(SIGNATURE_HEADER, &"z".repeat(64));
    }

    #[test]
    fn malformed_message_shows_only_an_excerpt() {
        let mut h = signed();
        let long = "f".repeat(63) + "x";
        h.insert(SIGNATURE_HEADER.into(), long.clone());
        let err = verify_at(&receiver(), &h, NOW).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&"f".repeat(EXCERPT_CHARS)), "{msg}");
        assert!(!msg.contains(&long), "{msg}");
        assert!(msg.contains("64 hex digits"), "{msg}");
    }

    fn skew_of(result: Result<u64, AuthError>) -> i64 {
        match result {
            Err(AuthError::Skewed { node, skew_ms, max }) => {
                assert_eq!(node, 2);
                assert_eq!(max, MAX_SKEW);
                skew_ms
            }
            other => panic!("expected Skewed, got {other:?}"),
        }
    }

    #[test]
    fn sender_ahead_beyond_max_skew_is_refused() {
        let h = signed();
        let now = NOW - MAX_SKEW_MS - 1;
        let err = verify_at(&receiver(), &h, now).unwrap_err();
        assert!(err.to_string().contains("ahead"), "{err}");
        assert_eq!(skew_of(Err(err)), 30_001);
    }

    #[test]
    fn sender_behind_beyond_max_skew_is_refused() {
        let h = signed();
        let err = verify_at(&receiver(), &h, NOW + 45_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node 2's clock is 45 s behind; keep node clocks within 30 s (NTP)"
        );
        assert_eq!(skew_of(Err(err)), -45_000);
    }

    #[test]
    fn skew_up_to_max_is_accepted_both_ways() {
        assert_eq!(
            verify_at(&receiver(), &signed(), NOW - MAX_SKEW_MS).unwrap(),
            2
        );
        assert_eq!(
            verify_at(&receiver(), &signed(), NOW + MAX_SKEW_MS).unwrap(),
            2
        );
        assert_eq!(verify_at(&receiver(), &signed(), NOW + 12_345).unwrap(), 2);
    }

    #[test]
    fn skew_message_says_how_far_in_tenths() {
        let h = signed();
        let err = verify_at(&receiver(), &h, NOW - 45_250).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node 2's clock is 45.2 s ahead; keep node clocks within 30 s (NTP)"
        );
    }

    #[test]
    fn exact_replay_is_refused() {
        let r = receiver();
        let h = signed();
        assert_eq!(verify_at(&r, &h, NOW).unwrap(), 2);
        match verify_at(&r, &h, NOW + 1_000) {
            Err(err @ AuthError::Replayed { node: 2, nonce: 7 }) => {
                assert!(err.to_string().contains("0000000000000007"), "{err}");
            }
            other => panic!("expected Replayed, got {other:?}"),
        }
    }

    #[test]
    fn replay_at_the_edge_of_the_window_is_refused() {
        let r = receiver();
        let h = signed();
        assert_eq!(verify_at(&r, &h, NOW).unwrap(), 2);
        // Still within MAX_SKEW, so the skew check lets it through: the
        // cache must still hold the nonce.
        let err = verify_at(&r, &h, NOW + MAX_SKEW_MS).unwrap_err();
        assert!(
            matches!(err, AuthError::Replayed { node: 2, nonce: 7 }),
            "{err:?}"
        );
        // One millisecond later the skew check refuses it.
        let err = verify_at(&r, &h, NOW + MAX_SKEW_MS + 1).unwrap_err();
        assert!(matches!(err, AuthError::Skewed { .. }), "{err:?}");
    }

    #[test]
    fn same_nonce_from_another_node_is_accepted() {
        let r = receiver();
        assert_eq!(verify_at(&r, &signed(), NOW).unwrap(), 2);
        let other = Authenticator::new(CLUSTER, SECRET, 3);
        let h = headers(other.sign("POST", "/raft/vote", br#"{"term":3}"#, NOW, 7));
        assert_eq!(verify_at(&r, &h, NOW).unwrap(), 3);
    }

    #[test]
    fn refused_requests_are_not_remembered() {
        let r = receiver();
        let mut bad = signed();
        bad.insert(SIGNATURE_HEADER.into(), "0".repeat(64));
        assert!(verify_at(&r, &bad, NOW).is_err());
        assert_eq!(r.remembered_nonces(), 0);
        // The genuine request with that nonce still gets in.
        assert_eq!(verify_at(&r, &signed(), NOW).unwrap(), 2);
        assert_eq!(r.remembered_nonces(), 1);
    }

    #[test]
    fn replay_cache_stays_bounded_as_time_advances() {
        let r = receiver();
        let sender = Authenticator::new(CLUSTER, SECRET, 2);
        // 100k requests, one every 10 ms: about 17 minutes.
        let step = 10;
        for i in 0..100_000u64 {
            let now = NOW + i * step;
            let h = headers(sender.sign("POST", "/health", b"", now, i));
            assert_eq!(
                r.verify("POST", "/health", lookup(&h), b"", now).unwrap(),
                2
            );
        }
        // Only the last MAX_SKEW's requests (and the one exactly on its edge)
        // can still be replayed within the skew limit.
        let window = usize::try_from(MAX_SKEW_MS / step).unwrap() + 1;
        assert_eq!(r.remembered_nonces(), window);
    }

    #[test]
    fn clock_stepping_back_does_not_reopen_the_replay_window() {
        let r = receiver();
        let h = signed();
        assert_eq!(verify_at(&r, &h, NOW).unwrap(), 2);
        // A later request prunes the nonce from the cache ...
        let sender = Authenticator::new(CLUSTER, SECRET, 2);
        let later = NOW + 10 * MAX_SKEW_MS;
        let h2 = headers(sender.sign("POST", "/raft/vote", br#"{"term":3}"#, later, 8));
        assert_eq!(verify_at(&r, &h2, later).unwrap(), 2);
        assert_eq!(r.remembered_nonces(), 1);
        // ... and then our clock steps back to where the old request is
        // within the skew limit again: it must still be refused.
        let err = verify_at(&r, &h, NOW).unwrap_err();
        assert!(matches!(err, AuthError::Skewed { node: 2, .. }), "{err:?}");
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let a = receiver();
        let shown = format!("{a:?}");
        assert!(!shown.contains("correct horse"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains(CLUSTER), "{shown}");
    }

    #[test]
    fn errors_never_show_the_signature() {
        let mut h = signed();
        let signature = h[SIGNATURE_HEADER].clone();
        h.insert(NODE_HEADER.into(), "3".into());
        let err = verify_at(&receiver(), &h, NOW).unwrap_err();
        assert!(!err.to_string().contains(&signature));
        assert!(!format!("{err:?}").contains(&signature));
        assert!(!err.to_string().contains("correct horse"));
    }

    #[test]
    fn authenticator_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Authenticator>();
    }
}

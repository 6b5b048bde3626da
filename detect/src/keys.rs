//! What an agent touches, learned: resources generalised to a prefix, scopes, and the per-role peer
//! counts that say how rare a key is among agents doing the same job.
//!
//! Keys are stored as 64-bit hashes of their text (a fixed function, so snapshots mean the same thing in
//! every version); the text is only kept where a finding needs it as evidence.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vigil_schemas::swar;

/// A 64-bit hash of byte strings, stable across versions and platforms (snapshots store it): eight bytes
/// at a time, multiply-rotate, with a final avalanche. Not for hash tables facing adversaries; keys here
/// are only compared, never used to pick a bucket an attacker could flood.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for part in parts {
        let mut chunks = part.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            h = (h.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        // The length closes each part, so ("ab","c") and ("a","bc") differ.
        h = (h.rotate_left(23) ^ tail_word(chunks.remainder())).wrapping_mul(K);
        h = (h.rotate_left(23) ^ part.len() as u64).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Up to seven bytes as the little-endian word they make padded with zeros, from two loads that may
/// overlap (the bytes they share are the same, so OR-ing them changes nothing): copying a remainder of
/// variable length into a zeroed word is a `memcpy` call, five or six per event in `stable_hash`.
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    debug_assert!(n < 8);
    if n >= 4 {
        let lo = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let hi = u32::from_le_bytes([rest[n - 4], rest[n - 3], rest[n - 2], rest[n - 1]]);
        u64::from(lo) | u64::from(hi) << (8 * (n - 4))
    } else if n >= 2 {
        let lo = u16::from_le_bytes([rest[0], rest[1]]);
        let hi = u16::from_le_bytes([rest[n - 2], rest[n - 1]]);
        u64::from(lo) | u64::from(hi) << (8 * (n - 2))
    } else {
        rest.first().map_or(0, |&b| u64::from(b))
    }
}

/// The generalised form of a resource URI: scheme and authority (lower-cased), then at most `depth`
/// path segments, without query or fragment. One new file in a familiar folder is the same key as its
/// neighbours. Resources that are not URIs are cut at the `depth + 1`-th `/` or `:`.
///
/// ```
/// use vigil_detect::generalise;
/// assert_eq!(generalise("file:///repo/src/api/handlers.rs", 2), "file:///repo/src");
/// assert_eq!(generalise("HTTPS://API.example.com/v1/charges/ch_1?x=1", 2), "https://api.example.com/v1/charges");
/// assert_eq!(generalise("postgres://crm/accounts", 2), "postgres://crm/accounts");
/// ```
pub fn generalise(resource: &str, depth: usize) -> String {
    let mut out = String::with_capacity(resource.len());
    push_cut(&mut out, resource, depth, cut_of(resource.as_bytes(), depth));
    out
}

/// Where a resource's generalised form ends.
enum Cut {
    /// A URI: the form is `resource[..cut]`, its first `authority` bytes lower-cased.
    Uri { cut: usize, authority: usize },
    /// Not a URI: the form is made of the segments of `resource[..end]`.
    Other { end: usize },
}

/// Searches the resource for its cut. Every delimiter is ASCII, so the text is searched as bytes (eight
/// at a time, `swar`) and every cut falls on a character boundary. One pass, and no further than the
/// cut: a URI's query is never read when its path is cut before it.
fn cut_of(b: &[u8], depth: usize) -> Cut {
    // The scheme's "://" is the first ':' followed by "//" before any '?' or '#'; without one, the
    // search stops where the query or fragment begins (or at the end).
    let mut i = 0;
    let scheme = loop {
        i = first_of(b, i, [b':', b'?', b'#']);
        match b.get(i) {
            Some(b':') if b[i + 1..].starts_with(b"//") => break i,
            Some(b':') => i += 1,
            _ => return Cut::Other { end: i },
        }
    };
    // Scheme and authority, then whole path segments: `cut` is always at a '/', a '?', a '#' or the end.
    let ends = [b'/', b'?', b'#'];
    let authority = first_of(b, scheme + 3, ends);
    let mut cut = authority;
    let mut kept = 0;
    while kept < depth && b.get(cut) == Some(&b'/') {
        let seg_end = first_of(b, cut + 1, ends);
        // An empty segment (a doubled '/') is kept but not counted, unless it is the last.
        kept += usize::from(seg_end > cut + 1 || b.get(seg_end) != Some(&b'/'));
        cut = seg_end;
    }
    Cut::Uri { cut, authority }
}

/// Appends the generalised form of `resource`, cut at `c`, to `out`.
fn push_cut(out: &mut String, resource: &str, depth: usize, c: Cut) {
    match c {
        Cut::Uri { cut, authority } => {
            let from = out.len();
            out.push_str(&resource[..cut]);
            if swar::has_ascii_uppercase(&resource.as_bytes()[..authority]) {
                out[from..from + authority].make_ascii_lowercase();
            }
        }
        Cut::Other { end } => {
            // Not a URI: segments are separated by '/' or ':'; the first `depth + 1` are kept.
            let r = &resource[..end];
            let (mut seg_start, mut kept) = (0, 0);
            for (i, &b) in r.as_bytes().iter().enumerate() {
                if b == b'/' || b == b':' {
                    out.push_str(&r[seg_start..i]);
                    if kept == depth {
                        return;
                    }
                    out.push('/');
                    kept += 1;
                    seg_start = i + 1;
                }
            }
            out.push_str(&r[seg_start..]);
        }
    }
}

/// [`generalise`] without a copy where the form is a prefix of the resource (a URI whose authority
/// holds no capital: the usual case), else written into `scratch` (the hot path: the form is only
/// hashed).
pub fn generalised<'a>(scratch: &'a mut String, resource: &'a str, depth: usize) -> &'a str {
    match cut_of(resource.as_bytes(), depth) {
        Cut::Uri { cut, authority } if !swar::has_ascii_uppercase(&resource.as_bytes()[..authority]) => {
            &resource[..cut]
        }
        c => {
            scratch.clear();
            push_cut(scratch, resource, depth, c);
            scratch
        }
    }
}

/// The index of the first byte of `b[from..]` that is one of `bytes`, else `b.len()`.
#[inline]
fn first_of(b: &[u8], from: usize, bytes: [u8; 3]) -> usize {
    swar::find_any3(&b[from..], bytes).map_or(b.len(), |j| from + j)
}

/// One learned key: how much of the agent's activity went to it, over a long and a short memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// The low 32 bits of the key's hash: enough to tell apart the few dozen keys of one agent.
    #[serde(rename = "h")]
    pub hash: u32,
    /// Share of activity over the long memory.
    #[serde(rename = "l")]
    pub long: f32,
    /// Share of activity over the short memory.
    #[serde(rename = "s")]
    pub short: f32,
}

/// The keys an agent has used, capped: when full, the key with the least long-term weight is forgotten.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyTable {
    /// Learned keys, unordered.
    #[serde(rename = "k")]
    pub keys: Vec<Learned>,
}

impl KeyTable {
    /// Whether a key is known.
    pub fn contains(&self, hash: u64) -> bool {
        let hash = hash as u32;
        self.keys.iter().any(|k| k.hash == hash)
    }

    /// Folds in one window's counts per key (`counts`, hash and count, `total` events): old weights are
    /// multiplied by `keep_long` and `keep_short` (for a memory of M events over a block of n events,
    /// `(1 - 1/M)^n`), and each key gains its share of the rest. Keys not yet known are added, evicting
    /// the weakest when over `cap`.
    pub fn learn(&mut self, counts: &[(u64, u32)], total: u32, keep_long: f64, keep_short: f64, cap: usize) {
        if total == 0 {
            return;
        }
        let n = f64::from(total);
        for k in &mut self.keys {
            k.long = (f64::from(k.long) * keep_long) as f32;
            k.short = (f64::from(k.short) * keep_short) as f32;
        }
        for &(hash, c) in counts {
            let hash = hash as u32;
            let share = f64::from(c) / n;
            let add_long = (share * (1.0 - keep_long)) as f32;
            let add_short = (share * (1.0 - keep_short)) as f32;
            match self.keys.iter_mut().find(|k| k.hash == hash) {
                Some(k) => {
                    k.long += add_long;
                    k.short += add_short;
                }
                None => {
                    if self.keys.len() >= cap.max(1) {
                        // Forget the weakest; ties go to the larger hash, so the choice is deterministic.
                        if let Some(i) = (0..self.keys.len()).min_by(|&a, &b| {
                            let (x, y) = (&self.keys[a], &self.keys[b]);
                            x.long.total_cmp(&y.long).then(y.hash.cmp(&x.hash))
                        }) {
                            self.keys.swap_remove(i);
                        }
                    }
                    self.keys.push(Learned { hash, long: add_long, short: add_short });
                }
            }
        }
    }

    /// Accepts the recent spread as the long-term one (after a shift was reported).
    pub fn rebase(&mut self) {
        for k in &mut self.keys {
            k.long = k.short;
        }
    }

    /// The divergence if it is at least `threshold`, skipping the logarithms when the total variation
    /// distance already rules it out (JS <= ln 2 * TV).
    pub fn divergence_at_least(&self, threshold: f64) -> Option<f64> {
        let (sl, ss) = self
            .keys
            .iter()
            .fold((0.0f64, 0.0f64), |(l, s), k| (l + f64::from(k.long), s + f64::from(k.short)));
        if sl <= 0.0 || ss <= 0.0 {
            return None;
        }
        let tv: f64 = 0.5
            * self.keys.iter().map(|k| (f64::from(k.short) / ss - f64::from(k.long) / sl).abs()).sum::<f64>();
        if tv * std::f64::consts::LN_2 < threshold {
            return None;
        }
        let d = self.divergence();
        (d >= threshold).then_some(d)
    }

    /// Jensen-Shannon divergence (natural log, so in [0, ln 2]) between the short- and long-memory
    /// distributions over keys. Near 0 when the agent does what it always did; grows as its recent work
    /// moves to keys it rarely used.
    pub fn divergence(&self) -> f64 {
        let (sl, ss) = self
            .keys
            .iter()
            .fold((0.0f64, 0.0f64), |(l, s), k| (l + f64::from(k.long), s + f64::from(k.short)));
        if sl <= 0.0 || ss <= 0.0 {
            return 0.0;
        }
        let mut js = 0.0;
        for k in &self.keys {
            let p = f64::from(k.short) / ss;
            let q = f64::from(k.long) / sl;
            let m = 0.5 * (p + q);
            if p > 0.0 {
                js += 0.5 * p * (p / m).ln();
            }
            if q > 0.0 {
                js += 0.5 * q * (q / m).ln();
            }
        }
        js.max(0.0)
    }
}

/// How many agents of one role use each key: the peer group's view.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerTable {
    /// Agents seen in the role.
    pub agents: u32,
    /// Key hash to the number of the role's agents that learned it.
    pub keys: HashMap<u64, u32>,
}

impl PeerTable {
    /// How rare a key is among the role's agents other than the one asking: 1 when none of them uses
    /// it, 0 when all do. With fewer than `min_peers` other agents the group says nothing and the key
    /// counts as rare.
    pub fn rarity(&self, hash: u64, min_peers: u32) -> f64 {
        let others = self.agents.saturating_sub(1);
        if others < min_peers {
            return 1.0;
        }
        let users = self.keys.get(&hash).copied().unwrap_or(0);
        1.0 - f64::from(users.min(others)) / f64::from(others)
    }

    /// Records that one more agent of the role uses `hash`, unless the table is at `cap` keys.
    pub fn add(&mut self, hash: u64, cap: usize) {
        if let Some(n) = self.keys.get_mut(&hash) {
            *n += 1;
        } else if self.keys.len() < cap {
            self.keys.insert(hash, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first version of `generalise` (str searches), kept as the reference the byte-wise
    /// one is held to.
    fn reference(out: &mut String, resource: &str, depth: usize) {
        let end = resource.find(['?', '#']).unwrap_or(resource.len());
        let r = &resource[..end];
        let (head, path) = match r.find("://") {
            Some(i) => {
                let after = i + 3;
                let auth_end = r[after..].find('/').map_or(r.len(), |j| after + j);
                (&r[..auth_end], &r[auth_end..])
            }
            None => ("", r),
        };
        if head.bytes().any(|b| b.is_ascii_uppercase()) {
            out.extend(head.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(head);
        }
        let mut kept = 0;
        let mut rest = path;
        if head.is_empty() {
            // Not a URI: segments are separated by '/' or ':'.
            for (i, seg) in rest.split(['/', ':']).enumerate() {
                if i > depth {
                    break;
                }
                if i > 0 {
                    out.push('/');
                }
                out.push_str(seg);
            }
            return;
        }
        while let Some(stripped) = rest.strip_prefix('/') {
            if kept == depth {
                break;
            }
            let seg_end = stripped.find('/').unwrap_or(stripped.len());
            let seg = &stripped[..seg_end];
            out.push('/');
            out.push_str(seg);
            kept += usize::from(!seg.is_empty() || seg_end == stripped.len());
            rest = &stripped[seg_end..];
        }
    }

    #[test]
    fn generalising_byte_by_byte_gives_what_the_string_searches_gave() {
        // Resources assembled from the pieces that steer the cuts, at every depth up to 4.
        let pieces = ["s3", "HTTPS", ":", "//", "/", "://", "a", "B", "?", "#", "x=1", "é", "", "::", ":/"];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut r = String::new();
            for _ in 0..(rng % 9) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                r.push_str(pieces[(rng % pieces.len() as u64) as usize]);
            }
            rng = rng.wrapping_add(1);
            for depth in 0..=4 {
                let mut slow = String::new();
                reference(&mut slow, &r, depth);
                assert_eq!(generalise(&r, depth), slow, "{r:?} at depth {depth}");
                let mut scratch = String::from("left over");
                assert_eq!(generalised(&mut scratch, &r, depth), slow, "{r:?} at depth {depth}");
            }
        }
    }

    #[test]
    fn resources_generalise_to_a_prefix() {
        let cases = [
            ("file:///repo/src/lib.rs", 2, "file:///repo/src"),
            ("file:///repo/src/lib.rs", 1, "file:///repo"),
            ("file:///repo/Cargo.toml", 2, "file:///repo/Cargo.toml"),
            ("s3://bucket/a/b/c.parquet", 1, "s3://bucket/a"),
            ("s3://Bucket", 2, "s3://bucket"),
            (
                "https://k8s.acme.internal/api/v1/namespaces/prod/pods",
                4,
                "https://k8s.acme.internal/api/v1/namespaces/prod",
            ),
            ("https://x.example/a/b#frag", 5, "https://x.example/a/b"),
            ("mcp://github/create_pull_request", 2, "mcp://github/create_pull_request"),
            ("vault:secret/prod/db", 1, "vault/secret"),
            ("", 2, ""),
        ];
        for (input, depth, want) in cases {
            assert_eq!(generalise(input, depth), want, "{input} at depth {depth}");
        }
    }

    #[test]
    fn hashes_are_stable_and_separate_parts() {
        // Pinned: snapshots store these numbers, so the function may never change.
        assert_eq!(stable_hash(&[b"postgres://crm/accounts"]), stable_hash(&[b"postgres://crm/accounts"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(format!("{:016x}", stable_hash(&[b"r", b"postgres://crm/accounts"])), "01761a3e5efb93a0");
        assert_ne!(stable_hash(&[b"abcdefgh"]), stable_hash(&[b"abcdefgh", b""]));
        // A part of every remainder's length, 0 to 7.
        let pinned = [
            "ac04097e7bc1c474",
            "94579b586feef130",
            "6ba68c573c876bc6",
            "bc1f2de8fa65ddeb",
            "cc91934824389b0a",
            "d350818fcc29072b",
            "784912d59df6948d",
            "b202af7b1838b377",
        ];
        let got: Vec<String> =
            (8..16).map(|n| format!("{:016x}", stable_hash(&[b"s", &b"ops-agent-0409:read"[..n]]))).collect();
        assert_eq!(got, pinned);
    }

    #[test]
    fn a_remainder_is_the_word_of_its_bytes_padded_with_zeros() {
        let bytes: Vec<u8> = (0..7u8).map(|i| 0xF9 - 37 * i).collect();
        for n in 0..8 {
            for at in 0..bytes.len() - n.min(bytes.len()) + 1 {
                let rest = &bytes[at..at + n.min(7)];
                let mut b = [0u8; 8];
                b[..rest.len()].copy_from_slice(rest);
                assert_eq!(tail_word(rest), u64::from_le_bytes(b), "{rest:02x?}");
            }
        }
    }

    fn keep(memory: f64, n: i32) -> f64 {
        (1.0 - 1.0 / memory).powi(n)
    }

    #[test]
    fn the_table_learns_forgets_the_weakest_and_measures_divergence() {
        let mut t = KeyTable::default();
        for _ in 0..200 {
            t.learn(&[(1, 8), (2, 2)], 10, keep(1000.0, 10), keep(20.0, 10), 3);
        }
        assert!(t.divergence() < 1e-3, "{}", t.divergence());
        // The agent moves its work to key 3: the short memory follows at once, the long one slowly.
        for _ in 0..10 {
            t.learn(&[(3, 10)], 10, keep(1000.0, 10), keep(20.0, 10), 3);
        }
        let d = t.divergence();
        assert!(d > 0.3, "{d}");
        // A fourth key evicts the one with the least long-term weight: key 3 (100 events, against key 2's
        // 400 spread over a longer past).
        t.learn(&[(4, 1)], 1, keep(1000.0, 1), keep(20.0, 1), 3);
        assert_eq!(t.keys.len(), 3);
        assert!(t.contains(1) && t.contains(2) && t.contains(4) && !t.contains(3));
    }

    #[test]
    fn the_total_variation_bound_never_skips_a_divergence_over_the_threshold() {
        let mut x: u64 = 1;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        for _ in 0..2000 {
            let keys: Vec<Learned> =
                (0..6).map(|h| Learned { hash: h, long: next() * next(), short: next() * next() }).collect();
            let t = KeyTable { keys };
            let d = t.divergence();
            for threshold in [0.01, 0.05, 0.15, 0.3] {
                assert_eq!(t.divergence_at_least(threshold).is_some(), d >= threshold, "{d} {threshold}");
            }
        }
    }

    #[test]
    fn rarity_comes_from_the_peers() {
        let mut p = PeerTable { agents: 11, ..Default::default() };
        for _ in 0..10 {
            p.add(7, 10);
        }
        p.add(8, 10);
        assert_eq!(p.rarity(7, 5), 0.0);
        assert!((p.rarity(8, 5) - 0.9).abs() < 1e-12);
        assert_eq!(p.rarity(9, 5), 1.0);
        assert_eq!(p.rarity(7, 20), 1.0, "too few peers to say");
    }
}

//! What the engine says: the finding rows (defined with the contract in `vigil-schemas`)
//! and how a finding's id is derived.

pub use vigil_schemas::rows::{Finding, FindingKind, Severity};

/// Derives a finding id from what identifies the incident: 32 hex characters of SHA-256
/// ([`vigil_schemas::rows::row_id`]).
pub fn finding_id(kind: FindingKind, agent_id: &str, window_start: i64, key: &str) -> String {
    vigil_schemas::rows::row_id(&[
        kind.as_str().as_bytes(),
        agent_id.as_bytes(),
        &window_start.to_be_bytes(),
        key.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_ids_are_stable_and_unambiguous() {
        let a = finding_id(FindingKind::RateLimit, "agent-1", 60_000, "");
        assert_eq!(a, "c83ef269e28aa416933ac7ae47bab793");
        assert_eq!(a, finding_id(FindingKind::RateLimit, "agent-1", 60_000, ""));
        assert_ne!(a, finding_id(FindingKind::RateLimit, "agent-1", 120_000, ""));
        assert_ne!(a, finding_id(FindingKind::PolicyViolation, "agent-1", 60_000, ""));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            finding_id(FindingKind::RateLimit, "ab", 0, "c"),
            finding_id(FindingKind::RateLimit, "a", 0, "bc")
        );
    }
}

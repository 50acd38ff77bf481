//! The event vocabulary: every event name flaghook emits, and how subscriptions match them.
//!
//! In: nothing. Out: the names and the matching rule, for events, config and delivery alike.
//! Never: depends on another module (config validates subscriptions against it).

/// Every event name flaghook emits (SPEC §3), exactly.
pub const EVENT_NAMES: [&str; 17] = [
    "flag.created",
    "flag.updated",
    "flag.deleted",
    "flag.enabled",
    "flag.disabled",
    "segment.created",
    "segment.updated",
    "segment.deleted",
    "segment.rollout_percent.updated",
    "variant.created",
    "variant.updated",
    "variant.deleted",
    "variant.attachment.updated",
    "constraint.created",
    "constraint.updated",
    "constraint.deleted",
    "distribution.updated",
];

/// True when `pattern` (an event name, `prefix.*` or `*`) matches `event`.
pub fn event_matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_patterns() {
        assert!(event_matches("*", "flag.created"));
        assert!(event_matches("flag.*", "flag.created"));
        assert!(event_matches(
            "segment.*",
            "segment.rollout_percent.updated"
        ));
        assert!(!event_matches("flag.*", "flagx.created"));
        assert!(!event_matches("flag.created", "flag.updated"));
        assert!(event_matches(
            "variant.attachment.updated",
            "variant.attachment.updated"
        ));
    }
}

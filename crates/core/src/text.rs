//! Text that reaches status, Events and logs, kept to a size.

/// Cuts `s` to at most `max` bytes (on a character boundary), saying how long
/// it was: "…(4711 bytes)" adds at most 24 bytes. Event notes are kept to
/// 1,000 bytes (the API allows 1 KiB), condition messages to 2 KiB.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn cuts_on_a_character_boundary_and_says_how_long_it_was() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc… (6 bytes)");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(truncate("aé", 2), "a… (3 bytes)");
        assert!(truncate(&"x".repeat(5000), 1000).len() <= 1024);
    }
}

//! What of a task's output may reach the driver's terminal. Lines come from agents, which may be
//! hostile or run hostile code: an escape sequence printed as is could clear the screen, rewrite
//! what was printed before, set the window's title or, on some terminals, feed keystrokes back.

use std::{borrow::Cow, fmt::Write};

/// `line` with every control character (C0 but tab, DEL, C1) written as a visible Rust-style
/// escape: ESC as `\x1b`, CSI (U+009B) as `\u{9b}`. Printable text, multi-byte characters
/// included, is kept as it is.
pub(crate) fn sanitize_line(line: &str) -> Cow<'_, str> {
    if !line.chars().any(needs_escape) {
        return Cow::Borrowed(line);
    }
    let mut clean = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if !needs_escape(c) {
            clean.push(c);
        } else if c.is_ascii() {
            let _ = write!(clean, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(clean, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(clean)
}

fn needs_escape(c: char) -> bool {
    // `is_control` is Unicode's Cc: U+0000–U+001F, U+007F and U+0080–U+009F.
    c.is_control() && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::sanitize_line;

    #[test]
    fn escape_sequences_are_written_out_and_text_is_kept() {
        assert_eq!(sanitize_line("\x1b[2Jgone"), "\\x1b[2Jgone");
        assert_eq!(
            sanitize_line("\x1b[31mred\x1b[0m\x07"),
            "\\x1b[31mred\\x1b[0m\\x07"
        );
        assert_eq!(sanitize_line("50%\rdone"), "50%\\x0ddone");
        assert_eq!(sanitize_line("a\nb\0c\x7f"), "a\\x0ab\\x00c\\x7f");
        // C1 controls: CSI is ESC [ in one character to many terminals.
        assert_eq!(sanitize_line("\u{9b}2J\u{85}"), "\\u{9b}2J\\u{85}");
        assert_eq!(sanitize_line("x\u{80}\u{9f}"), "x\\u{80}\\u{9f}");
    }

    #[test]
    fn printable_text_tabs_and_multibyte_characters_pass_unchanged() {
        for line in ["plain", "a\tb", "π ≈ 3.14 — ok ✓ 日本", "C:\\path", ""] {
            assert_eq!(sanitize_line(line), line);
        }
        // Characters whose UTF-8 encoding holds bytes 0x80–0x9F (ě is C4 9B) are not C1
        // controls.
        assert_eq!(sanitize_line("\u{100}ě"), "\u{100}ě");
    }
}

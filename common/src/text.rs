//! Text that came from outside (file names, folder names, patient ids, model metadata) shown to a
//! terminal or written into CSV and JSON. File names may hold any bytes but `/` and NUL: escape
//! sequences that clear the screen or retitle the terminal, newlines that forge report lines,
//! bidirectional overrides that reorder what is read, bytes that are not UTF-8.
//!
//! `escape` is lossless and shows no control character: printable text stays as it is, `\`
//! becomes `\\`, control and invisible formatting characters become `\xNN` or `\u{NNNN}`, and a
//! byte that is not UTF-8 becomes `\xNN` (`unescape` reverses it). Two different names therefore
//! never print alike, and the predictions CSV and JSON keep the exact bytes. `sanitize` is for
//! whole messages: it keeps newlines and tabs and escapes every other control character.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

/// Characters that change how a terminal or a reader shows text without being seen themselves:
/// C0 and C1 controls, DEL, zero-width and bidirectional formatting characters, the BOM.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn push_escaped(out: &mut String, c: char) {
    if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// Bytes as terminal-safe, lossless text (see the module comment).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if hidden(c) => push_escaped(&mut out, c),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// An OS string (a file name, a path) as terminal-safe, lossless text.
pub fn escape(s: &OsStr) -> String {
    escape_bytes(s.as_encoded_bytes())
}

/// A path as terminal-safe, lossless text.
pub fn path(p: &Path) -> String {
    escape(p.as_os_str())
}

/// `.shown()`: what the project prints instead of `Path::display()` (which sends control
/// characters to the terminal as they are and merges different invalid bytes into one).
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for Path {
    fn shown(&self) -> String {
        path(self)
    }
}

impl Shown for std::path::PathBuf {
    fn shown(&self) -> String {
        path(self)
    }
}

impl Shown for str {
    fn shown(&self) -> String {
        escape_bytes(self.as_bytes())
    }
}

impl Shown for String {
    fn shown(&self) -> String {
        escape_bytes(self.as_bytes())
    }
}

/// Reverses `escape_bytes`; `None` for text that `escape_bytes` cannot have made.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next()? {
            '\\' => out.push(b'\\'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(
                    u8::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == 2)?,
                );
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A whole message made safe for a terminal: newlines and tabs stay, every other control or
/// invisible formatting character is escaped (backslashes are left alone: not lossless).
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| hidden(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) && c != '\n' && c != '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        let name = "a\u{1b}[2J\u{1b}]0;owned\u{7}b\nc\u{202e}d\\e.png";
        let shown = escape_bytes(name.as_bytes());
        assert_eq!(shown, r"a\x1b[2J\x1b]0;owned\x07b\x0ac\u{202e}d\\e.png");
        assert!(!shown.chars().any(hidden));
        assert_eq!(escape_bytes(b"ok_idx5.png"), "ok_idx5.png");
        assert_eq!(escape_bytes(b"caf\xc3\xa9 \xff\xfe"), r"café \xff\xfe");
        assert_eq!(sanitize("line\n\ttab\u{1b}[31m"), "line\n\ttab\\x1b[31m");
        assert!(matches!(sanitize("plain"), Cow::Borrowed(_)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Lossless: any bytes come back from their escaped form, so two names never print alike;
        /// and the escaped form holds no control or invisible formatting character.
        #[test]
        fn escape_round_trips_and_hides_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let shown = escape_bytes(&bytes);
            prop_assert!(!shown.chars().any(hidden), "{shown:?}");
            prop_assert_eq!(unescape(&shown), Some(bytes));
        }

        #[test]
        fn escape_round_trips_unicode(s in "\\PC*|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\\\a]*") {
            let shown = escape_bytes(s.as_bytes());
            prop_assert!(!shown.chars().any(hidden));
            prop_assert_eq!(unescape(&shown), Some(s.into_bytes()));
        }

        #[test]
        fn sanitize_keeps_only_newlines_and_tabs(s in any::<String>()) {
            let clean = sanitize(&s);
            prop_assert!(!clean.chars().any(|c| hidden(c) && c != '\n' && c != '\t'));
        }
    }
}

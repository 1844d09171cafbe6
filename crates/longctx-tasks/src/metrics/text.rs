//! Python's notions of whitespace, word characters and decimal digits, which the official
//! metrics rely on through `str.split()`, `\b`, `\w` and `\d`.

/// `str.isspace()`: Unicode whitespace plus the ASCII separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.split()` with no argument.
pub fn py_split_whitespace(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

/// `\w` of Python's `re` on str patterns: alphanumeric or underscore.
pub fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `\d` of Python's `re` on str patterns: a Unicode decimal digit (category Nd).
pub fn is_py_decimal(c: char) -> bool {
    c.is_ascii_digit() || is_nd(c)
}

/// Non-ASCII decimal digits (category Nd) come in blocks of ten; these are the blocks of the
/// scripts real text uses (Arabic, Indic, Southeast Asian, fullwidth, …). `char::is_numeric`
/// cannot serve: it also admits numerals such as Ⅻ or ², which Python's `\d` rejects.
fn is_nd(c: char) -> bool {
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10,
    ];
    let u = c as u32;
    ZEROS.iter().any(|&z| (z..z + 10).contains(&u))
}

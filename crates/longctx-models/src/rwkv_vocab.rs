//! The RWKV "world" vocabulary as llama.cpp reads it from GGUF (`tokenizer.ggml.model =
//! rwkv`): tokens are byte strings written with Python's escapes (`\n`, `\xff`, ...), and text
//! is tokenized greedily, the longest token that starts at each position.

use std::collections::HashMap;

/// A world vocabulary: each token's bytes, and the longest-match lookup over them.
pub(crate) struct RwkvVocab {
    /// Each id's bytes.
    pieces: Vec<Vec<u8>>,
    /// Bytes → id, for every token.
    ids: HashMap<Vec<u8>, u32>,
    /// The longest token, in bytes (the most a match can take).
    longest: usize,
    /// Ids of control tokens (`<s>`), dropped when decoding skips special tokens.
    control: Vec<bool>,
}

/// A token's bytes from its escaped text, as llama.cpp's `llama_unescape_rwkv_token` reads
/// it: `\t`, `\n`, `\r`, `\xHH` (lowercase hex) and `\c` for any other `c`.
fn unescape(escaped: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.bytes();
    let hex = |c: u8| match c {
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'0'),
    };
    while let Some(c) = bytes.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let high = bytes.next().map_or(0, hex);
                let low = bytes.next().map_or(0, hex);
                out.push((high << 4).wrapping_add(low));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

impl RwkvVocab {
    /// From GGUF's token texts and types (3 = control).
    pub(crate) fn new(tokens: &[&str], types: &[i128]) -> Self {
        let pieces: Vec<Vec<u8>> = tokens.iter().map(|t| unescape(t)).collect();
        let mut ids = HashMap::with_capacity(pieces.len());
        // The first id wins where two tokens share bytes, as llama.cpp's trie keeps it.
        for (id, piece) in pieces.iter().enumerate().rev() {
            ids.insert(piece.clone(), id as u32);
        }
        Self {
            longest: pieces.iter().map(Vec::len).max().unwrap_or(0),
            control: (0..pieces.len())
                .map(|i| types.get(i) == Some(&3))
                .collect(),
            pieces,
            ids,
        }
    }

    /// Ids of `text`: at each position the longest token that starts there; a byte no token
    /// starts with is skipped (llama.cpp emits its unknown token, which this vocabulary lacks).
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let most = self.longest.min(bytes.len() - at);
            match (1..=most)
                .rev()
                .find_map(|n| self.ids.get(&bytes[at..at + n]).map(|&id| (id, n)))
            {
                Some((id, n)) => {
                    out.push(id);
                    at += n;
                }
                None => at += 1,
            }
        }
        out
    }

    /// Text of `ids` (invalid UTF-8 replaced); control tokens dropped when `skip_special`.
    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| {
                let id = id as usize;
                (!(skip_special && self.control.get(id) == Some(&true)))
                    .then(|| self.pieces.get(id))
                    .flatten()
            })
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a token's exact bytes.
    pub(crate) fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token.as_bytes()).copied()
    }

    /// A token's text (its bytes, invalid UTF-8 replaced).
    pub(crate) fn piece(&self, id: u32) -> Option<String> {
        self.pieces
            .get(id as usize)
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_read_as_llama_cpp_reads_them() {
        assert_eq!(unescape(r"a\nb\t\r"), b"a\nb\t\r");
        assert_eq!(unescape(r"\xff\x0a"), [0xff, 0x0a]);
        assert_eq!(unescape(r"\\\'"), b"\\'");
    }

    #[test]
    fn text_is_split_into_the_longest_tokens() {
        let tokens = ["<s>", "t", "h", "e", " ", "th", "the", " the", r"\n"];
        let vocab = RwkvVocab::new(&tokens, &[3, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(vocab.encode("the the\nx"), vec![6, 7, 8]);
        assert_eq!(vocab.decode(&[0, 6, 7, 8], true), "the the\n");
        assert_eq!(vocab.decode(&[0, 5], false), "<s>th");
        assert_eq!(vocab.id(" the"), Some(7));
    }
}

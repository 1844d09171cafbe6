//! SentencePiece vocabularies read from GGUF (`tokenizer.ggml.model = llama`), tokenized as
//! llama.cpp does (`llm_tokenizer_spm_session` in `llama-vocab.cpp`): text split around the
//! special pieces (control and user-defined, longest first), spaces written as `▁`, then
//! adjacent symbols merged pair by pair, the pair whose merge is the highest-scored piece
//! first (the leftmost among equals), and what forms no piece written as byte pieces.
//! That is SentencePiece's BPE encoding; a unigram search over the same scores (how
//! transformers reads these files) splits many words differently.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF token types.
const CONTROL: i128 = 3;
const USER_DEFINED: i128 = 4;
const BYTE: i128 = 6;

/// A SentencePiece vocabulary.
pub struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i128>,
    ids: HashMap<String, u32>,
    /// Control and user-defined pieces, longest first: matched whole in text.
    specials: Vec<(String, u32)>,
    /// The `<0xXX>` piece of each byte.
    bytes: [Option<u32>; 256],
}

/// A run of text being merged: its bytes in the escaped text and its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The higher score first, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl SentencePiece {
    /// From GGUF's `tokenizer.ggml.tokens`, `.scores` and `.token_type` (of equal lengths).
    pub fn new(pieces: Vec<String>, scores: Vec<f32>, types: Vec<i128>) -> Self {
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut bytes = [None; 256];
        for (i, piece) in pieces.iter().enumerate() {
            ids.insert(piece.clone(), i as u32);
            if types.get(i) == Some(&BYTE) {
                if let Some(b) = byte_of(piece) {
                    bytes[b as usize] = Some(i as u32);
                }
            }
        }
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !p.is_empty() && matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED))
            })
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Self {
            pieces,
            scores,
            types,
            ids,
            specials,
            bytes,
        }
    }

    /// The id of a piece.
    pub fn id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The piece of an id.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// Token ids of `text` (no BOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for fragment in self.fragments(text) {
            match fragment {
                Fragment::Piece(id) => out.push(id),
                Fragment::Text(t) => self.merge(&t.replace(' ', "\u{2581}"), &mut out),
            }
        }
        out
    }

    /// Text of `ids`: `▁` as spaces, byte pieces as bytes; control pieces dropped when
    /// `skip_control` is set.
    pub fn decode(&self, ids: &[u32], skip_control: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(piece) = self.piece(id) else {
                continue;
            };
            match self.types.get(id as usize) {
                Some(&CONTROL) if skip_control => {}
                Some(&BYTE) => bytes.extend(byte_of(piece)),
                _ => bytes.extend(piece.replace('\u{2581}', " ").as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `text` split around the special pieces, the longest matched first.
    fn fragments<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (special, id) in &self.specials {
            if !text.contains(special.as_str()) {
                continue;
            }
            fragments = fragments
                .into_iter()
                .flat_map(|f| match f {
                    Fragment::Text(t) if t.contains(special.as_str()) => {
                        let mut parts = Vec::new();
                        let mut rest = t;
                        while let Some(at) = rest.find(special.as_str()) {
                            if at > 0 {
                                parts.push(Fragment::Text(&rest[..at]));
                            }
                            parts.push(Fragment::Piece(*id));
                            rest = &rest[at + special.len()..];
                        }
                        if !rest.is_empty() {
                            parts.push(Fragment::Text(rest));
                        }
                        parts
                    }
                    other => vec![other],
                })
                .collect();
        }
        fragments
    }

    /// llama.cpp's SPM session on escaped text.
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: (start + c.len_utf8() < text.len()).then_some(index + 1),
            });
        }
        let mut queue = BinaryHeap::new();
        let try_add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       left: Option<usize>,
                       right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else {
                return;
            };
            let (l, r) = (symbols[left], symbols[right]);
            let merged = &text[l.start..r.start + r.len];
            if let Some(&id) = self.ids.get(merged) {
                queue.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left,
                    right,
                    len: merged.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right.next;
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            try_add(&symbols, &mut queue, left.prev, Some(bigram.left));
            try_add(&symbols, &mut queue, Some(bigram.left), right.next);
        }
        // Every merge formed a piece; a symbol left alone that is no piece (a character
        // outside the vocabulary) is written as its bytes' pieces (llama.cpp's resegment).
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let piece = &text[symbols[i].start..symbols[i].start + symbols[i].len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.bytes[b as usize].or(self.id("<unk>"))),
                ),
            }
            at = symbols[i].next;
        }
    }
}

/// The byte a `<0xXX>` piece stands for.
fn byte_of(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// A piece of text between special pieces, or a special piece.
enum Fragment<'t> {
    Text(&'t str),
    Piece(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SentencePiece {
        let pieces = [
            ("<unk>", 0.0, 2),
            ("<ctl>", 0.0, CONTROL),
            ("\n", 0.0, USER_DEFINED),
            ("<0x41>", 0.0, BYTE),
            ("<0xC3>", 0.0, BYTE),
            ("<0xA9>", 0.0, BYTE),
            ("\u{2581}", -1.0, 1),
            ("a", -2.0, 1),
            ("b", -3.0, 1),
            ("c", -4.0, 1),
            ("ab", -5.0, 1),
            ("bc", -1.5, 1),
            ("abc", -6.0, 1),
            ("\u{2581}a", -7.0, 1),
        ];
        SentencePiece::new(
            pieces.iter().map(|p| p.0.to_string()).collect(),
            pieces.iter().map(|p| p.1).collect(),
            pieces.iter().map(|p| p.2).collect(),
        )
    }

    /// "abc": "bc" (score -1.5) merges before "ab" (-5), then "a"+"bc" forms "abc".
    #[test]
    fn the_best_scored_merge_goes_first() {
        let v = vocab();
        assert_eq!(v.encode("abc"), vec![12]);
        assert_eq!(v.encode("ab"), vec![10]);
        // A space becomes ▁, which merges with the following "a".
        assert_eq!(v.encode(" a"), vec![13]);
    }

    /// Special pieces are matched whole; characters without a piece fall back to bytes.
    #[test]
    fn specials_split_the_text_and_unknown_characters_become_bytes() {
        let v = vocab();
        assert_eq!(v.encode("a<ctl>b\nA"), vec![7, 1, 8, 2, 3]);
        assert_eq!(v.encode("é"), vec![4, 5]);
        assert_eq!(v.decode(&[4, 5, 6, 7], false), "é a");
        assert_eq!(v.decode(&[1, 7], true), "a");
    }
}

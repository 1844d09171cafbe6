//! A task's prompt with the place where its long context ends, so that a runner can feed
//! the context first and the question after it (kvpress's query-agnostic protocol) as well
//! as the whole prompt at once (the paper's).

/// A prompt's text and where its question part begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The whole prompt.
    pub text: String,
    /// Byte offset where the long context (and whatever precedes it) ends and the question
    /// (with the instructions that follow the context) begins.
    pub question_at: usize,
}

impl Prompt {
    /// The prompt `context_part` followed by `question_part`.
    pub fn new(mut context_part: String, question_part: &str) -> Self {
        let question_at = context_part.len();
        context_part.push_str(question_part);
        Self {
            text: context_part,
            question_at,
        }
    }

    /// The part that comes after the context.
    pub fn question(&self) -> &str {
        &self.text[self.question_at..]
    }
}

/// `template` with `{name}` placeholders filled, in one pass (a value is never re-read).
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        }) {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A prompt from a template whose `{context}` ends the context part: the text before and
/// including the context, then the rest.
pub(crate) fn from_template(template: &str, values: &[(&str, &str)]) -> Prompt {
    let at = template
        .find("{context}")
        .map_or(template.len(), |i| i + "{context}".len());
    Prompt::new(
        fill(&template[..at], values),
        &fill(&template[at..], values),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_each_placeholder_once() {
        let p = from_template(
            "A {x}\n{context}\nQ {x}?",
            &[("x", "{context}"), ("context", "C")],
        );
        assert_eq!(p.text, "A {context}\nC\nQ {context}?");
        assert_eq!(p.question(), "\nQ {context}?");
    }
}

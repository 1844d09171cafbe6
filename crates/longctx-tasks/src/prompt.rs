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

//! The model's own chat template (Jinja, as shipped with the weights), rendered with minijinja.

use minijinja::{context, Environment, Error, ErrorKind};

use crate::{ModelError, Result};

/// A chat template ready to wrap a single user turn.
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Wrap the template text. It is parsed on use, so a broken template fails only the
    /// prompts that need it (and names itself then): `--no-chat` still runs the model.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        Self {
            source,
            bos_token,
            eos_token,
        }
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        Ok(env)
    }

    /// The prompt for one user message, ending where the assistant's answer begins.
    pub fn user_prompt(&self, message: &str) -> Result<String> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => vec![context! { role => "user", content => message }],
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template() {
        let src = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src.into(), String::new(), String::new());
        assert_eq!(
            t.user_prompt(" hi ").unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_broken_template_is_an_error_when_used() {
        let t = ChatTemplate::new("{% for %}".into(), String::new(), String::new());
        assert!(t.user_prompt("hi").is_err());
    }
}

//! `longctx`: the command-line workbench.

use clap::Parser;
use longctx::commands;

fn main() {
    // Die quietly when the reader of our output goes away (`longctx tasks | head`), as
    // command-line tools do, instead of panicking on a failed print.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            // clap's message up to its usage block, on one line: the problem and what it
            // names (the missing arguments are listed on the lines after the first).
            let rendered = err.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            let message = match message.join(" ") {
                m if m.is_empty() => "invalid command line".to_string(),
                m => m,
            };
            eprintln!("{message} (see --help)");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LONGCTX_LOG")
                .unwrap_or_else(|_| "longctx=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    if let Err(err) = commands::run(cli) {
        // One line: the chain of causes, outermost first.
        // Causes whose text the message already quotes are not repeated.
        let mut line = String::new();
        for cause in err.chain().map(|e| e.to_string()) {
            if !line.contains(&cause) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&cause);
            }
        }
        eprintln!("error: {line}");
        std::process::exit(1);
    }
}

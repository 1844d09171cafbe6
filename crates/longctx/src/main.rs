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
            // clap's first line names the problem; its usage block follows on --help.
            let rendered = err.render().to_string();
            eprintln!(
                "{} (see --help)",
                rendered.lines().next().unwrap_or("invalid command line")
            );
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

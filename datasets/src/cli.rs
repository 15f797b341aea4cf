//! What every command of the project does with an error: print it with its context on one line
//! and exit with status 2 (ripgrep's convention).

use std::process::ExitCode;

pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A progress bar on stderr; hidden automatically when stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{per_sec}}"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar
}

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
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{per_sec}} {{msg}}"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar
}

/// Cores this process may use: the default for every "0 = one per core" thread setting.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `n`, or one per core when `n` is 0.
pub fn threads_or_cores(n: usize) -> usize {
    if n == 0 { cores() } else { n }
}

//! What every command of the project shares: errors printed on one line (made safe for a
//! terminal) with exit status 2 (ripgrep's convention), progress bars, thread counts, and the
//! parsers that check each numeric flag's real range.

use std::process::ExitCode;

pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::text::sanitize(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// The parser of a flag whose values are a `Choice`: its names are clap's possible values,
/// listed in `--help` with their help.
pub fn choice<T: crate::choice::Choice>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = T::CHOICES.iter().map(|&(_, name, help)| match help {
        "" => PossibleValue::new(name),
        help => PossibleValue::new(name).help(help),
    });
    PossibleValuesParser::new(values)
        .map(|name| T::from_name(&name).expect("clap accepts only the listed names"))
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

/// Most threads any thread setting accepts (a typo like 10000 would exhaust the process).
pub const MAX_THREADS: usize = 1024;

/// A flag parser for an integer in `LO..=HI`.
pub fn int_in<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if (LO..=HI).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range [{LO}, {HI}]"))
    }
}

/// A finite number in `[lo, hi]` (`(lo, hi]` when `lo_open`).
pub fn float_in(s: &str, lo: f64, hi: f64, lo_open: bool) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    let low_ok = if lo_open { v > lo } else { v >= lo };
    if v.is_finite() && low_ok && v <= hi {
        Ok(v)
    } else {
        let open = if lo_open { "(" } else { "[" };
        Err(format!("{v} is out of range {open}{lo}, {hi}]"))
    }
}

/// A probability threshold: a finite number in [0, 1].
pub fn probability(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, 1.0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_flags_refuse_what_is_out_of_range() {
        assert_eq!(probability("0.25"), Ok(0.25));
        for bad in ["nan", "NaN", "inf", "-0.1", "5", "1.0001", "x", ""] {
            assert!(probability(bad).is_err(), "{bad}");
        }
        assert_eq!(int_in::<1, 10>("10"), Ok(10));
        for bad in ["0", "11", "-1", "1.5", "99999999999999999999999"] {
            assert!(int_in::<1, 10>(bad).is_err(), "{bad}");
        }
        assert!(float_in("0", 0.0, 4.0, true).is_err());
        assert_eq!(float_in("4", 0.0, 4.0, true), Ok(4.0));
    }
}

//! A library's enum offered as a command's choices: each value named (and explained) once beside
//! the enum, without the library deriving clap's `ValueEnum`; `cli::choice` turns it into a flag's
//! parser, with the names as clap's possible values and their help in `--help`.

/// An enum whose values have names on the command line.
pub trait Choice: Copy + PartialEq + Send + Sync + 'static {
    /// Each value, its name, and a line of help ("" for none).
    const CHOICES: &'static [(Self, &'static str, &'static str)];

    /// The value's name.
    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|c| c.0 == self)
            .map(|c| c.1)
            .expect("CHOICES lists every value")
    }

    /// The value named `name`.
    fn from_name(name: &str) -> Option<Self> {
        Self::CHOICES.iter().find(|c| c.1 == name).map(|c| c.0)
    }
}

/// `Display` as the value's name (what clap's `default_value_t` shows in `--help`).
#[macro_export]
macro_rules! display_as_choice {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Colour {
        Red,
        DarkBlue,
    }

    impl Choice for Colour {
        const CHOICES: &'static [(Colour, &'static str, &'static str)] = &[
            (Colour::Red, "red", ""),
            (Colour::DarkBlue, "dark-blue", "Darker"),
        ];
    }

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long, value_parser = crate::cli::choice::<Colour>())]
        colour: Colour,
    }

    #[test]
    fn names_parse_back_and_others_are_refused_with_the_list() {
        for &(value, name, _) in Colour::CHOICES {
            assert_eq!((value.name(), Colour::from_name(name)), (name, Some(value)));
            let args = Args::try_parse_from(["x", "--colour", name]).unwrap();
            assert_eq!(args.colour, value);
        }
        assert_eq!(Colour::from_name("Red"), None);
        let err = Args::try_parse_from(["x", "--colour", "green"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[possible values: red, dark-blue]"), "{err}");
    }
}

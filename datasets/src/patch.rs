//! The Kaggle file-name convention: `<patient>_idx5_x<X>_y<Y>_class<C>.png`.

use std::fmt;

/// A class label: 0 = no IDC, 1 = IDC (the positive class).
pub type Label = u8;

/// What a patch's file name says about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatchName {
    pub patient: String,
    pub x: u32,
    pub y: u32,
    pub class: Label,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("file name \"{}\" is not <patient>_idx5_x<X>_y<Y>_class<0|1>.png: {why}", common::text::escape_bytes(.name.as_bytes()))]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

impl PatchName {
    /// Parses a file name (not a path). The extension may be png, jpg or jpeg, any case.
    pub fn parse(file_name: &str) -> Result<Self, NameError> {
        let err = |why| NameError {
            name: file_name.to_string(),
            why,
        };
        let (stem, ext) = file_name
            .rsplit_once('.')
            .ok_or_else(|| err("no extension"))?;
        if !is_image_extension(ext) {
            return Err(err("not a .png/.jpg file"));
        }
        let mut parts = stem.split('_');
        let patient = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| err("no patient id"))?;
        // Patient ids name heatmap files and report rows: letters, digits and '-' only.
        if !patient
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err("the patient id may hold only letters, digits and '-'"));
        }
        if parts.next() != Some("idx5") {
            return Err(err("missing _idx5_"));
        }
        let x = number(parts.next(), "x").ok_or_else(|| err("bad x<X>"))?;
        let y = number(parts.next(), "y").ok_or_else(|| err("bad y<Y>"))?;
        let class = match parts.next() {
            Some("class0") => 0,
            Some("class1") => 1,
            _ => return Err(err("bad class<C>, expected class0 or class1")),
        };
        if parts.next().is_some() {
            return Err(err("trailing text after class<C>"));
        }
        Ok(PatchName {
            patient: patient.to_string(),
            x,
            y,
            class,
        })
    }
}

impl fmt::Display for PatchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_idx5_x{}_y{}_class{}.png",
            self.patient, self.x, self.y, self.class
        )
    }
}

fn number(part: Option<&str>, prefix: &str) -> Option<u32> {
    let digits = part?.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File extensions treated as images.
pub fn is_image_extension(ext: &str) -> bool {
    matches!(ext.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kaggle_names() {
        let p = PatchName::parse("8916_idx5_x1001_y101_class1.png").unwrap();
        assert_eq!(
            p,
            PatchName {
                patient: "8916".into(),
                x: 1001,
                y: 101,
                class: 1
            }
        );
        assert_eq!(p.to_string(), "8916_idx5_x1001_y101_class1.png");
        assert_eq!(
            PatchName::parse("10253_idx5_x51_y2951_class0.PNG")
                .unwrap()
                .class,
            0
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "8916_idx5_x1001_y101_class2.png",
            "8916_idx5_x1001_y101.png",
            "8916_idx4_x1001_y101_class1.png",
            "8916_idx5_xA_y101_class1.png",
            "8916_idx5_x-1_y101_class1.png",
            "_idx5_x1_y1_class1.png",
            "8916_idx5_x1_y1_class1_copy.png",
            "8916_idx5_x1_y1_class1.txt",
            "README",
            "\u{1b}[2J_idx5_x1_y1_class1.png",
            "../x_idx5_x1_y1_class1.png",
            "8916_idx5_x4294967296_y1_class1.png",
            "8916_idx5_x+5_y1_class1.png",
            "8916_idx5_x_y1_class1.png",
        ] {
            assert!(PatchName::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    use proptest::prelude::*;

    fn valid_name() -> impl Strategy<Value = PatchName> {
        ("[A-Za-z0-9-]{1,12}", any::<u32>(), any::<u32>(), 0u8..2).prop_map(
            |(patient, x, y, class)| PatchName {
                patient,
                x,
                y,
                class,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text, however hostile, is a name or an error: never a panic.
        #[test]
        fn arbitrary_names_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = PatchName::parse(&text);
        }

        /// Names near the grammar: mutated valid names parse or fail, never panic.
        #[test]
        fn near_names_never_panic(s in "[0-9a-z_-]{0,6}_idx5_x[0-9]{0,12}_y[0-9A]{0,12}_class[0-3]\\.(png|PNG|jpg|txt)") {
            let _ = PatchName::parse(&s);
        }

        /// A valid name round-trips through its file name, whatever the extension's case.
        #[test]
        fn valid_names_round_trip(name in valid_name(), upper in any::<bool>()) {
            let file = name.to_string();
            prop_assert_eq!(PatchName::parse(&file).unwrap(), name.clone());
            let file = if upper { file.replace(".png", ".PNG") } else { file };
            prop_assert_eq!(PatchName::parse(&file).unwrap(), name);
        }
    }
}

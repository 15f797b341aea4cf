#![forbid(unsafe_code)]
//! What every command of the project shares, like ripgrep's grep-cli: errors mapped to exit codes
//! and progress bars (`cli`), text from outside shown safely (`text`), atomic writes (`fsutil`),
//! PNG encoding (`png`).

pub mod cli;
pub mod fsutil;
pub mod png;
pub mod text;

pub use text::Shown;

#![forbid(unsafe_code)]
//! What every command of the project shares, like ripgrep's grep-cli: errors mapped to exit codes
//! and progress bars (`cli`), enums as a command's choices (`choice`), text from outside shown safely (`text`), atomic writes (`fsutil`),
//! PNG encoding (`png`).

pub mod choice;
pub mod cli;
pub mod fsutil;
pub mod png;
pub mod text;

pub use text::Shown;

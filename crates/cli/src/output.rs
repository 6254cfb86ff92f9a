//! Writing to stdout without dying when the reader has gone (`ferry put --json | head -1`).

use std::io::Write;

/// Prints one line; a closed pipe is not an error worth a panic, so failures are ignored.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

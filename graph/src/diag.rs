//! Diagnostics for pipeline files: a problem at a byte span, turned into the 1-based
//! `FILE:LINE:COL: error: MESSAGE` form that `alignflow check` prints. The checker collects
//! every problem of a file in one pass, so this type is a plain value, not an error chain.

use std::fmt;
use std::ops::Range;

/// One problem in a pipeline file. `line` and `col` are 1-based; `col` counts characters
/// (not bytes) from the start of the line, so non-ASCII text before a value does not shift it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    /// Renders the diagnostic as `FILE:LINE:COL: error: MESSAGE`.
    pub fn render(&self, file: &str) -> String {
        format!("{file}:{}:{}: error: {}", self.line, self.col, self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: error: {}", self.line, self.col, self.message)
    }
}

/// Maps byte offsets of one source text to (line, column), both 1-based.
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the first character of every line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// (line, col) of byte offset `at`; offsets past the end clamp to the end of the text.
    pub fn position(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= at) - 1;
        let col = self.text[self.starts[line]..at].chars().count() + 1;
        (line + 1, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn diag(&self, span: &Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic { line, col, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let ix = LineIndex::new("ab\nçd = 1\n");
        assert_eq!(ix.position(0), (1, 1));
        assert_eq!(ix.position(1), (1, 2));
        assert_eq!(ix.position(3), (2, 1));
        // 'ç' is two bytes: the 'd' at byte 5 is the second character.
        assert_eq!(ix.position(5), (2, 2));
        assert_eq!(ix.position(1000), (3, 1));
    }
}

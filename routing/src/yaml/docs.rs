//! Splitting a YAML stream into documents, keeping file line numbers.
//!
//! Linear in the input: each document borrows its slice of the file and carries the number of
//! lines before it, which error messages add back ([`RawDoc::line_offset`]). (Padding each
//! document with its preceding lines made a file of N documents cost O(N²) time and memory.)

/// One document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDoc<'a> {
    /// 0-based document index (empty documents count, a comment-only preamble
    /// before the first `---` does not).
    pub index: usize,
    /// The document's own text: a slice of the file.
    pub text: &'a str,
    /// Lines of the file before the document: a parser's line `n` in `text` is file line
    /// `n + line_offset`.
    pub line_offset: usize,
}

fn is_doc_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace()))
}

fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t.starts_with('%')
}

/// Split at `---` marker lines (directive lines `%…` right before a marker go
/// with the following document).
pub(crate) fn split_documents(text: &str) -> Vec<RawDoc<'_>> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Byte offset of the start of each line (and of the end, at `lines.len()`).
    let mut at = Vec::with_capacity(lines.len() + 1);
    let mut offset = 0;
    for l in &lines {
        at.push(offset);
        offset += l.len();
    }
    at.push(offset);
    let mut starts = vec![0usize];
    for (i, line) in lines.iter().enumerate() {
        if is_doc_start(line) && i > 0 {
            let last = *starts.last().unwrap_or(&0);
            let mut s = i;
            while s > last && lines[s - 1].starts_with('%') {
                s -= 1;
            }
            if s > last {
                starts.push(s);
            }
        }
    }
    let has_marker = lines.iter().any(|l| is_doc_start(l));
    let mut docs = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let chunk = &lines[start..end];
        let first_is_preamble = n == 0 && has_marker && !chunk.iter().any(|l| is_doc_start(l));
        if first_is_preamble && chunk.iter().all(|l| is_blank(l)) {
            continue;
        }
        docs.push(RawDoc {
            index: docs.len(),
            text: &text[at[start]..at[end]],
            line_offset: start,
        });
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<(usize, &str)> {
        split_documents(s)
            .into_iter()
            .map(|d| (d.line_offset, d.text))
            .collect()
    }

    #[test]
    fn single_and_multi() {
        assert_eq!(texts("a: 1\n"), vec![(0, "a: 1\n")]);
        assert_eq!(
            texts("a: 1\n---\nb: 2\n"),
            vec![(0, "a: 1\n"), (1, "---\nb: 2\n")]
        );
        assert_eq!(
            texts("---\na: 1\n---\n---\nb: 2"),
            vec![(0, "---\na: 1\n"), (2, "---\n"), (3, "---\nb: 2")]
        );
    }

    #[test]
    fn preamble_not_counted() {
        let d = split_documents("# comment\n\n---\na: 1\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].index, 0);
        assert_eq!(d[0].line_offset, 2);
        assert!(d[0].text.contains("a: 1"));
    }

    #[test]
    fn marker_needs_space_or_eol() {
        assert_eq!(texts("a: ---x\n----\n").len(), 1);
        assert_eq!(texts("a: 1\n--- # c\nb: 2\n").len(), 2);
    }

    #[test]
    fn directives_go_with_next_doc() {
        let t = texts("a: 1\n%YAML 1.2\n---\nb: 2\n");
        assert_eq!(t, vec![(0, "a: 1\n"), (1, "%YAML 1.2\n---\nb: 2\n")]);
    }

    /// The split copies nothing: every document is a slice of the input and together they
    /// hold no more bytes than the input (padding each document with its preceding lines held
    /// O(documents × lines) bytes: 40 000 documents took 948 MB).
    #[test]
    fn documents_borrow_the_input_and_hold_no_more_than_it() {
        let doc = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s\n";
        let n = 20_000;
        let input = format!("---\n{doc}").repeat(n);
        let docs = split_documents(&input);
        assert_eq!(docs.len(), n);
        let range = input.as_bytes().as_ptr_range();
        let mut held = 0;
        for (i, d) in docs.iter().enumerate() {
            let r = d.text.as_bytes().as_ptr_range();
            assert!(
                range.start <= r.start && r.end <= range.end,
                "document {i} is a copy, not a slice of the file"
            );
            assert_eq!(d.line_offset, i * 5, "document {i}");
            held += d.text.len();
        }
        assert_eq!(held, input.len());
    }
}

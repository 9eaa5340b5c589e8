//! Splitting a YAML stream into documents, keeping file line numbers.

/// One document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDoc {
    /// 0-based document index (empty documents count, a comment-only preamble
    /// before the first `---` does not).
    pub index: usize,
    /// The document text, preceded by as many empty lines as come before it in
    /// the file, so parser line numbers are file line numbers.
    pub text: String,
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
pub(crate) fn split_documents(text: &str) -> Vec<RawDoc> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
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
        let mut t = "\n".repeat(start);
        for l in chunk {
            t.push_str(l);
        }
        docs.push(RawDoc {
            index: docs.len(),
            text: t,
        });
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        split_documents(s).into_iter().map(|d| d.text).collect()
    }

    #[test]
    fn single_and_multi() {
        assert_eq!(texts("a: 1\n"), vec!["a: 1\n"]);
        assert_eq!(texts("a: 1\n---\nb: 2\n"), vec!["a: 1\n", "\n---\nb: 2\n"]);
        assert_eq!(
            texts("---\na: 1\n---\n---\nb: 2"),
            vec!["---\na: 1\n", "\n\n---\n", "\n\n\n---\nb: 2"]
        );
    }

    #[test]
    fn preamble_not_counted() {
        let d = split_documents("# comment\n\n---\na: 1\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].index, 0);
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
        assert_eq!(t, vec!["a: 1\n", "\n%YAML 1.2\n---\nb: 2\n"]);
    }
}

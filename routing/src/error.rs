//! Load errors that name file, document, object and field.

use std::fmt;

/// Where in the configuration something was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocRef {
    pub file: String,
    /// 0-based index of the YAML document in the file (empty documents count).
    pub doc: Option<usize>,
    pub kind: Option<String>,
    /// `"namespace/name"`
    pub name: Option<String>,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(d) = self.doc {
            write!(f, " doc {d}")?;
        }
        if let Some(k) = &self.kind {
            write!(f, " {k}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

/// One configuration error: `<file> doc <n> <Kind> <ns>/<name>: <field>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub at: DocRef,
    /// Dotted field path, e.g. `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.at, field, self.message),
            None => write!(f, "{}: {}", self.at, self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// One configuration warning, with the same parts as a [`LoadError`]. It
/// displays as `<file> doc <n> <Kind> <ns>/<name>: <field>: <message>`, or
/// `…: <field> <message>` when the message is a sentence about the field
/// (`spec.tls is not supported yet; ignored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    pub at: DocRef,
    /// Dotted field path, e.g. `spec.http[0].timeout`.
    pub field: Option<String>,
    pub message: String,
    /// The field is the subject of `message` (`<field> <message>`).
    pub subject: bool,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.file.is_empty() {
            // Not from a document (the snapshot builder's own warnings).
            return f.write_str(&self.message);
        }
        match (&self.field, self.subject) {
            (Some(field), true) => write!(f, "{}: {} {}", self.at, field, self.message),
            (Some(field), false) => write!(f, "{}: {}: {}", self.at, field, self.message),
            (None, _) => write!(f, "{}: {}", self.at, self.message),
        }
    }
}

/// All errors of one load; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    pub fn iter(&self) -> impl Iterator<Item = &LoadError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let at = DocRef {
            file: "a.yaml".into(),
            doc: Some(2),
            kind: Some("VirtualService".into()),
            name: Some("default/reviews".into()),
        };
        let e = LoadError {
            at: at.clone(),
            field: Some("spec.hosts".into()),
            message: "missing".into(),
        };
        assert_eq!(
            e.to_string(),
            "a.yaml doc 2 VirtualService default/reviews: spec.hosts: missing"
        );
        let e2 = LoadError {
            at: DocRef {
                file: "b.yaml".into(),
                ..Default::default()
            },
            field: None,
            message: "x".into(),
        };
        assert_eq!(LoadErrors(vec![e, e2]).to_string().lines().count(), 2);
    }
}

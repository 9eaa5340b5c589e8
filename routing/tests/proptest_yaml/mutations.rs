//! Mutations of rendered YAML.

use super::*;

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

pub(crate) const GARBAGE: [&str; 24] = [
    "",
    "~",
    "[",
    "{a: b",
    "-1",
    "0",
    "99999999999999999999",
    "1e400",
    ".nan",
    "0x10",
    "true",
    "'unterminated",
    "\"\\u0000\"",
    "*anchor",
    "&a [*a]",
    "!!binary aGk=",
    "::",
    "\t",
    "ä/€",
    "\u{202e}x",
    "[1, {2: 3}]",
    "- - -",
    "? complex\n: key",
    "|\n  block",
];

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Truncate(Index),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapChars(Index),
    ReplaceValue(Index, usize),
    Indent(Index, bool),
    Insert(Index, String),
}

pub(crate) fn mutation_g() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => any::<Index>().prop_map(Mutation::SwapChars),
        3 => (any::<Index>(), 0..GARBAGE.len()).prop_map(|(i, g)| Mutation::ReplaceValue(i, g)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, b)| Mutation::Indent(i, b)),
        1 => (any::<Index>(), "[ -~\n]{0,8}").prop_map(|(i, s)| Mutation::Insert(i, s)),
    ]
}

pub(crate) fn char_boundary(t: &str, i: &Index) -> usize {
    if t.is_empty() {
        return 0;
    }
    let mut at = i.index(t.len() + 1);
    while !t.is_char_boundary(at) {
        at -= 1;
    }
    at
}

pub(crate) fn mutate(t: &str, m: &Mutation) -> String {
    let lines: Vec<&str> = t.split_inclusive('\n').collect();
    let line_at = |i: &Index| {
        if lines.is_empty() {
            None
        } else {
            Some(i.index(lines.len()))
        }
    };
    match m {
        Mutation::Truncate(i) => t[..char_boundary(t, i)].to_string(),
        Mutation::DeleteLine(i) => match line_at(i) {
            Some(k) => lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, l)| *l)
                .collect(),
            None => t.to_string(),
        },
        Mutation::DuplicateLine(i) => match line_at(i) {
            Some(k) => {
                let mut v = lines.clone();
                v.insert(k, lines[k]);
                v.concat()
            }
            None => t.to_string(),
        },
        Mutation::SwapChars(i) => {
            let chars: Vec<char> = t.chars().collect();
            if chars.len() < 2 {
                return t.to_string();
            }
            let k = i.index(chars.len() - 1);
            let mut c = chars;
            c.swap(k, k + 1);
            c.into_iter().collect()
        }
        Mutation::ReplaceValue(i, g) => {
            // the value after the k-th ": " (or the k-th "- ")
            let spots: Vec<usize> = t
                .match_indices(": ")
                .map(|(p, _)| p + 2)
                .chain(t.match_indices("- ").map(|(p, _)| p + 2))
                .collect();
            if spots.is_empty() {
                return format!("{t}{}", GARBAGE[*g]);
            }
            let start = spots[i.index(spots.len())];
            let end = t[start..]
                .find(['\n', ',', '}', ']'])
                .map_or(t.len(), |e| start + e);
            format!("{}{}{}", &t[..start], GARBAGE[*g], &t[end..])
        }
        Mutation::Indent(i, more) => match line_at(i) {
            Some(k) => {
                let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                if *more {
                    v[k].insert(0, ' ');
                } else if v[k].starts_with(' ') {
                    v[k].remove(0);
                } else {
                    v[k].insert_str(0, "  - ");
                }
                v.concat()
            }
            None => t.to_string(),
        },
        Mutation::Insert(i, s) => {
            let at = char_boundary(t, i);
            format!("{}{s}{}", &t[..at], &t[at..])
        }
    }
}

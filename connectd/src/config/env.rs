//! `${VAR}` and `${VAR:-default}` expansion, done on the text before YAML parsing.
//!
//! Lines whose first non-blank character is `#` (comments) are left alone, so a commented-out
//! setting never demands a variable. `$$` stands for a literal `$`.

/// A variable that is referenced, unset and has no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVar {
    /// Variable name.
    pub name: String,
    /// 1-based line of the reference.
    pub line: usize,
}

/// A malformed reference (`${` without `}`, or a bad name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReference {
    /// What was found.
    pub text: String,
    /// 1-based line.
    pub line: usize,
}

/// Problems found while expanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    /// See [`UnsetVar`].
    Unset(UnsetVar),
    /// See [`BadReference`].
    Bad(BadReference),
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands references in `text` with `lookup`; returns the new text or every problem found.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<EnvProblem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                continue;
            }
            let Some(inner_start) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(close) = inner_start.find('}') else {
                problems.push(EnvProblem::Bad(BadReference {
                    text: format!("${{{}", inner_start.trim_end()),
                    line: line_no,
                }));
                rest = "";
                break;
            };
            let inner = &inner_start[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                problems.push(EnvProblem::Bad(BadReference {
                    text: format!("${{{inner}}}"),
                    line: line_no,
                }));
            } else {
                match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => problems.push(EnvProblem::Unset(UnsetVar {
                        name: name.to_string(),
                        line: line_no,
                    })),
                }
            }
            rest = &inner_start[close + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_literal() {
        let t = "a: ${HOST}:${PORT:-5432}\nb: $$HOME ${EMPTY:-x} $notref\n";
        assert_eq!(
            expand(t, env).as_deref(),
            Ok("a: db:5432\nb: $HOME  $notref\n")
        );
    }

    #[test]
    fn comments_are_not_expanded() {
        assert_eq!(
            expand("  # ${NOPE}\nx: 1", env).as_deref(),
            Ok("  # ${NOPE}\nx: 1")
        );
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let err = expand("a: ${A}\nb: ok\nc: ${C} ${HOST}\n", env).expect_err("unset");
        assert_eq!(
            err,
            vec![
                EnvProblem::Unset(UnsetVar {
                    name: "A".into(),
                    line: 1
                }),
                EnvProblem::Unset(UnsetVar {
                    name: "C".into(),
                    line: 3
                }),
            ]
        );
    }

    #[test]
    fn reports_bad_references() {
        let err = expand("a: ${1X}\nb: ${OPEN\n", env).expect_err("bad");
        assert_eq!(err.len(), 2);
        assert!(matches!(&err[0], EnvProblem::Bad(b) if b.line == 1 && b.text == "${1X}"));
        assert!(matches!(&err[1], EnvProblem::Bad(b) if b.line == 2));
    }
}

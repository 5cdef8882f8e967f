//! SQL identifiers (validated and quoted) and the set-based statements.

use super::mapping::ColumnSpec;

/// True for identifiers we accept from configuration: `[A-Za-z_][A-Za-z0-9_]*`, at most 63.
pub fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// A table name, optionally schema-qualified (`schema.table`), validated.
pub fn valid_table(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| valid_ident(p))
}

/// Quotes a validated identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a validated (optionally schema-qualified) table name.
pub fn quote_table(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// Conflict handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// `ON CONFLICT (...) DO NOTHING`.
    Ignore,
    /// `ON CONFLICT (...) DO UPDATE SET` every other column.
    Update,
    /// Plain `INSERT` (no conflict target).
    None,
}

/// `INSERT INTO t (cols) SELECT casts FROM unnest($1::text[], ...) AS u(...) ON CONFLICT ...`.
pub fn insert_unnest(
    table: &str,
    columns: &[(String, ColumnSpec)],
    keys: &[String],
    conflict: Conflict,
) -> String {
    let names: Vec<String> = columns.iter().map(|(n, _)| quote(n)).collect();
    let params: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("u.c{}::{}", i + 1, c.sql_type.sql()))
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({})",
        quote_table(table),
        names.join(", "),
        casts.join(", "),
        params.join(", "),
        aliases.join(", ")
    );
    let target = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    match conflict {
        Conflict::None => {}
        Conflict::Ignore => sql.push_str(&format!(" ON CONFLICT ({target}) DO NOTHING")),
        Conflict::Update => {
            let sets: Vec<String> = columns
                .iter()
                .filter(|(n, _)| !keys.contains(n))
                .map(|(n, _)| format!("{} = EXCLUDED.{}", quote(n), quote(n)))
                .collect();
            if sets.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({target}) DO NOTHING"));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({target}) DO UPDATE SET {}",
                    sets.join(", ")
                ));
            }
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::super::mapping::SqlType;
    use super::*;

    #[test]
    fn identifiers() {
        assert!(valid_ident("growth_events"));
        assert!(valid_table("public.growth_events"));
        for bad in [
            "x; drop table y",
            "a-b",
            "1a",
            "",
            "a.b.c",
            "\"x\"",
            &"a".repeat(64),
        ] {
            assert!(!valid_table(bad), "{bad:?}");
        }
        assert_eq!(quote_table("s.t"), "\"s\".\"t\"");
    }

    #[test]
    fn statements() {
        let cols = vec![
            (
                "id".to_string(),
                ColumnSpec {
                    from: "/id".into(),
                    sql_type: SqlType::Text,
                    required: true,
                },
            ),
            (
                "n".to_string(),
                ColumnSpec {
                    from: "/n".into(),
                    sql_type: SqlType::Integer,
                    required: true,
                },
            ),
        ];
        let keys = vec!["id".to_string()];
        assert_eq!(
            insert_unnest("t", &cols, &keys, Conflict::Ignore),
            "INSERT INTO \"t\" (\"id\", \"n\") SELECT u.c1::text, u.c2::integer FROM unnest($1::text[], $2::text[]) AS u(c1, c2) ON CONFLICT (\"id\") DO NOTHING"
        );
        assert!(insert_unnest("t", &cols, &keys, Conflict::Update)
            .ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"n\" = EXCLUDED.\"n\""));
        assert!(!insert_unnest("t", &cols, &[], Conflict::None).contains("ON CONFLICT"));
    }
}

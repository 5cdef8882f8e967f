//! The statements of an `aggregate` connector, built once from its configuration.
//! Identifiers are validated before they get here and quoted; values are bound parameters.

use crate::postgres::sql::{quote, quote_table};

use super::partial::Func;

/// The SQL of one connector.
#[derive(Debug, Clone)]
pub struct Statements {
    /// `CREATE TABLE IF NOT EXISTS` of the window table, its open-window index and the
    /// members table, one statement each. The window table leaves 30% of each page free
    /// (`fillfactor = 70`): a merge updates rows in place (HOT) instead of moving them and
    /// touching every index.
    pub create: Vec<String>,
    /// The merge of a batch's partial rows. Parameters: `$1` window starts, `$2` window ends
    /// (timestamptz[]), then one text[] per group column, then one array per aggregate
    /// (bigint[] for counts, text[] of decimals for sum/min/max).
    pub merge: String,
    /// Insert of distinct members, returning how many were new per row and aggregate.
    /// Parameters: `$1` starts, group text[]s, aggregate names, members.
    pub members: Option<String>,
    /// Marks the open rows whose window ended at or before `$1` closed, skipping rows a batch
    /// holds at that moment (a late merge): they are closed on the next pass. It never waits,
    /// so it can never deadlock with a batch.
    pub close: String,
    /// Drops the members of windows that start at or before `$1` (the caller passes the
    /// watermark minus the window size: windows closed, which late events cannot change).
    pub forget_members: Option<String>,
    /// Number of open rows.
    pub open_rows: String,
    /// With an `output` topic: up to `$1` closed rows not published yet (or changed by a late
    /// event since), oldest window first, as `(ctid, key, JSON)`; the key is
    /// `<window_start>/<group values…>`.
    pub unpublished: Option<String>,
    /// With an `output` topic: marks the rows read by `unpublished` (ctids `$1`) published,
    /// unless a late event changed them since (an update gives a row a new ctid); rows a batch
    /// holds are skipped (published again next time), so this never waits on a batch.
    pub mark_published: Option<String>,
}

/// Postgres type of an aggregate column.
pub fn column_type(f: &Func) -> &'static str {
    match f {
        Func::Count | Func::CountDistinct(_) => "bigint",
        Func::Sum(_) | Func::Min(_) | Func::Max(_) => "numeric",
    }
}

fn index_name(table: &str, suffix: &str) -> String {
    let base = table.rsplit('.').next().unwrap_or(table);
    quote(&format!("{base}_{suffix}"))
}

/// Builds the statements. `group` and `aggs` are column names, in order.
pub fn statements(
    table: &str,
    group: &[String],
    aggs: &[(String, Func)],
    output: bool,
) -> Statements {
    let t = quote_table(table);
    let members_t = quote_table(&format!("{table}_members"));
    let g: Vec<String> = group.iter().map(|c| quote(c)).collect();
    let gcols: String = g.iter().map(|c| format!(", {c}")).collect();
    let mut create = vec![format!(
        "CREATE TABLE IF NOT EXISTS {t} (window_start timestamptz NOT NULL, window_end timestamptz NOT NULL{}{}, \
         closed boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (window_start{gcols})) WITH (fillfactor = 70)",
        g.iter().map(|c| format!(", {c} text NOT NULL")).collect::<String>(),
        aggs.iter()
            .map(|(n, f)| format!(", {} {}", quote(n), column_type(f)))
            .collect::<String>(),
    )];
    create.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {t} (window_end) WHERE NOT closed",
        index_name(table, "open")
    ));
    create.push(format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS published boolean NOT NULL DEFAULT false"
    ));
    if output {
        create.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (window_end) WHERE closed AND NOT published",
            index_name(table, "unpublished")
        ));
    }
    let distinct = aggs
        .iter()
        .any(|(_, f)| matches!(f, Func::CountDistinct(_)));
    if distinct {
        create.push(format!(
            "CREATE TABLE IF NOT EXISTS {members_t} (window_start timestamptz NOT NULL{}, \
             aggregate text NOT NULL, member text NOT NULL, PRIMARY KEY (window_start{gcols}, aggregate, member))",
            g.iter().map(|c| format!(", {c} text NOT NULL")).collect::<String>(),
        ));
    }
    let n_group = group.len();
    let mut params = vec!["$1::timestamptz[]".to_string(), "$2::timestamptz[]".into()];
    params.extend((0..n_group).map(|i| format!("${}::text[]", 3 + i)));
    params.extend(aggs.iter().enumerate().map(|(i, (_, f))| {
        let p = 3 + n_group + i;
        match column_type(f) {
            "bigint" => format!("${p}::bigint[]"),
            _ => format!("${p}::text[]::numeric[]"),
        }
    }));
    let names: Vec<String> = aggs.iter().map(|(n, _)| quote(n)).collect();
    let sets: Vec<String> = aggs
        .iter()
        .zip(&names)
        .map(|((_, f), c)| match f {
            Func::Count | Func::CountDistinct(_) => format!("{c} = a.{c} + excluded.{c}"),
            Func::Sum(_) => format!("{c} = coalesce(a.{c} + excluded.{c}, a.{c}, excluded.{c})"),
            Func::Min(_) => format!("{c} = LEAST(a.{c}, excluded.{c})"),
            Func::Max(_) => format!("{c} = GREATEST(a.{c}, excluded.{c})"),
        })
        .chain(std::iter::once("updated_at = now()".to_string()))
        .chain(output.then(|| "published = false".to_string()))
        .collect();
    let merge = format!(
        "INSERT INTO {t} AS a (window_start, window_end{gcols}{}) SELECT * FROM unnest({}) \
         ON CONFLICT (window_start{gcols}) DO UPDATE SET {}",
        names.iter().map(|c| format!(", {c}")).collect::<String>(),
        params.join(", "),
        sets.join(", "),
    );
    let members = distinct.then(|| {
        let mut p = vec!["$1::timestamptz[]".to_string()];
        p.extend((0..n_group).map(|i| format!("${}::text[]", 2 + i)));
        p.push(format!("${}::text[]", 2 + n_group));
        p.push(format!("${}::text[]", 3 + n_group));
        format!(
            "WITH n AS (INSERT INTO {members_t} (window_start{gcols}, aggregate, member) SELECT * FROM unnest({}) \
             ON CONFLICT DO NOTHING RETURNING window_start{gcols}, aggregate) \
             SELECT window_start{gcols}, aggregate, count(*) FROM n GROUP BY window_start{gcols}, aggregate",
            p.join(", ")
        )
    });
    let forget_members =
        distinct.then(|| format!("DELETE FROM {members_t} WHERE window_start <= $1"));
    let json_fields: String = ["window_start", "window_end"]
        .iter()
        .map(|c| format!("'{c}', {c}"))
        .chain(
            group
                .iter()
                .chain(aggs.iter().map(|(n, _)| n))
                .map(|c| format!("'{c}', {}", quote(c))),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let unpublished = output.then(|| {
        format!(
            "SELECT ctid::text, concat_ws('/', to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'){gcols}), \
             json_build_object({json_fields}, 'closed', true)::text \
             FROM {t} WHERE closed AND NOT published ORDER BY window_end LIMIT $1"
        )
    });
    let mark_published = output.then(|| {
        format!(
            "UPDATE {t} SET published = true WHERE ctid IN \
             (SELECT ctid FROM {t} WHERE ctid = ANY($1::text[]::tid[]) FOR UPDATE SKIP LOCKED)"
        )
    });
    Statements {
        unpublished,
        mark_published,
        create,
        merge,
        members,
        close: format!(
            "UPDATE {t} SET closed = true, updated_at = now() WHERE ctid IN \
             (SELECT ctid FROM {t} WHERE NOT closed AND window_end <= $1 FOR UPDATE SKIP LOCKED)"
        ),
        forget_members,
        open_rows: format!("SELECT count(*) FROM {t} WHERE NOT closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_adds_counts_and_keeps_null_aware_sums_mins_and_maxes() {
        let s = statements(
            "app.per_minute",
            &["event_type".into()],
            &[
                ("events".into(), Func::Count),
                ("revenue".into(), Func::Sum("/amount".into())),
                ("cheapest".into(), Func::Min("/amount".into())),
                ("users".into(), Func::CountDistinct("/user_id".into())),
            ],
            true,
        );
        assert!(s.merge.starts_with("INSERT INTO \"app\".\"per_minute\" AS a (window_start, window_end, \"event_type\", \"events\", \"revenue\", \"cheapest\", \"users\") SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::text[], $4::bigint[], $5::text[]::numeric[], $6::text[]::numeric[], $7::bigint[])"), "{}", s.merge);
        assert!(s
            .merge
            .contains("\"events\" = a.\"events\" + excluded.\"events\""));
        assert!(s.merge.contains("\"revenue\" = coalesce(a.\"revenue\" + excluded.\"revenue\", a.\"revenue\", excluded.\"revenue\")"));
        assert!(s
            .merge
            .contains("ON CONFLICT (window_start, \"event_type\")"));
        assert_eq!(s.create.len(), 5);
        assert!(
            s.merge.ends_with("updated_at = now(), published = false"),
            "{}",
            s.merge
        );
        assert!(s.unpublished.as_deref().is_some_and(|q| q.contains("json_build_object('window_start', window_start, 'window_end', window_end, 'event_type', \"event_type\", 'events', \"events\"")));
        assert!(s.create[1].contains("\"per_minute_open\" ON \"app\".\"per_minute\""));
        assert!(s.members.as_deref().is_some_and(
            |m| m.contains("unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[])")
        ));
        assert!(s
            .forget_members
            .as_deref()
            .is_some_and(|m| m.ends_with("WHERE window_start <= $1")));
    }

    #[test]
    fn without_distinct_counts_there_is_no_members_table() {
        let s = statements("t", &[], &[("n".into(), Func::Count)], false);
        assert_eq!(s.create.len(), 3);
        assert!(s.members.is_none() && s.forget_members.is_none());
        assert!(s.unpublished.is_none() && s.mark_published.is_none());
        assert!(s.merge.contains("ON CONFLICT (window_start) DO UPDATE SET \"n\" = a.\"n\" + excluded.\"n\", updated_at = now()"));
    }
}

//! From records to partial aggregates: pure, no I/O. The sink merges the partials of a batch
//! into the table in one statement (and the distinct members in another), so a batch of 5,000
//! events of 3 event types into one-minute windows is 3 rows, not 5,000.

use std::collections::{HashMap, HashSet};

use chrono::DateTime;
use connector_core::ConnectorError;
use rust_decimal::Decimal;
use serde_json::Value;

use super::window::Windows;

/// What one aggregate column computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Func {
    /// Number of events.
    Count,
    /// Sum of a numeric field (events without it are ignored, as SQL's `sum` ignores NULL).
    Sum(String),
    /// Smallest value of a numeric field.
    Min(String),
    /// Largest value of a numeric field.
    Max(String),
    /// Number of distinct values of a field (exact: the members are stored).
    CountDistinct(String),
}

/// The value an event contributes to one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `count`, or the field is absent/null (ignored).
    None,
    /// A number for `sum`/`min`/`max`.
    Number(Decimal),
    /// A member for `count_distinct`.
    Member(String),
}

/// What the sink needs of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event time, µs since the epoch.
    pub ts: i64,
    /// Group-by values, in the configured column order.
    pub group: Vec<String>,
    /// One input per aggregate, in the configured column order.
    pub inputs: Vec<Input>,
}

/// A JSON pointer split into its tokens once (RFC 6901: `~1` is `/`, `~0` is `~`): reading it
/// per record neither splits nor allocates, which `serde_json::Value::pointer` does on every
/// call (it showed in the profile of this sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Compiles `/a/b`; the empty pointer is the whole document.
    pub fn parse(text: &str) -> Self {
        let tokens = text
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Self {
            text: text.to_string(),
            tokens,
        }
    }

    /// The value it points at.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for t in &self.tokens {
            cur = match cur {
                Value::Object(m) => m.get(t.as_str())?,
                Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// How to read events: the time pointer, group-by pointers and aggregates.
#[derive(Debug, Clone)]
pub struct Extractor {
    /// Where the event time is (RFC 3339).
    pub time: Pointer,
    /// Where the group-by values are.
    pub group_by: Vec<Pointer>,
    /// The aggregates.
    pub funcs: Vec<Func>,
    /// Each aggregate's pointer (`None` for `count`).
    inputs: Vec<Option<Pointer>>,
}

fn poison(class: &str, msg: String) -> ConnectorError {
    ConnectorError::permanent(class, msg)
}

/// Text of a scalar for a group value or a distinct member: strings as they are, numbers and
/// booleans as JSON; PostgreSQL text cannot hold NUL.
fn text(v: &Value, ptr: &Pointer) -> Result<Option<String>, ConnectorError> {
    let s = match ptr.get(v) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(_) => {
            return Err(poison(
                "not_a_scalar",
                format!("{ptr} is an object or an array, not a string or a number"),
            ))
        }
    };
    if s.contains('\0') {
        return Err(poison(
            "invalid_text",
            format!("{ptr} contains a NUL character"),
        ));
    }
    Ok(Some(s))
}

fn number(v: &Value, ptr: &Pointer) -> Result<Input, ConnectorError> {
    match ptr.get(v) {
        None | Some(Value::Null) => Ok(Input::None),
        Some(Value::Number(n)) => {
            let s = n.to_string();
            s.parse::<Decimal>()
                .or_else(|_| Decimal::from_scientific(&s))
                .map(Input::Number)
                .map_err(|e| {
                    poison(
                        "out_of_range",
                        format!("{ptr} = {s} does not fit a 28-digit decimal ({e})"),
                    )
                })
        }
        Some(other) => Err(poison(
            "not_numeric",
            format!("{ptr} is {other}, not a number"),
        )),
    }
}

impl Extractor {
    /// Compiles the pointers.
    pub fn new(time: &str, group_by: &[String], funcs: Vec<Func>) -> Self {
        let inputs = funcs
            .iter()
            .map(|f| match f {
                Func::Count => None,
                Func::Sum(p) | Func::Min(p) | Func::Max(p) | Func::CountDistinct(p) => {
                    Some(Pointer::parse(p))
                }
            })
            .collect();
        Self {
            time: Pointer::parse(time),
            group_by: group_by.iter().map(|p| Pointer::parse(p)).collect(),
            funcs,
            inputs,
        }
    }

    /// Reads one event, or says why it cannot be aggregated (→ dead-letter topic).
    pub fn event(&self, v: &Value) -> Result<Event, ConnectorError> {
        let raw = match self.time.get(v) {
            Some(Value::String(s)) => s,
            _ => {
                return Err(poison(
                    "missing_time",
                    format!("{} is missing or not a string", self.time),
                ))
            }
        };
        let ts = DateTime::parse_from_rfc3339(raw)
            .map_err(|e| {
                poison(
                    "invalid_time",
                    format!("{}: {raw:?} is not an RFC 3339 time ({e})", self.time),
                )
            })?
            .timestamp_micros();
        let mut group = Vec::with_capacity(self.group_by.len());
        for p in &self.group_by {
            match text(v, p)? {
                Some(s) => group.push(s),
                None => {
                    return Err(poison(
                        "missing_group_field",
                        format!("{p} (a group-by field) is missing or null"),
                    ))
                }
            }
        }
        let mut inputs = Vec::with_capacity(self.funcs.len());
        for (f, p) in self.funcs.iter().zip(&self.inputs) {
            inputs.push(match (f, p) {
                (Func::Sum(_) | Func::Min(_) | Func::Max(_), Some(p)) => number(v, p)?,
                (Func::CountDistinct(_), Some(p)) => text(v, p)?.map_or(Input::None, Input::Member),
                _ => Input::None,
            });
        }
        Ok(Event { ts, group, inputs })
    }
}

/// One aggregate's partial value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acc {
    /// Events counted.
    Count(i64),
    /// Sum, min or max so far (`None`: no event had the field).
    Num(Option<Decimal>),
    /// New distinct members: filled in by the sink from what the member insert returned.
    Distinct(i64),
}

/// The key of a window row: window start (µs) and the group's number in [`Partials::groups`].
pub type RowKey = (i64, u32);

/// Partial aggregates of one batch. Group values are interned: a row key is two integers,
/// hashed and compared without touching the strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partials {
    /// The distinct groups of the batch, by number.
    pub groups: Vec<Vec<String>>,
    group_ids: HashMap<Vec<String>, u32>,
    /// One entry per (window, group) touched.
    pub rows: HashMap<RowKey, Vec<Acc>>,
    /// Distinct members seen: (window start, group number, aggregate index, member).
    pub members: HashSet<(i64, u32, usize, String)>,
}

impl Partials {
    /// The number of a group already in the batch.
    pub fn group_id(&self, group: &[String]) -> Option<u32> {
        self.group_ids.get(group).copied()
    }

    /// Adds `event` to the windows starting at `starts`, all or nothing. Fails only when a sum
    /// leaves the 28-digit decimal range within one batch (the event goes to the DLQ).
    pub fn add(
        &mut self,
        funcs: &[Func],
        starts: &[i64],
        event: Event,
    ) -> Result<(), ConnectorError> {
        let gid = self.group_ids.get(&event.group).copied();
        let mut updated = Vec::with_capacity(starts.len());
        for s in starts {
            let mut accs = match gid.and_then(|g| self.rows.get(&(*s, g))) {
                Some(a) => a.clone(),
                None => funcs
                    .iter()
                    .map(|f| match f {
                        Func::Count => Acc::Count(0),
                        Func::CountDistinct(_) => Acc::Distinct(0),
                        _ => Acc::Num(None),
                    })
                    .collect(),
            };
            fold(funcs, &mut accs, &event)?;
            updated.push((*s, accs));
        }
        let gid = match gid {
            Some(g) => g,
            None => {
                let g = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
                self.groups.push(event.group.clone());
                self.group_ids.insert(event.group, g);
                g
            }
        };
        let last = updated.len().saturating_sub(1);
        let mut inputs = event.inputs;
        for (k, (s, accs)) in updated.into_iter().enumerate() {
            for (i, input) in inputs.iter_mut().enumerate() {
                if let Input::Member(m) = input {
                    let m = if k == last {
                        std::mem::take(m)
                    } else {
                        m.clone()
                    };
                    self.members.insert((s, gid, i, m));
                }
            }
            self.rows.insert((s, gid), accs);
        }
        Ok(())
    }
}

/// Folds one event into one row's accumulators.
fn fold(funcs: &[Func], accs: &mut [Acc], event: &Event) -> Result<(), ConnectorError> {
    for ((f, input), acc) in funcs.iter().zip(&event.inputs).zip(accs.iter_mut()) {
        match (f, input, acc) {
            (Func::Count, _, Acc::Count(n)) => *n += 1,
            (Func::Sum(_), Input::Number(x), Acc::Num(v)) => {
                *v = Some(match v {
                    None => *x,
                    Some(s) => s.checked_add(*x).ok_or_else(|| {
                        poison(
                            "out_of_range",
                            "a sum left the 28-digit decimal range within one batch".into(),
                        )
                    })?,
                })
            }
            (Func::Min(_), Input::Number(x), Acc::Num(v)) => *v = Some(v.map_or(*x, |m| m.min(*x))),
            (Func::Max(_), Input::Number(x), Acc::Num(v)) => *v = Some(v.map_or(*x, |m| m.max(*x))),
            _ => {}
        }
    }
    Ok(())
}

/// The starts of `ts`'s windows that are still open under `watermark`, and how many of its
/// windows have closed.
pub fn open_windows(windows: Windows, ts: i64, watermark: Option<i64>) -> (Vec<i64>, usize) {
    let mut open = Vec::new();
    let mut closed = 0;
    for s in windows.starts(ts) {
        if watermark.is_some_and(|w| s + windows.size() <= w) {
            closed += 1;
        } else {
            open.push(s);
        }
    }
    (open, closed)
}

#[cfg(test)]
mod tests {
    use super::super::window::MICROS;
    use super::*;
    use serde_json::json;

    fn ex() -> Extractor {
        Extractor::new(
            "/event_ts",
            &["/event_type".into()],
            vec![
                Func::Count,
                Func::Sum("/amount".into()),
                Func::Min("/amount".into()),
                Func::Max("/amount".into()),
                Func::CountDistinct("/user_id".into()),
            ],
        )
    }

    #[test]
    fn pointers_walk_objects_and_arrays_with_escapes() {
        let v = json!({"a": {"b/c": [10, {"d~e": 2}]}});
        assert_eq!(Pointer::parse("/a/b~1c/0").get(&v), Some(&json!(10)));
        assert_eq!(Pointer::parse("/a/b~1c/1/d~0e").get(&v), Some(&json!(2)));
        assert_eq!(Pointer::parse("/a/x").get(&v), None);
        assert_eq!(Pointer::parse("/a/b~1c/9").get(&v), None);
        assert_eq!(Pointer::parse("").get(&v), Some(&v));
    }

    #[test]
    fn events_are_read_and_bad_ones_named() {
        let e = ex()
            .event(&json!({"event_ts": "2026-11-24T10:00:00+01:00", "event_type": "buy", "amount": 1.5, "user_id": 7}))
            .expect("good");
        assert_eq!(e.ts, 1_795_510_800 * MICROS);
        assert_eq!(e.group, vec!["buy".to_string()]);
        assert_eq!(e.inputs[1], Input::Number("1.5".parse().expect("dec")));
        assert_eq!(e.inputs[4], Input::Member("7".into()));
        // Absent numeric fields and members are ignored, like NULL in SQL.
        let e = ex()
            .event(&json!({"event_ts": "2026-11-24T10:00:00Z", "event_type": "buy"}))
            .expect("good");
        assert_eq!(e.inputs[1], Input::None);
        assert_eq!(e.inputs[4], Input::None);
        for (v, class) in [
            (json!({"event_type": "a"}), "missing_time"),
            (
                json!({"event_ts": "yesterday", "event_type": "a"}),
                "invalid_time",
            ),
            (
                json!({"event_ts": "2026-11-24T10:00:00Z"}),
                "missing_group_field",
            ),
            (
                json!({"event_ts": "2026-11-24T10:00:00Z", "event_type": {"x": 1}}),
                "not_a_scalar",
            ),
            (
                json!({"event_ts": "2026-11-24T10:00:00Z", "event_type": "a\u{0}b"}),
                "invalid_text",
            ),
            (
                json!({"event_ts": "2026-11-24T10:00:00Z", "event_type": "a", "amount": "12"}),
                "not_numeric",
            ),
            (
                json!({"event_ts": "2026-11-24T10:00:00Z", "event_type": "a", "amount": 1e300}),
                "out_of_range",
            ),
        ] {
            assert_eq!(ex().event(&v).expect_err("poison").class(), class, "{v}");
        }
    }

    #[test]
    fn partials_fold_a_batch_per_window_and_group() {
        let x = ex();
        let mut p = Partials::default();
        for (ty, amount, user) in [("a", 2, 1), ("a", 5, 1), ("a", -1, 2), ("b", 3, 1)] {
            let e = x
                .event(&json!({"event_ts": "2026-11-24T10:00:30Z", "event_type": ty, "amount": amount, "user_id": user}))
                .expect("good");
            p.add(&x.funcs, &[60], e).expect("add");
        }
        let a = &p.rows[&(60, p.group_id(&["a".to_string()]).expect("group a"))];
        let d = |n: i64| Acc::Num(Some(Decimal::from(n)));
        assert_eq!(a, &vec![Acc::Count(3), d(6), d(-1), d(5), Acc::Distinct(0)]);
        assert_eq!(p.rows.len(), 2);
        // Members are collected once each; the sink counts the ones new to the table.
        assert_eq!(p.members.len(), 3);
    }

    #[test]
    fn an_event_is_late_only_for_windows_the_watermark_passed() {
        let min = 60 * MICROS;
        let w = Windows::Hopping {
            size: 2 * min,
            slide: min,
        };
        // Event at 3.5 min is in [2,4) and [3,5).
        let t = 3 * min + 30 * MICROS;
        assert_eq!(open_windows(w, t, None), (vec![2 * min, 3 * min], 0));
        assert_eq!(
            open_windows(w, t, Some(4 * min - 1)),
            (vec![2 * min, 3 * min], 0)
        );
        assert_eq!(open_windows(w, t, Some(4 * min)), (vec![3 * min], 1));
        assert_eq!(open_windows(w, t, Some(5 * min)), (vec![], 2));
    }
}

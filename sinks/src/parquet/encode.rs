//! Rows → Arrow columns → one Parquet file (zstd).
//!
//! Each record is parsed into typed cells when it arrives (`parse_cell`), so a value that
//! does not fit its column is that record's permanent failure (dead letter) at `write` time,
//! never a failed flush later. Cells are appended to Arrow builders per folder and encoded
//! with the arrow-rs `parquet` writer when the file rolls.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use connector_core::ConnectorError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::postgres::mapping::SqlType;

/// The Arrow type a column of `t` is stored as. `uuid`, `jsonb` and `numeric` are kept as
/// text (JSON text for `jsonb`, the exact decimal for `numeric`): every reader understands
/// them, and zstd with dictionary pages stores them compactly.
pub fn arrow_type(t: SqlType) -> DataType {
    match t {
        SqlType::Text | SqlType::Uuid | SqlType::Jsonb | SqlType::Numeric => DataType::Utf8,
        SqlType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        SqlType::Integer => DataType::Int32,
        SqlType::Bigint => DataType::Int64,
        SqlType::Double => DataType::Float64,
        SqlType::Boolean => DataType::Boolean,
        SqlType::Date => DataType::Date32,
    }
}

/// The file schema of these columns (nullable where the column is not required).
pub fn schema(columns: &[(String, SqlType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t, required)| Field::new(n, arrow_type(*t), !required))
            .collect::<Vec<_>>(),
    ))
}

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value.
    Null,
    /// Text (also uuid, jsonb, numeric).
    Str(String),
    /// Microseconds since the Unix epoch, UTC.
    Ts(i64),
    /// `integer`
    I32(i32),
    /// `bigint`
    I64(i64),
    /// `double precision`
    F64(f64),
    /// `boolean`
    Bool(bool),
    /// Days since the Unix epoch.
    Date(i32),
}

impl Cell {
    /// The UTC day (`YYYY-MM-DD`) and hour of a timestamp or date cell.
    pub fn day_and_hour(&self) -> Option<(String, u32)> {
        use chrono::Timelike;
        match self {
            Cell::Ts(us) => chrono::DateTime::from_timestamp_micros(*us)
                .map(|t| (t.format("%Y-%m-%d").to_string(), t.hour())),
            Cell::Date(d) => chrono::NaiveDate::from_num_days_from_ce_opt(d + EPOCH_CE_DAYS)
                .map(|d| (d.format("%Y-%m-%d").to_string(), 0)),
            _ => None,
        }
    }

    /// The cell as text, for `column` folders.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Str(s) => Some(s.clone()),
            Cell::Ts(_) | Cell::Date(_) => self.day_and_hour().map(|(d, _)| d),
            Cell::I32(v) => Some(v.to_string()),
            Cell::I64(v) => Some(v.to_string()),
            Cell::F64(v) => Some(v.to_string()),
            Cell::Bool(v) => Some(v.to_string()),
        }
    }
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const EPOCH_CE_DAYS: i32 = 719_163;

fn bad(column: &str, t: SqlType, v: &str) -> ConnectorError {
    let shown: String = v.chars().take(60).collect();
    ConnectorError::permanent(
        "invalid_value",
        format!("column {column}: {shown:?} is not a valid {}", t.sql()),
    )
}

/// Parses the text of one column (from the shared column mapping) into its typed cell.
pub fn parse_cell(column: &str, t: SqlType, v: Option<String>) -> Result<Cell, ConnectorError> {
    let Some(v) = v else {
        return Ok(Cell::Null);
    };
    let err = || bad(column, t, &v);
    Ok(match t {
        SqlType::Text => Cell::Str(v),
        SqlType::Uuid => Cell::Str(
            uuid::Uuid::parse_str(&v)
                .map_err(|_| err())?
                .hyphenated()
                .to_string(),
        ),
        SqlType::Jsonb => {
            serde_json::from_str::<serde::de::IgnoredAny>(&v).map_err(|_| err())?;
            Cell::Str(v)
        }
        SqlType::Numeric => {
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                && v.parse::<f64>().is_ok_and(f64::is_finite);
            if !ok {
                return Err(err());
            }
            Cell::Str(v)
        }
        SqlType::Timestamptz => Cell::Ts(
            chrono::DateTime::parse_from_rfc3339(&v)
                .map_err(|_| err())?
                .timestamp_micros(),
        ),
        SqlType::Date => {
            let d = chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| err())?;
            Cell::Date(chrono::Datelike::num_days_from_ce(&d) - EPOCH_CE_DAYS)
        }
        SqlType::Integer => Cell::I32(v.parse().map_err(|_| err())?),
        SqlType::Bigint => Cell::I64(v.parse().map_err(|_| err())?),
        SqlType::Double => Cell::F64(v.parse().map_err(|_| err())?),
        SqlType::Boolean => Cell::Bool(match v.as_str() {
            "true" | "t" | "1" => true,
            "false" | "f" | "0" => false,
            _ => return Err(err()),
        }),
    })
}

enum Builder {
    Str(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(t: &DataType) -> Self {
        match t {
            DataType::Timestamp(..) => {
                Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            DataType::Int32 => Builder::I32(Int32Builder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            _ => Builder::Str(StringBuilder::new()),
        }
    }

    /// Appends `c` (already parsed for this column's type; anything else appends null).
    fn push(&mut self, c: &Cell) {
        match (self, c) {
            (Builder::Str(b), Cell::Str(s)) => b.append_value(s),
            (Builder::Ts(b), Cell::Ts(v)) => b.append_value(*v),
            (Builder::I32(b), Cell::I32(v)) => b.append_value(*v),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::Date(b), Cell::Date(v)) => b.append_value(*v),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::Ts(b), _) => b.append_null(),
            (Builder::I32(b), _) => b.append_null(),
            (Builder::I64(b), _) => b.append_null(),
            (Builder::F64(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Builder::Str(b) => b.len(),
            Builder::Ts(b) => b.len(),
            Builder::I32(b) => b.len(),
            Builder::I64(b) => b.len(),
            Builder::F64(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Date(b) => b.len(),
        }
    }
}

/// The rows of one future file, column by column.
pub struct Columns {
    schema: SchemaRef,
    builders: Vec<Builder>,
}

impl Columns {
    /// Empty columns of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        let builders = schema
            .fields()
            .iter()
            .map(|f| Builder::new(f.data_type()))
            .collect();
        Self { schema, builders }
    }

    /// Appends one row (one cell per column, in schema order).
    pub fn push(&mut self, cells: &[Cell]) {
        for (b, c) in self.builders.iter_mut().zip(cells) {
            b.push(c);
        }
    }

    /// Rows appended so far.
    pub fn len(&self) -> usize {
        self.builders.first().map_or(0, Builder::len)
    }

    /// True when no row was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows as one Arrow batch (the builders start again empty).
    pub fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// Writer settings: zstd at `level` (1–22), statistics per page, 128k-row row groups.
pub fn properties(level: i32) -> Result<WriterProperties, parquet::errors::ParquetError> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(level)?))
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_created_by("connectd parquet_sink".into())
        .build())
}

/// Encodes `batch` as one complete Parquet file.
pub fn to_parquet(
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props.clone()))?;
    w.write(batch)?;
    w.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn cells_parse_by_type_and_refuse_what_does_not_fit() {
        let ok = |t, v: &str| parse_cell("c", t, Some(v.to_string())).expect("parses");
        assert_eq!(
            ok(SqlType::Timestamptz, "2026-11-24T10:00:00+02:00"),
            Cell::Ts(1_795_507_200_000_000)
        );
        assert_eq!(
            ok(SqlType::Uuid, "6F9619FF-8B86-D011-B42D-00C04FC964FF"),
            Cell::Str("6f9619ff-8b86-d011-b42d-00c04fc964ff".into())
        );
        assert_eq!(ok(SqlType::Date, "1970-01-02"), Cell::Date(1));
        assert_eq!(ok(SqlType::Numeric, "12.50"), Cell::Str("12.50".into()));
        assert_eq!(ok(SqlType::Boolean, "f"), Cell::Bool(false));
        assert_eq!(
            parse_cell("c", SqlType::Integer, None).expect("null"),
            Cell::Null
        );
        for (t, v) in [
            (SqlType::Timestamptz, "2026-11-24 10:00"),
            (SqlType::Uuid, "nope"),
            (SqlType::Integer, "3000000000"),
            (SqlType::Numeric, "NaN"),
            (SqlType::Jsonb, "{"),
            (SqlType::Boolean, "yes please"),
        ] {
            let e = parse_cell("c", t, Some(v.into())).expect_err(v);
            assert_eq!(e.class(), "invalid_value");
            assert!(e.message().starts_with("column c: "), "{}", e.message());
        }
        assert_eq!(
            Cell::Ts(1_795_507_200_000_000).day_and_hour(),
            Some(("2026-11-24".into(), 8))
        );
        assert_eq!(Cell::Date(1).text().as_deref(), Some("1970-01-02"));
    }

    #[test]
    fn a_file_reads_back_with_its_types_and_nulls() {
        let schema = schema(&[
            ("k".into(), SqlType::Text, true),
            ("ts".into(), SqlType::Timestamptz, true),
            ("n".into(), SqlType::Integer, false),
        ]);
        let mut cols = Columns::new(schema.clone());
        cols.push(&[Cell::Str("a".into()), Cell::Ts(5), Cell::I32(7)]);
        cols.push(&[Cell::Str("b".into()), Cell::Ts(6), Cell::Null]);
        assert_eq!(cols.len(), 2);
        let batch = cols.finish().expect("batch");
        assert!(cols.is_empty());
        let bytes = to_parquet(&batch, &properties(3).expect("props")).expect("encodes");
        assert_eq!(&bytes[..4], b"PAR1");
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .expect("reader")
            .build()
            .expect("build");
        let back = reader.next().expect("one batch").expect("reads");
        assert_eq!(back, batch);
        assert_eq!(back.schema(), schema);
    }
}

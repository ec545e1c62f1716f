//! Answers of the SQL endpoint as bytes: JSON, CSV, Arrow IPC or Parquet.

use std::str::FromStr;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

use crate::session::Answer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"row_count", "truncated", "rows": [{column: value}, ...]}`.
    #[default]
    Json,
    /// With a header line.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
    Parquet,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("format {s:?}: use json, csv, arrow or parquet"))
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    pub fn encode(self, answer: &Answer) -> Result<Vec<u8>, ArrowError> {
        let batches: Vec<&RecordBatch> = answer.batches.iter().collect();
        let mut out = Vec::new();
        match self {
            Format::Json => {
                out.extend_from_slice(
                    format!(
                        r#"{{"row_count":{},"truncated":{},"rows":"#,
                        answer.num_rows(),
                        answer.truncated
                    )
                    .as_bytes(),
                );
                if answer.num_rows() == 0 {
                    out.extend_from_slice(b"[]");
                } else {
                    let mut writer = arrow::json::ArrayWriter::new(&mut out);
                    writer.write_batches(&batches)?;
                    writer.finish()?;
                }
                out.push(b'}');
            }
            Format::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                if batches.is_empty() {
                    writer.write(&RecordBatch::new_empty(answer.schema.clone()))?;
                }
                for batch in batches {
                    writer.write(batch)?;
                }
            }
            Format::Arrow => {
                let mut writer =
                    arrow::ipc::writer::StreamWriter::try_new(&mut out, &answer.schema)?;
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
            }
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let mut writer = ArrowWriter::try_new(&mut out, answer.schema.clone(), Some(props))
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                for batch in batches {
                    writer
                        .write(batch)
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                }
                writer
                    .close()
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            }
        }
        Ok(out)
    }
}

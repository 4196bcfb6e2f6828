//! Tables as JSON or CSV (`?format=csv`): the query, RFC 4180 quoting, and the download response.

use super::ApiError;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// The `format` query of a table endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

/// How a table is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// The default.
    Json,
    /// One header line, one line per row; for spreadsheets and reports.
    Csv,
}

impl FormatQuery {
    /// The requested format.
    pub fn table_format(&self) -> Result<TableFormat, ApiError> {
        table_format(self.format.as_deref())
    }
}

/// Reads a `format` value; anything but `json` or `csv` is a 400 naming the choices.
pub fn table_format(format: Option<&str>) -> Result<TableFormat, ApiError> {
    match format {
        None | Some("json") => Ok(TableFormat::Json),
        Some("csv") => Ok(TableFormat::Csv),
        Some(other) => Err(ApiError::BadRequest {
            field: "format",
            message: format!("unknown format `{other}`; use `json` (the default) or `csv`"),
        }),
    }
}

/// One CSV line from its fields, quoted where RFC 4180 needs it.
pub fn line<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> String {
    let quoted: Vec<String> = fields.into_iter().map(|field| quote(field.as_ref())).collect();
    format!("{}\n", quoted.join(","))
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// A number as a CSV field: shortest round-trip form, empty when absent.
pub fn number(value: Option<f64>) -> String {
    value.map(|value| value.to_string()).unwrap_or_default()
}

/// A file name made of safe characters only, for `Content-Disposition`.
pub fn download_name(stem: &str, suffix: &str) -> String {
    let stem: String = stem
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    format!("{stem}{suffix}")
}

/// A CSV body offered as a download named `file_name`.
pub fn response(file_name: &str, body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, String::from("text/csv; charset=utf-8")),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file_name}\"")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(line(["a", "b,c", "say \"hi\"", ""]), "a,\"b,c\",\"say \"\"hi\"\"\",\n");
        assert_eq!(number(Some(0.1)), "0.1");
        assert_eq!(number(None), "");
        assert_eq!(download_name("q1 / run\"x", "-metrics.csv"), "q1___run_x-metrics.csv");
    }
}

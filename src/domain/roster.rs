//! A class roster: the CSV file an admin imports (`trainq admin users import roster.csv`, or the
//! dashboard's upload), and the checks every imported row passes, whichever way it came.
//!
//! The file has a header row naming its columns: `name` (required), `full_name`, `email` and
//! `admin` (any order, any case). A UTF-8 byte-order mark, CRLF line ends, quoted fields (with commas or quotes
//! inside) and empty lines are read as a spreadsheet writes them. Every error names the line of
//! the file and the column, so the admin can fix the row and import the same file again.

use std::collections::HashMap;

/// The columns a roster may have.
pub const COLUMNS: [&str; 4] = ["name", "full_name", "email", "admin"];

/// One account to create, as the roster or the API's JSON gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RosterRow {
    /// The roster's line number (1 is the header), when the row came from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The user name.
    pub name: String,
    /// The person's full name, e.g. `Doe, Jane`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// Where the welcome mail and the job notifications go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the account is an admin.
    pub admin: bool,
}

/// What is wrong with a roster, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: `{field}`: {message}")]
pub struct RosterError {
    /// The line of the file (1 is the header).
    pub line: u64,
    /// The column at fault (`(file)` for the file as a whole).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The line (from 1) a record at `position` starts on. The csv crate's own line count and offset
/// stop at the `\r` of a CRLF and before skipped empty lines, so the line is counted here from the
/// first byte of the record itself.
fn line_at(text: &str, position: Option<&csv::Position>) -> u64 {
    let Some(position) = position else { return 0 };
    let mut start = (position.byte() as usize).min(text.len());
    while text[start..].starts_with(['\r', '\n']) {
        start += 1;
    }
    1 + text[..start].matches('\n').count() as u64
}

fn error(line: u64, field: &str, message: impl Into<String>) -> RosterError {
    RosterError { line, field: field.to_string(), message: message.into() }
}

/// Reads a roster file's bytes into its rows (not yet checked: see [`check_rows`]).
pub fn parse(bytes: &[u8]) -> Result<Vec<RosterRow>, RosterError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let line = 1 + bytes[..err.valid_up_to()].iter().filter(|&&byte| byte == b'\n').count() as u64;
        error(line, "(file)", "this is not UTF-8 text; a roster is a CSV file with a header row `name,email,admin` (save it from the spreadsheet as \"CSV UTF-8\")")
    })?;
    if let Some(at) = text.find(|c: char| c.is_control() && !matches!(c, '\r' | '\n' | '\t')) {
        let line = 1 + text[..at].matches('\n').count() as u64;
        return Err(error(
            line,
            "(file)",
            "control characters: this looks like a binary file, not a CSV roster (`name,email,admin`)",
        ));
    }
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(text.as_bytes());
    let header =
        reader.headers().map_err(|err| error(1, "(file)", format!("the header row does not read: {err}")))?.clone();
    let mut columns: HashMap<&'static str, usize> = HashMap::new();
    for (index, column) in header.iter().enumerate() {
        let Some(known) = COLUMNS.iter().find(|known| known.eq_ignore_ascii_case(column)) else {
            return Err(error(
                1,
                column,
                format!("unknown column `{column}`; a roster's columns are {}", COLUMNS.join(", ")),
            ));
        };
        if columns.insert(known, index).is_some() {
            return Err(error(1, known, format!("the column `{known}` appears twice")));
        }
    }
    let Some(&name_column) = columns.get("name") else {
        return Err(error(
            1,
            "name",
            "the header row has no `name` column; the first line must name the columns, e.g. `name,email,admin`",
        ));
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| {
            let line = line_at(text, err.position());
            error(line, "(file)", format!("this line does not read as CSV: {err}"))
        })?;
        let line = line_at(text, record.position());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() > header.len() {
            return Err(error(
                line,
                "(file)",
                format!(
                    "{} fields but the header names {} columns; quote a field that holds a comma",
                    record.len(),
                    header.len()
                ),
            ));
        }
        let field = |column: &str| columns.get(column).and_then(|&index| record.get(index)).unwrap_or_default();
        let admin = match field("admin").to_ascii_lowercase().as_str() {
            "" | "0" | "no" | "false" | "student" => false,
            "1" | "yes" | "true" | "admin" => true,
            other => {
                return Err(error(line, "admin", format!("`{other}` is not yes or no; leave it empty for a student")))
            }
        };
        let text = |column: &str| Some(field(column).to_string()).filter(|value| !value.is_empty());
        let name = record.get(name_column).unwrap_or_default().to_string();
        rows.push(RosterRow { line: Some(line), name, full_name: text("full_name"), email: text("email"), admin });
    }
    Ok(rows)
}

/// Where a row is, for its errors: the roster's line, else its place in the list (from 1).
pub fn place(row: &RosterRow, index: usize) -> String {
    match row.line {
        Some(line) => format!("line {line}"),
        None => format!("user {}", index + 1),
    }
}

/// Checks every row before anything is created: a valid name, a valid email when there is one,
/// and no name twice. The error names the row's place ([`place`]) and the field.
pub fn check_rows(rows: &[RosterRow]) -> Result<(), (usize, &'static str, String)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        let at = place(row, index);
        super::user::check_name(&row.name).map_err(|message| (index, "name", format!("{at}: {message}")))?;
        if row
            .full_name
            .as_ref()
            .is_some_and(|full_name| full_name.chars().count() > 200 || full_name.chars().any(char::is_control))
        {
            return Err((index, "full_name", format!("{at}: a full name is one line of at most 200 characters")));
        }
        if let Some(email) = &row.email {
            super::notify_target::check_email(email).map_err(|message| (index, "email", format!("{at}: {message}")))?;
        }
        if let Some(first) = seen.insert(&row.name, index) {
            let first = place(&rows[first], first);
            return Err((
                index,
                "name",
                format!("{at}: `{}` is in the roster twice ({first} too); keep one", row.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: u64, name: &str, email: Option<&str>, admin: bool) -> RosterRow {
        RosterRow { line: Some(line), name: name.to_string(), full_name: None, email: email.map(str::to_string), admin }
    }

    #[test]
    fn a_spreadsheets_csv_reads_with_its_bom_crlf_quotes_and_empty_lines() {
        let text = "\u{feff}Name,Email,Admin\r\nalice,alice@example.org,\r\n\r\n\"bob\",\"bob@example.org\",yes\r\n  carol , carol@example.org ,no\r\n";
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            [
                row(2, "alice", Some("alice@example.org"), false),
                row(4, "bob", Some("bob@example.org"), true),
                row(5, "carol", Some("carol@example.org"), false),
            ]
        );
        let rows = parse(b"name,full_name\nfrank,\"Doe, Frank\"\n").unwrap();
        assert_eq!(rows[0].full_name.as_deref(), Some("Doe, Frank"));
        // A quoted comma is part of its field (here it makes the email invalid, caught by the check).
        let rows = parse(b"email,name\n\"a,b@example.org\",dave\n").unwrap();
        assert_eq!(rows, [row(2, "dave", Some("a,b@example.org"), false)]);
        assert!(check_rows(&rows).unwrap_err().2.starts_with("line 2:"));
        assert_eq!(parse(b"name\neve\n").unwrap(), [row(2, "eve", None, false)]);
    }

    #[test]
    fn bad_files_name_the_line_and_the_column() {
        let err = parse(b"name,email,phone\nalice,a@example.org,123\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (1, "phone"));
        let err = parse(b"email\na@example.org\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (1, "name"));
        let err = parse(b"name,admin\nalice,\nbob,maybe\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "admin"));
        let err = parse(b"name,email\nalice,a@example.org,extra\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8").unwrap_err();
        assert_eq!(err.field, "(file)");
        let err = parse(b"name\nalice\x00\x01\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "(file)"));
    }

    #[test]
    fn rows_are_checked_for_names_emails_and_twins() {
        let good = [row(2, "alice", Some("alice@example.org"), false), row(3, "bob", None, true)];
        assert!(check_rows(&good).is_ok());
        let twice = [row(2, "alice", None, false), row(7, "alice", None, false)];
        assert_eq!(check_rows(&twice).unwrap_err().0, 1);
        assert!(
            check_rows(&twice).unwrap_err().2.contains("line 7")
                && check_rows(&twice).unwrap_err().2.contains("line 2")
        );
        let bad_email = [row(4, "alice", Some("alice@"), false)];
        assert_eq!(check_rows(&bad_email).unwrap_err().1, "email");
        let bad_name =
            [RosterRow { line: None, name: String::from("Alice"), full_name: None, email: None, admin: false }];
        let (index, field, message) = check_rows(&bad_name).unwrap_err();
        assert_eq!((index, field), (0, "name"));
        assert!(message.starts_with("user 1:"), "{message}");
    }
}

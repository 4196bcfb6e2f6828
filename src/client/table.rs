//! Terminal tables: columns padded to their widest cell, no colours (pipes and `less` read them).

use serde_json::Value;

/// Rows of text under a header, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `trainq ls`'s table of compact job rows (as `GET /api/jobs` gives them).
pub fn jobs(rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|job| {
            let state = job["state"].as_str().unwrap_or("?");
            let status = match state {
                "queued" => match job["position"].as_u64() {
                    Some(position) => format!("#{position} {}", job["pending_reason"].as_str().unwrap_or_default()),
                    None => String::new(),
                },
                "running" => match job["progress"]["fraction"].as_f64() {
                    Some(fraction) => format!(
                        "{:.0} % {}",
                        fraction * 100.0,
                        job["progress"]["activity"].as_str().unwrap_or_default()
                    ),
                    None => job["progress"]["activity"].as_str().unwrap_or_default().to_string(),
                },
                "failed" | "timeout" => {
                    job["error"].as_str().unwrap_or_default().lines().next().unwrap_or_default().to_string()
                }
                _ => String::new(),
            };
            let accuracy = job["test_metrics"]["test_acc"].as_f64().map(|acc| format!("{acc:.3}")).unwrap_or_default();
            vec![
                job["id"].as_str().unwrap_or("?").chars().take(8).collect(),
                job["name"].as_str().unwrap_or_default().to_string(),
                job["owner"].as_str().unwrap_or_default().to_string(),
                state.to_string(),
                job["device"].as_str().unwrap_or_default().to_string(),
                accuracy,
                status.chars().take(70).collect(),
            ]
        })
        .collect();
    render(&["ID", "NAME", "OWNER", "STATE", "DEVICE", "TEST ACC", "STATUS"], &cells)
}

/// The metrics `trainq compare` shows, with their column titles.
const COMPARED: [(&str, &str); 7] = [
    ("test_acc", "TEST ACC"),
    ("test_loss", "TEST LOSS"),
    ("precision", "PREC"),
    ("recall", "RECALL"),
    ("specificity", "SPEC"),
    ("f1", "F1"),
    ("auc", "AUC"),
];

/// A metric cell: a job's value, or a group's `mean ± std`.
fn cell(cell: &Value) -> String {
    match (cell["mean"].as_f64(), cell["std"].as_f64()) {
        (Some(mean), Some(std)) => format!("{mean:.3} ± {std:.3}"),
        (Some(mean), None) => format!("{mean:.3}"),
        _ => String::from("-"),
    }
}

/// `trainq compare`'s table of `GET /api/compare` rows; a sweep's varying parameters (each row's
/// `params`) become columns of their own.
pub fn compare(rows: &[Value]) -> String {
    let mut params: Vec<String> = Vec::new();
    for row in rows {
        for key in row["params"].as_object().into_iter().flat_map(|params| params.keys()) {
            if !params.contains(key) {
                params.push(key.clone());
            }
        }
    }
    let mut header: Vec<&str> = vec!["ID", "NAME"];
    header.extend(params.iter().map(String::as_str));
    header.extend(["STATE", "RUNS"]);
    header.extend(COMPARED.iter().map(|(_, title)| *title));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row["id"].as_str().unwrap_or("?").chars().take(8).collect(),
                row["name"].as_str().unwrap_or_default().to_string(),
            ];
            cells.extend(params.iter().map(|key| match &row["params"][key] {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }));
            let runs = row["jobs"].as_array().map_or(0, Vec::len);
            cells.extend([
                row["state"].as_str().unwrap_or_default().to_string(),
                format!("{}/{runs}", row["succeeded"]),
            ]);
            cells.extend(COMPARED.iter().map(|(metric, _)| cell(&row["metrics"][*metric])));
            cells
        })
        .collect();
    render(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let table = render(
            &["ID", "NAME"],
            &[vec![String::from("abcdef12"), String::from("q1")], vec![String::from("1"), String::from("longer name")]],
        );
        assert_eq!(table, "ID        NAME\nabcdef12  q1\n1         longer name\n");
    }

    #[test]
    fn a_queued_job_shows_its_place_and_a_finished_one_its_accuracy() {
        let rows = [
            serde_json::json!({"id": "0123456789ab", "name": "q1", "owner": "alice", "state": "queued", "position": 3, "pending_reason": "waiting behind 2 jobs"}),
            serde_json::json!({"id": "fedcba987654", "name": "q2", "owner": "alice", "state": "succeeded", "device": "cpu0", "test_metrics": {"test_acc": 0.8754}}),
        ];
        let table = jobs(&rows);
        assert!(table.contains("01234567  q1    alice  queued"), "{table}");
        assert!(table.contains("#3 waiting behind 2 jobs"), "{table}");
        assert!(table.contains("0.875"), "{table}");
    }

    #[test]
    fn a_sweep_row_shows_its_parameters_and_mean_plus_minus_std() {
        let rows = [
            serde_json::json!({"id": "aaaaaaaa-1", "name": "lr", "params": {"/optimizer/lr": 0.001}, "state": "finished", "jobs": ["x", "y"], "succeeded": 2,
                               "metrics": {"test_acc": {"mean": 0.9, "std": 0.01, "n": 2}}}),
            serde_json::json!({"id": "bbbbbbbb-2", "name": "one", "state": "succeeded", "jobs": ["z"], "succeeded": 1, "metrics": {"test_acc": {"mean": 0.85, "std": null, "n": 1}}}),
        ];
        let table = compare(&rows);
        assert!(table.starts_with("ID        NAME  /optimizer/lr  STATE"), "{table}");
        assert!(table.contains("0.001") && table.contains("2/2") && table.contains("0.900 ± 0.010"), "{table}");
        assert!(table.contains("0.850  "), "{table}");
    }
}

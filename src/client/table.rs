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
                    Some(fraction) => format!("{:.0} % {}", fraction * 100.0, job["progress"]["activity"].as_str().unwrap_or_default()),
                    None => job["progress"]["activity"].as_str().unwrap_or_default().to_string(),
                },
                "failed" => job["error"].as_str().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let table = render(&["ID", "NAME"], &[vec![String::from("abcdef12"), String::from("q1")], vec![String::from("1"), String::from("longer name")]]);
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
}

//! `trainq admin reserve`, `trainq admin reservations` and `trainq admin unreserve`: lab
//! reservations over `/api/admin/reservations`.

use super::Api;
use crate::config::ReserveArgs;
use serde_json::{json, Value};

/// A device as the API names it: a bare number is that GPU (`0` → `gpu0`), anything else as given.
fn device_id(given: &str) -> String {
    let given = given.trim();
    if !given.is_empty() && given.bytes().all(|byte| byte.is_ascii_digit()) {
        format!("gpu{given}")
    } else {
        given.to_string()
    }
}

/// `trainq admin reserve NAME --devices … --start … --end … [--weekly] --users …`.
pub(super) async fn reserve(api: &Api, args: &ReserveArgs) -> anyhow::Result<()> {
    let body = json!({
        "name": args.name,
        "devices": args.devices.iter().map(|device| device_id(device)).collect::<Vec<_>>(),
        "start": args.start,
        "end": args.end,
        "weekly": args.weekly,
        "users": args.users.iter().map(|user| user.trim()).collect::<Vec<_>>(),
    });
    let saved = api.post("/api/admin/reservations", &body).await?;
    println!("reserved: {}", line(&saved));
    Ok(())
}

/// `trainq admin reservations`: one line per reservation.
pub(super) async fn list(api: &Api) -> anyhow::Result<()> {
    let all = api.get("/api/admin/reservations").await?;
    let rows: Vec<Vec<String>> = all.as_array().map(Vec::as_slice).unwrap_or_default().iter().map(row).collect();
    if rows.is_empty() {
        println!("no reservations");
    } else {
        print!("{}", super::table::render(&["NAME", "DEVICES", "START", "END", "REPEATS", "USERS"], &rows));
    }
    Ok(())
}

/// `trainq admin unreserve NAME`.
pub(super) async fn unreserve(api: &Api, name: &str) -> anyhow::Result<()> {
    api.delete(&format!("/api/admin/reservations/{name}")).await?;
    println!("deleted reservation {name}");
    Ok(())
}

/// A reservation's cells: name, devices, start, end, weekly or once, users.
fn row(reservation: &Value) -> Vec<String> {
    let list = |key: &str| {
        reservation[key]
            .as_array()
            .map(|items| items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let text = |key: &str| reservation[key].as_str().unwrap_or("?").to_string();
    let repeats = if reservation["weekly"].as_bool().unwrap_or(false) { "weekly" } else { "once" };
    vec![text("name"), list("devices"), text("start"), text("end"), repeats.to_string(), list("users")]
}

/// A reservation in one line: `lab-b gpu0 2026-12-08T14:00:00Z – 2026-12-08T16:00:00Z weekly, for alice,bob`.
fn line(reservation: &Value) -> String {
    let cells = row(reservation);
    format!("{} {} {} – {} {}, for {}", cells[0], cells[1], cells[2], cells[3], cells[4], cells[5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_gpus_and_rows_read_back() {
        assert_eq!(device_id("0"), "gpu0");
        assert_eq!(device_id(" cpu1 "), "cpu1");
        let saved = json!({"name": "lab-b", "devices": ["gpu0", "gpu1"], "start": "2026-12-08T14:00:00Z",
            "end": "2026-12-08T16:00:00Z", "weekly": true, "users": ["alice", "bob"]});
        assert_eq!(line(&saved), "lab-b gpu0,gpu1 2026-12-08T14:00:00Z – 2026-12-08T16:00:00Z weekly, for alice,bob");
    }
}

//! `trainq me` (who you are and your device-hour budget) and `trainq admin budget NAME 40h`.

use super::{Api, Profile};
use crate::config::BudgetArgs;
use crate::domain::budget::parse_hours;
use serde_json::{json, Value};

/// `trainq me`: the caller's name, and their budget when one applies.
pub async fn me() -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let me = api.get("/api/me").await?;
    let role = if me["admin"].as_bool().unwrap_or(false) { " (admin)" } else { "" };
    println!("{}{role}", me["name"].as_str().unwrap_or("?"));
    match me.get("budget") {
        Some(budget) => println!("{}", budget_line(budget)),
        None => println!("no device-hour budget"),
    }
    Ok(())
}

/// "budget: 3.5 of 24 GPU-h used, 6 held by running jobs, 14.5 left this period".
fn budget_line(budget: &Value) -> String {
    let unit = if budget["class"] == "cpu" { "CPU-h" } else { "GPU-h" };
    let number = |key: &str| budget[key].as_f64().unwrap_or(0.0);
    format!(
        "budget: {} of {} {unit} used, {} held by running jobs, {} left this period",
        number("used_hours"),
        number("budget_hours"),
        number("held_hours"),
        number("left_hours")
    )
}

/// `trainq admin budget NAME HOURS [--cpu]`.
pub(super) async fn set_budget(api: &Api, args: &BudgetArgs) -> anyhow::Result<()> {
    let hours = if args.hours == "default" {
        Value::Null
    } else {
        json!(parse_hours(&args.hours).map_err(anyhow::Error::msg)?)
    };
    let field = if args.cpu { "cpu_hours" } else { "gpu_hours" };
    let saved = api.patch(&format!("/api/admin/users/{}", args.name), &json!({ field: hours })).await?;
    let shown = |value: &Value| value.as_f64().map_or(String::from("the server's"), |hours| format!("{hours} h"));
    println!(
        "{}: GPU budget {}, CPU budget {}",
        saved["name"].as_str().unwrap_or(&args.name),
        shown(&saved["gpu_hours"]),
        shown(&saved["cpu_hours"])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_budget_line_names_used_held_and_left() {
        let budget = serde_json::json!({"class": "cpu", "budget_hours": 2.0, "used_hours": 0.5, "held_hours": 1.0, "left_hours": 0.5});
        assert_eq!(
            super::budget_line(&budget),
            "budget: 0.5 of 2 CPU-h used, 1 held by running jobs, 0.5 left this period"
        );
    }
}

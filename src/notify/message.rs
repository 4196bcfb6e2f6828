//! What a notification says, from a job's facts: the email's subject and text, the webhook's JSON
//! body and its signature. Pure; the notifier gathers the facts and sends.

use crate::domain::{Job, JobState};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The webhook header carrying `sha256=<hex HMAC-SHA256 of the body>` under the user's secret.
pub const SIGNATURE_HEADER: &str = "X-Trainq-Signature";
/// The webhook header carrying the delivery's id (the outbox row's), the same on every retry.
pub const DELIVERY_HEADER: &str = "X-Trainq-Delivery";

/// What a message tells about a job that ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobFacts {
    /// The job's id.
    pub id: String,
    /// The spec's name (may be empty).
    pub name: String,
    /// Who submitted it.
    pub owner: Option<String>,
    /// Its final state.
    pub state: JobState,
    /// Test-set accuracy, when it succeeded.
    pub test_acc: Option<f64>,
    /// Test-set ROC AUC of a binary model, when it succeeded.
    pub test_auc: Option<f64>,
    /// Why it failed (with the last lines of its log, as the job's page shows it).
    pub error: Option<String>,
    /// The job's page on the dashboard.
    pub url: String,
}

impl JobFacts {
    /// The facts of `job`, linked under `public_url` (the dashboard's `#job=<id>` page).
    pub fn of(job: &Job, public_url: &str) -> JobFacts {
        let metrics = job.final_metrics.as_ref();
        JobFacts {
            id: job.id.to_string(),
            name: job.name.clone(),
            owner: job.owner.clone(),
            state: job.state,
            test_acc: metrics.map(|metrics| metrics.test_acc),
            test_auc: metrics.and_then(|metrics| metrics.binary.as_ref()).and_then(|binary| binary.auc),
            error: job.error.clone(),
            url: format!("{}/#job={}", public_url.trim_end_matches('/'), job.id),
        }
    }

    /// The name people know the job by: its spec's name, or the start of its id.
    fn label(&self) -> String {
        if self.name.trim().is_empty() {
            format!("job {}", &self.id[..self.id.len().min(8)])
        } else {
            self.name.clone()
        }
    }

    /// "test acc 0.912, AUC 0.957", or `None` without metrics.
    fn scores(&self) -> Option<String> {
        let acc = self.test_acc?;
        Some(match self.test_auc {
            Some(auc) => format!("test acc {acc:.3}, AUC {auc:.3}"),
            None => format!("test acc {acc:.3}"),
        })
    }
}

/// The email's subject, one line: `[trainq] q1-vgg16 succeeded — test acc 0.912, AUC 0.957`, or a
/// failure's first line of reason.
pub fn subject(facts: &JobFacts) -> String {
    let head = format!("[trainq] {} {}", facts.label(), facts.state);
    let tail = match facts.state {
        JobState::Succeeded => facts.scores(),
        _ => facts.error.as_deref().and_then(|error| error.lines().next()).map(|line| truncate(line, 120)),
    };
    let subject = match tail {
        Some(tail) if !tail.is_empty() => format!("{head} — {tail}"),
        _ => head,
    };
    // A name is one line already; a subject must be whatever it holds.
    subject.replace(['\r', '\n'], " ")
}

/// The email's plain-text body: the job, its state, its scores or why it failed, and the link.
pub fn body(facts: &JobFacts) -> String {
    let mut text = format!("{} {}.\n\n", facts.label(), facts.state);
    text.push_str(&format!("Job:   {}\n", facts.id));
    if let Some(owner) = &facts.owner {
        text.push_str(&format!("Owner: {owner}\n"));
    }
    text.push_str(&format!("State: {}\n", facts.state));
    if let Some(acc) = facts.test_acc {
        text.push_str(&format!("Test accuracy: {acc:.4}\n"));
    }
    if let Some(auc) = facts.test_auc {
        text.push_str(&format!("Test AUC:      {auc:.4}\n"));
    }
    if let Some(error) = &facts.error {
        // A timed-out job did not fail: it stopped at its limit, resumable with more time.
        let ended = if facts.state == JobState::Timeout { "stopped" } else { facts.state.as_str() };
        text.push_str(&format!("\nWhy it {ended}:\n{}\n", error.trim_end()));
    }
    text.push_str(&format!("\nOn the dashboard: {}\n", facts.url));
    text.push_str("\n-- \ntrainq sends this because the job's spec asks for it (\"notify\"); `trainq notify --off` stops all of them.\n");
    text
}

/// The webhook's JSON body for outbox row `delivery`.
pub fn webhook_body(facts: &JobFacts, delivery: i64) -> Vec<u8> {
    let body = serde_json::json!({
        "event": "job.finished",
        "job": {
            "id": facts.id,
            "name": facts.name,
            "owner": facts.owner,
            "state": facts.state,
            "test_acc": facts.test_acc,
            "test_auc": facts.test_auc,
            "error": facts.error,
            "url": facts.url,
        },
        "delivery": delivery,
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`, the value of [`SIGNATURE_HEADER`]. A receiver
/// computes the same over the bytes it got and compares in constant time.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

/// A stable Message-ID for outbox row `delivery`, so a receiver can tell a retried send of the
/// same message from a new one.
pub fn message_id(delivery: i64, job_id: &str, host: &str) -> String {
    format!("<trainq.{delivery}.{job_id}@{host}>")
}

/// At most `limit` characters of `text`, with an ellipsis when cut.
fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        let cut: String = text.chars().take(limit).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: JobState) -> JobFacts {
        JobFacts {
            id: String::from("5b0c1f2e-0000-4000-8000-000000000001"),
            name: String::from("q1-vgg16"),
            owner: Some(String::from("alice")),
            state,
            test_acc: None,
            test_auc: None,
            error: None,
            url: String::from("http://gpubox:8080/#job=5b0c1f2e-0000-4000-8000-000000000001"),
        }
    }

    #[test]
    fn a_success_names_the_job_its_scores_and_its_page() {
        let facts = JobFacts { test_acc: Some(0.9123), test_auc: Some(0.95678), ..facts(JobState::Succeeded) };
        assert_eq!(subject(&facts), "[trainq] q1-vgg16 succeeded — test acc 0.912, AUC 0.957");
        let text = body(&facts);
        for expected in
            ["q1-vgg16 succeeded.", "Test accuracy: 0.9123", "Test AUC:      0.9568", "http://gpubox:8080/#job=5b0c"]
        {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert_eq!(
            subject(&JobFacts { test_auc: None, ..facts.clone() }),
            "[trainq] q1-vgg16 succeeded — test acc 0.912"
        );
    }

    #[test]
    fn a_failure_says_why_with_the_log_tail_in_the_body_and_its_first_line_in_the_subject() {
        let error = "the worker exited with code 3\n--- last lines of the log ---\nloading data\ngiving up";
        let failed =
            JobFacts { error: Some(error.to_string()), name: String::from("bad\nname"), ..facts(JobState::Failed) };
        assert_eq!(subject(&failed), "[trainq] bad name failed — the worker exited with code 3");
        assert!(body(&failed).contains(
            "Why it failed:\nthe worker exited with code 3\n--- last lines of the log ---\nloading data\ngiving up\n"
        ));
        let nameless = JobFacts { name: String::new(), error: None, ..facts(JobState::Cancelled) };
        assert_eq!(subject(&nameless), "[trainq] job 5b0c1f2e cancelled");
    }

    #[test]
    fn the_webhook_body_carries_the_facts_and_is_signed_over_its_bytes() {
        let facts = JobFacts { test_acc: Some(0.5), ..facts(JobState::Succeeded) };
        let bytes = webhook_body(&facts, 42);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["event"], "job.finished");
        assert_eq!(value["delivery"], 42);
        assert_eq!(value["job"]["state"], "succeeded");
        assert_eq!(value["job"]["test_acc"], 0.5);
        assert_eq!(value["job"]["url"], facts.url);
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(message_id(42, &facts.id, "gpubox"), format!("<trainq.42.{}@gpubox>", facts.id));
    }
}

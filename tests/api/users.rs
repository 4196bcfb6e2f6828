//! Accounts over the API (issue 29): the admin's routes and their authorization, tokens that stop
//! at once when rotated or disabled, token expiry, a roster imported all or nothing by the client,
//! and the welcome mails against a real SMTP server (aiosmtpd, as in `notify.rs`): thirty students,
//! a kill -9 in the middle of the deliveries, the same roster twice, and no token in clear
//! anywhere in the database.

use crate::helpers::{app_with_worker, client_with, small_spec, Options, TestApp, FAKE_WORKER};
use crate::notify::{aiosmtpd_python, closed_port, eventually, notify_args, SmtpSink, PUBLIC_URL};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `method path` with `token`, the body as JSON; the status and the answer.
async fn call(app: &TestApp, token: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = client_with(token);
    let url = app.url(path);
    let request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PATCH" => client.patch(url),
        other => panic!("no method {other}"),
    };
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The `trainq` client with `token`, against `app`, in a home of its own.
fn trainq(app: &TestApp, home: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env("TRAINQ_URL", &app.address)
        .env("TRAINQ_TOKEN", token)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Every account name the admin's list shows.
async fn account_names(app: &TestApp) -> Vec<String> {
    let (status, list) = call(app, &app.tokens["root"], "GET", "/api/admin/users", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["users"].as_array().unwrap().iter().map(|user| user["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn students_get_403_on_every_admin_route_and_admins_see_every_account() {
    let (_scripts, app) = app_with_worker(FAKE_WORKER, 1);
    let alice = &app.tokens["alice"];
    let attempts = [
        ("GET", "/api/admin/users", None),
        ("POST", "/api/admin/users", Some(json!({"name": "mallory"}))),
        ("PATCH", "/api/admin/users/bob", Some(json!({"disabled": true}))),
        ("PATCH", "/api/admin/users/alice", Some(json!({"admin": true}))),
        ("POST", "/api/admin/users/bob/token", None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = call(&app, alice, method, path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(answer["detail"]["field"], "Authorization");
    }
    // Without a token: 401.
    let anonymous = reqwest::Client::new().get(app.url("/api/admin/users")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(!account_names(&app).await.contains(&String::from("mallory")), "nothing was created");

    // A finished job counts in its owner's line.
    let id = app.submit(&small_spec("counted")).await;
    app.wait_for_state(&id, "succeeded", WAIT).await;
    let (_, list) = call(&app, &app.tokens["root"], "GET", "/api/admin/users", None).await;
    let users = list["users"].as_array().unwrap();
    assert_eq!(account_names(&app).await, ["alice", "bob", "root"]);
    let alice_line = &users[0];
    assert_eq!((alice_line["role"].as_str(), alice_line["state"].as_str()), (Some("student"), Some("enabled")));
    assert_eq!(alice_line["jobs"], 1);
    assert!(alice_line["device_hours"].as_f64().unwrap() > 0.0, "{alice_line}");
    assert!(alice_line["last_request_at"].is_f64(), "{alice_line}");
    assert!(alice_line["disk_bytes"].is_u64());
    assert_eq!(users[2]["role"], "admin");
    assert!(users.iter().all(|user| user.get("token").is_none()));

    // Admins create one account, and change roles; an admin cannot lock themselves out.
    let root = &app.tokens["root"];
    let (status, created) =
        call(&app, root, "POST", "/api/admin/users", Some(json!({"name": "carol", "email": "carol@example.org"})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let carol = created["created"][0]["token"].as_str().unwrap().to_string();
    assert_eq!(call(&app, &carol, "GET", "/api/me", None).await.1["name"], "carol");
    let (status, changed) = call(&app, root, "PATCH", "/api/admin/users/carol", Some(json!({"admin": true}))).await;
    assert_eq!((status, changed["role"].as_str()), (StatusCode::OK, Some("admin")), "{changed}");
    assert_eq!(call(&app, &carol, "GET", "/api/admin/users", None).await.0, StatusCode::OK, "an admin at once");
    let (status, refused) = call(&app, root, "PATCH", "/api/admin/users/root", Some(json!({"disabled": true}))).await;
    assert_eq!((status, refused["detail"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("disabled")));
    let (status, unknown) = call(&app, root, "PATCH", "/api/admin/users/nobody", Some(json!({"disabled": true}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    let (status, unknown) = call(&app, root, "PATCH", "/api/admin/users/carol", Some(json!({"colour": 3}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{unknown}");
    assert!(unknown["detail"]["message"].as_str().unwrap().contains("colour"), "{unknown}");
}

#[tokio::test]
async fn a_rotated_or_disabled_token_answers_401_at_once_and_the_accounts_jobs_stay() {
    let (_scripts, app) = app_with_worker(FAKE_WORKER, 1);
    let root = app.tokens["root"].clone();
    let finished = app.submit(&small_spec("before")).await;
    app.wait_for_state(&finished, "succeeded", WAIT).await;

    // The old token is in the auth layer's memory (just used); the rotation drops it at once.
    let old = app.tokens["alice"].clone();
    assert_eq!(call(&app, &old, "GET", "/api/me", None).await.0, StatusCode::OK);
    let (status, rotated) = call(&app, &root, "POST", "/api/admin/users/alice/token", None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["token"].as_str().unwrap().to_string();
    let (status, refused) = call(&app, &old, "GET", "/api/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token at once: {refused}");
    assert_eq!(call(&app, &new, "GET", "/api/me", None).await.1["name"], "alice");

    // Disabled: 401 "account disabled" at once; the jobs stay; enabled again, the token works.
    assert_eq!(call(&app, &new, "GET", "/api/me", None).await.0, StatusCode::OK);
    let (status, account) = call(&app, &root, "PATCH", "/api/admin/users/alice", Some(json!({"disabled": true}))).await;
    assert_eq!((status, account["state"].as_str()), (StatusCode::OK, Some("disabled")), "{account}");
    let (status, refused) = call(&app, &new, "GET", "/api/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let message = refused["detail"]["message"].as_str().unwrap();
    assert!(message.starts_with("account disabled"), "{message}");
    let (status, refused) = call(&app, &new, "POST", "/api/jobs", Some(small_spec("after"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    let (status, job) = call(&app, &root, "GET", &format!("/api/jobs/{finished}"), None).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("succeeded")), "its finished job stays");
    let (status, _) = call(&app, &root, "PATCH", "/api/admin/users/alice", Some(json!({"disabled": false}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(&app, &new, "GET", "/api/me", None).await.0, StatusCode::OK);

    // A student rotates their own token with `trainq token rotate`: saved, and the old one stops.
    let home = tempfile::tempdir().unwrap();
    let bob_old = app.tokens["bob"].clone();
    assert_eq!(call(&app, &bob_old, "GET", "/api/me", None).await.0, StatusCode::OK);
    let login = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["login", &app.address, "--token-stdin"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_TOKEN")
        .env_remove("TRAINQ_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{bob_old}\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(login.status.success(), "{}", text(&login));
    let rotate = Command::new(env!("CARGO_BIN_EXE_trainq"))
        .args(["token", "rotate"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_TOKEN")
        .env_remove("TRAINQ_URL")
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", text(&rotate));
    assert_eq!(call(&app, &bob_old, "GET", "/api/me", None).await.0, StatusCode::UNAUTHORIZED);
    let saved = std::fs::read_to_string(home.path().join(".config/trainq/config.toml")).unwrap();
    let bob_new = saved.split('"').find(|part| part.starts_with("tq_")).unwrap().to_string();
    assert_ne!(bob_new, bob_old);
    assert_eq!(call(&app, &bob_new, "GET", "/api/me", None).await.1["name"], "bob");
    // The same through the API.
    let (status, own) = call(&app, &bob_new, "POST", "/api/me/token", None).await;
    assert_eq!((status, own["name"].as_str()), (StatusCode::OK, Some("bob")));
    assert_eq!(call(&app, &bob_new, "GET", "/api/me", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_older_than_the_ttl_answers_token_expired_with_the_hint() {
    // 0.0002 days: 17.28 s.
    let app = TestApp::spawn(Options {
        args: vec![String::from("--token-ttl-days"), String::from("0.0002")],
        ..Options::default()
    });
    let alice = app.tokens["alice"].clone();
    assert_eq!(call(&app, &alice, "GET", "/api/me", None).await.0, StatusCode::OK);
    let (_, rotated) = call(&app, &alice, "POST", "/api/me/token", None).await;
    let fresh = rotated["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(18)).await;
    let (status, refused) = call(&app, &fresh, "GET", "/api/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    let message = refused["detail"]["message"].as_str().unwrap();
    assert!(message.starts_with("token expired") && message.contains("trainq token rotate"), "{message}");
}

/// A roster of `count` students as a spreadsheet saves it: a BOM, CRLF, quoted fields with commas
/// in them, an empty line.
fn roster(count: usize) -> String {
    let mut text = String::from("\u{feff}name,full_name,email,admin\r\n");
    for n in 1..=count {
        text.push_str(&format!("student{n:02},\"Doe, Student {n}\",student{n:02}@example.org,\r\n"));
        if n == 3 {
            text.push_str("\r\n");
        }
    }
    text
}

#[tokio::test]
async fn a_roster_imports_all_or_nothing_and_the_same_roster_twice_creates_nothing() {
    let app = TestApp::spawn(Options::default());
    let root = app.tokens["root"].clone();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("roster.csv");
    std::fs::write(&file, roster(5)).unwrap();
    let first = trainq(&app, home.path(), &root, &["admin", "users", "import", file.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("created 5 accounts"), "{}", text(&first));
    // Without --send-tokens the tokens are in a file only the admin reads, and each one works.
    let written: Vec<std::path::PathBuf> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("roster-tokens-"))
        .collect();
    assert_eq!(written.len(), 1, "{}", text(&first));
    assert!(text(&first).contains(&written[0].display().to_string()), "it says where");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&written[0]).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let tokens = std::fs::read_to_string(&written[0]).unwrap();
    let lines: Vec<&str> = tokens.lines().skip(1).collect();
    assert_eq!(lines.len(), 5);
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let (status, me) = call(&app, fields[2], "GET", "/api/me", None).await;
        assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some(fields[0])));
        assert_eq!(me["email"].as_str(), Some(fields[1]));
    }
    let (_, list) = call(&app, &root, "GET", "/api/admin/users", None).await;
    let student = list["users"].as_array().unwrap().iter().find(|user| user["name"] == "student02").unwrap().clone();
    assert_eq!(student["full_name"], "Doe, Student 2", "the quoted comma stays in its field");

    // The same roster again: nothing new, and it says so.
    let again = trainq(&app, home.path(), &root, &["admin", "users", "import", file.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("nothing new: all 5 accounts exist already"), "{}", text(&again));
    let names = account_names(&app).await;
    assert_eq!(names.len(), 8);

    // Bad rosters: a 422 (or the client's error) naming the line and the field; nothing created.
    let cases: [(&str, &[u8], &str); 6] = [
        ("twice", b"name,email\nnew1,new1@example.org\nnew2,\nnew1,other@example.org\n", "line 4"),
        ("bad email", b"name,email\nnew1,new1@example.org\nnew2,new2@\n", "line 3"),
        ("unknown column", b"name,email,phone\nnew1,new1@example.org,555\n", "phone"),
        ("existing other email", b"name,email\nnew1,new1@example.org\nstudent01,elsewhere@example.org\n", "line 3"),
        ("binary garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\xff\xd8\xff", "not UTF-8"),
        ("bad name", b"name\nNew One\n", "line 2"),
    ];
    for (what, bytes, says) in cases {
        let bad = home.path().join(format!("{}.csv", what.replace(' ', "-")));
        std::fs::write(&bad, bytes).unwrap();
        let output = trainq(&app, home.path(), &root, &["admin", "users", "import", bad.to_str().unwrap()]);
        assert!(!output.status.success(), "{what}: {}", text(&output));
        assert!(text(&output).contains(says), "{what}: {}", text(&output));
        assert_eq!(account_names(&app).await, names, "{what}: nothing was created");
    }

    // The same checks answer JSON clients with a 422 naming the row and field.
    let bodies = [
        (json!([{"name": "new1"}, {"name": "new1"}]), "[1].name"),
        (json!([{"name": "new1", "email": "x"}]), "[0].email"),
        (json!([{"name": "new1", "phone": "555"}]), "[0].phone"),
        (json!([{"name": "new1"}, {"name": "student01", "email": "elsewhere@example.org", "line": 9}]), "[1].email"),
        (json!({"name": "student01", "email": "student01@example.org", "admin": true}), "admin"),
        (json!([]), "(body)"),
        (json!("garbage"), "(body)"),
    ];
    for (body, field) in bodies {
        let (status, answer) = call(&app, &root, "POST", "/api/admin/users", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["detail"]["field"], field, "{body}: {answer}");
    }
    let (_, answer) = call(
        &app,
        &root,
        "POST",
        "/api/admin/users",
        Some(json!([{"name": "student01", "email": "e@example.org", "line": 9}])),
    )
    .await;
    assert!(answer["detail"]["message"].as_str().unwrap().starts_with("line 9:"), "{answer}");
    assert_eq!(account_names(&app).await, names);
}

/// The token a welcome mail carries.
fn token_in(mail: &Value) -> String {
    let body = mail["body"].as_str().unwrap();
    let start = body.find("tq_").expect("a token in the mail");
    body[start..start + 67].to_string()
}

/// Each student's welcome mails, oldest first.
fn welcomes_by_student(sink: &SmtpSink) -> HashMap<String, Vec<Value>> {
    let mut by_student: HashMap<String, Vec<Value>> = HashMap::new();
    for mail in sink.messages() {
        assert!(mail["subject"].as_str().unwrap().contains("your account"), "{mail}");
        let to = mail["rcpt_tos"][0].as_str().unwrap();
        by_student.entry(to.split('@').next().unwrap().to_string()).or_default().push(mail);
    }
    by_student
}

/// Every student has a mail; the newest one's token logs in as them and any earlier one's does
/// not. Returns every token mailed.
async fn newest_welcome_logs_in(app: &TestApp, sink: &SmtpSink, count: usize) -> Vec<String> {
    let by_student = welcomes_by_student(sink);
    assert_eq!(by_student.len(), count, "every student got mail");
    let mut every = Vec::new();
    for (student, mails) in &by_student {
        let newest = token_in(mails.last().unwrap());
        let (status, me) = call(app, &newest, "GET", "/api/me", None).await;
        assert_eq!((status, me["name"].as_str()), (StatusCode::OK, Some(student.as_str())), "{student}");
        let body = mails.last().unwrap()["body"].as_str().unwrap();
        assert!(body.contains(&format!("echo '{newest}' | trainq login {PUBLIC_URL} --token-stdin")), "{body}");
        assert!(body.contains("replaces any token sent to you before"), "{body}");
        for older in &mails[..mails.len() - 1] {
            assert_eq!(call(app, &token_in(older), "GET", "/api/me", None).await.0, StatusCode::UNAUTHORIZED);
        }
        every.extend(mails.iter().map(token_in));
    }
    every
}

/// No token appears in any column of any table, nor in the database's files.
async fn no_token_in_clear(data: &Path, tokens: &[String]) {
    let store = trainq::store::Store::open(data).await.unwrap();
    let values = store.every_stored_value().await.unwrap();
    assert!(values.len() > 30, "the scan read the tables");
    for token in tokens {
        let secret = &token[3..];
        assert!(values.iter().all(|value| !value.contains(secret)), "a token in clear in the database");
    }
    drop(store);
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(tokens.iter().all(|token| !bytes.contains(&token[3..])), "a token in {}", path.display());
        }
    }
}

#[tokio::test]
async fn thirty_students_get_one_welcome_each_whose_token_logs_in_and_none_is_stored_in_clear() {
    let Some(python) = aiosmtpd_python() else { return };
    let mail = tempfile::tempdir().unwrap();
    let smtp_port = closed_port();
    let sink = SmtpSink::start(&python, smtp_port, mail.path());
    let app = TestApp::spawn(Options { args: notify_args(smtp_port, "1", "12"), ..Options::default() });
    let root = app.tokens["root"].clone();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("roster.csv");
    std::fs::write(&file, roster(30)).unwrap();
    let import =
        trainq(&app, home.path(), &root, &["admin", "users", "import", "--send-tokens", file.to_str().unwrap()]);
    assert!(import.status.success(), "{}", text(&import));
    assert!(text(&import).contains("created 30 accounts; 30 get their token by mail"), "{}", text(&import));
    eventually("30 welcome mails", WAIT, || sink.messages().len() >= 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.messages();
    assert_eq!(mails.len(), 30, "one each");
    let ids: HashSet<&str> = mails.iter().map(|mail| mail["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 30, "30 distinct Message-IDs");
    let mut tokens = newest_welcome_logs_in(&app, &sink, 30).await;

    // The mail's own line logs a student in.
    let line = format!("echo '{}' | trainq login {} --token-stdin", token_in(&mails[6]), app.address);
    let bin = Path::new(env!("CARGO_BIN_EXE_trainq")).parent().unwrap();
    let login = Command::new("sh")
        .args(["-c", &line])
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TRAINQ_TOKEN")
        .env_remove("TRAINQ_URL")
        .output()
        .unwrap();
    assert!(login.status.success() && text(&login).contains("logged in"), "{}", text(&login));

    // The same roster twice: nothing new, no mail.
    let again =
        trainq(&app, home.path(), &root, &["admin", "users", "import", "--send-tokens", file.to_str().unwrap()]);
    assert!(text(&again).contains("nothing new: all 30 accounts exist already"), "{}", text(&again));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.messages().len(), 30);

    // The outbox rows name the users and hold no token; neither does any other table.
    let (_, outbox) = call(&app, &root, "GET", "/api/admin/notifications?state=delivered", None).await;
    let rows = outbox["notifications"].as_array().unwrap();
    assert_eq!(rows.iter().filter(|row| row["event"] == "welcome").count(), 30, "{outbox}");
    tokens.extend(app.tokens.values().cloned());
    no_token_in_clear(&app.root.join("data"), &tokens).await;
}

#[tokio::test]
async fn a_kill_9_in_the_middle_of_the_welcome_mails_still_gives_every_student_a_working_token() {
    let Some(python) = aiosmtpd_python() else { return };
    let mail = tempfile::tempdir().unwrap();
    let smtp_port = closed_port();
    // Each message takes 0.3 s to be accepted: 30 of them, 8 at a time, take over a second.
    let sink = SmtpSink::start_slow(&python, smtp_port, mail.path(), 0.3);
    let options = Options { args: notify_args(smtp_port, "1", "12"), ..Options::default() };
    let mut app = TestApp::spawn(options.clone());
    let temp = app.take_temp();
    let root_dir = app.root.clone();
    let rows: Vec<Value> = (1..=30)
        .map(
            |n| json!({"name": format!("student{n:02}"), "email": format!("student{n:02}@example.org"), "line": n + 1}),
        )
        .collect();
    let (status, report) =
        call(&app, &app.tokens["root"], "POST", "/api/admin/users?send_tokens=true", Some(Value::Array(rows))).await;
    assert_eq!((status, report["welcome_mails"].as_u64()), (StatusCode::CREATED, Some(30)), "{report}");
    assert!(
        report["created"].as_array().unwrap().iter().all(|account| account.get("token").is_none()),
        "mailed, not answered"
    );
    eventually("the first welcome mails", WAIT, || !sink.messages().is_empty()).await;
    unsafe { libc::kill(app.pid(), libc::SIGKILL) };
    app.process.wait().unwrap();
    let at_kill = sink.messages().len();
    println!("{at_kill} of 30 welcome mails were accepted when the server was killed");
    assert!(at_kill < 30, "the kill came in the middle of the deliveries");
    drop(app);

    let app = TestApp::spawn_in(&root_dir, options);
    eventually("a welcome mail for every student", WAIT, || welcomes_by_student(&sink).len() == 30).await;
    // Mails the dead server had sent but not recorded go out again; wait until the outbox is done.
    let root = app.tokens["root"].clone();
    let started = std::time::Instant::now();
    loop {
        let (_, pending) = call(&app, &root, "GET", "/api/admin/notifications?state=pending", None).await;
        if pending["notifications"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(started.elapsed() < WAIT, "the outbox never emptied: {pending}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tokens = newest_welcome_logs_in(&app, &sink, 30).await;
    tokens.extend(app.tokens.values().cloned());
    no_token_in_clear(&root_dir.join("data"), &tokens).await;
    drop(app);
    drop(temp);
}

//! A tiny HTTP/1.1 server for the tests that run a real binary against one (`trainq relay`,
//! `trainq weights fetch`): every connection carries one request, answered by a closure.
// Each test crate that includes this uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// What the client sent.
pub struct Request {
    /// The request target, e.g. `/api/worker/jobs/…/lines`.
    pub path: String,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(String, String)>,
    /// `content-length` bytes of body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header, _)| header == name).map(|(_, value)| value.as_str())
    }
}

/// The answer: a status line's text (`200 OK`), extra headers and a body.
pub struct Reply {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Arc<Vec<u8>>,
}

impl Reply {
    /// `200 OK` with `body`.
    pub fn ok(body: &Arc<Vec<u8>>) -> Reply {
        Reply { status: "200 OK", headers: Vec::new(), body: Arc::clone(body) }
    }

    /// `status` with a short text body.
    pub fn text(status: &'static str, body: &str) -> Reply {
        Reply { status, headers: Vec::new(), body: Arc::new(body.as_bytes().to_vec()) }
    }
}

/// Serves every connection on 127.0.0.1:<free port> with `handle`; returns the base URL. The
/// thread ends with the test process.
pub fn serve(handle: impl Fn(Request) -> Reply + Send + 'static) -> String {
    serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), handle)
}

/// Serves every connection on `listener` with `handle` (a test that needs its port known before
/// the server is up binds it itself); returns the base URL.
pub fn serve_on(listener: TcpListener, handle: impl Fn(Request) -> Reply + Send + 'static) -> String {
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut headers = Vec::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).is_err() {
                    break;
                }
                let Some((name, value)) = line.trim_end().split_once(": ") else { break };
                headers.push((name.to_ascii_lowercase(), value.to_string()));
            }
            let mut request = Request { path, headers, body: Vec::new() };
            let length = request.header("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
            request.body = vec![0; length];
            if reader.read_exact(&mut request.body).is_err() {
                continue;
            }
            let reply = handle(request);
            let mut head =
                format!("HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n", reply.status, reply.body.len());
            for (name, value) in &reply.headers {
                head += &format!("{name}: {value}\r\n");
            }
            head += "\r\n";
            // The client may hang up early on a failure; that is its business.
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&reply.body));
        }
    });
    base
}

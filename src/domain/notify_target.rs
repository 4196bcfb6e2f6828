//! Where a user's notifications go, checked before it is stored: an email address, a webhook URL
//! and the webhook's signing secret. Each check's error says what is wrong and what to send.

/// The shortest webhook secret: 16 characters (about 96 bits if random; `openssl rand -hex 32`
/// gives 64).
pub const MIN_SECRET_LEN: usize = 16;
/// The longest webhook secret accepted.
pub const MAX_SECRET_LEN: usize = 256;

/// Checks an email address's shape: `local@domain`, no spaces or angle brackets, at most 254
/// characters, the domain letters, digits, `-` and dots (no display name: just the address).
pub fn check_email(address: &str) -> Result<(), String> {
    let fix = "send an address like `alice@example.org`, or null for no email";
    if address.len() > 254 {
        return Err(format!("an email address has at most 254 characters; {fix}"));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err(format!("`{address}` has no `@`; {fix}"));
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\\' | '"' | '@')
        });
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(format!("`{address}` is not an email address; {fix}"))
    }
}

/// Checks a webhook URL: `http://` or `https://` with a host, at most 2000 characters.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let fix = "send an http:// or https:// URL, e.g. `https://hooks.example.org/trainq`";
    if url.len() > 2000 {
        return Err(format!("a webhook URL has at most 2000 characters; {fix}"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL ({err}); {fix}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{}` URLs cannot receive webhooks; {fix}", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host; {fix}"));
    }
    Ok(())
}

/// Checks a webhook's signing secret: 16 to 256 printable characters without spaces.
pub fn check_webhook_secret(secret: &str) -> Result<(), String> {
    let length = secret.chars().count();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&length) {
        return Err(format!(
            "the secret has {length} characters; send {MIN_SECRET_LEN} to {MAX_SECRET_LEN} (e.g. the output of `openssl rand -hex 32`)"
        ));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(String::from(
            "the secret must be printable ASCII without spaces (e.g. the output of `openssl rand -hex 32`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_urls_and_secrets_are_checked() {
        for good in ["alice@example.org", "a.b+tag@mail.uni-x.edu", "root@localhost"] {
            assert_eq!(check_email(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "alice@exa mple.org",
            "Alice <alice@example.org>",
            "a@b@c",
            "alice@-x.org",
            "alice@x..org",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert_eq!(check_webhook_url("https://hooks.example.org/trainq?x=1"), Ok(()));
        assert_eq!(check_webhook_url("http://127.0.0.1:9000/"), Ok(()));
        for bad in ["", "hooks.example.org", "ftp://hooks.example.org", "file:///etc/passwd", "http://"] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
        assert_eq!(check_webhook_secret("0123456789abcdef"), Ok(()));
        assert!(check_webhook_secret("short").unwrap_err().contains("5 characters"));
        assert!(check_webhook_secret("0123456789 abcdef").is_err());
        assert!(check_webhook_secret(&"x".repeat(257)).is_err());
    }
}

//! Every line `dlock` writes to stderr goes through [`say`], which removes passwords: the
//! ones given in URLs (remembered with [`secret`]) wherever they appear, and the user-info
//! part of any URL (`scheme://user:password@host` → `scheme://***@host`), so that an error
//! quoting a URL, from dlock or from a client library, cannot show one.

use std::sync::Mutex;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers a password so that no message shows it.
pub fn secret(password: &str) {
    // A very short password would blank out ordinary letters; the URL scrubbing still hides
    // it wherever it appears as a URL's user info.
    if password.len() >= 3 {
        let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
        secrets.push(password.to_owned());
        secrets.push(percent_decoded(password));
    }
}

/// `text` without any password: user info of URLs, and every remembered secret.
pub fn redact(text: &str) -> String {
    let mut out = scrub_user_info(text);
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// Prints `dlock: <message>` on stderr, redacted.
pub fn say(message: &str) {
    eprintln!("dlock: {}", redact(message));
}

fn scrub_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == ',' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_removed_from_every_url() {
        let text =
            "cannot reach redis://alice:s3cret@db:6379/0 or http://bob:pw@e1:2379,http://e2:2379";
        let shown = scrub_user_info(text);
        assert_eq!(
            shown,
            "cannot reach redis://***@db:6379/0 or http://***@e1:2379,http://e2:2379"
        );
    }

    #[test]
    fn remembered_secrets_are_removed_anywhere() {
        secret("hunter%212");
        assert_eq!(redact("auth hunter!2 failed"), "auth *** failed");
    }
}

//! A refused right, told apart from other backend errors: a Redis ACL user without the
//! command, key or channel (`NOPERM`), an etcd user whose role does not cover the key
//! (`permission denied`). Such an error is not transient, so it becomes
//! [`Error::PermissionDenied`] with the server's own words instead of an opaque
//! [`Error::Backend`].
//!
//! [`Context::call`](super::Context::call) applies [`refused_right`] to every bounded call,
//! so a backend gets the mapping by calling the server through it; an error read elsewhere
//! (a stream, a background task) can be passed through [`refused_right`] by hand.

use crate::error::{BoxError, Error};

/// `Error::Backend` whose source is a refused right → `Error::PermissionDenied`, with the
/// same backend and key; every other error unchanged.
pub(crate) fn refused_right(error: Error) -> Error {
    match error {
        Error::Backend {
            backend,
            key,
            source,
        } => match detail(&source) {
            Some(detail) => Error::PermissionDenied {
                backend,
                key,
                detail,
            },
            None => Error::Backend {
                backend,
                key,
                source,
            },
        },
        other => other,
    }
}

/// The server's explanation, when `source` is a refused right of a client we know.
#[cfg_attr(
    not(any(feature = "redis", feature = "etcd", feature = "postgres")),
    allow(unused_variables)
)]
fn detail(source: &BoxError) -> Option<String> {
    #[cfg(feature = "redis")]
    if let Some(e) = source.downcast_ref::<redis::RedisError>() {
        if let Some(detail) = redis_noperm(e) {
            return Some(detail);
        }
    }
    #[cfg(feature = "etcd")]
    if let Some(etcd_client::Error::GRpcStatus(status)) = source.downcast_ref() {
        // gRPC code 7, PERMISSION_DENIED: etcd's `etcdserver: permission denied` (a key or
        // range outside the user's roles) and its admin-only calls.
        if i32::from(status.code()) == 7 {
            return Some(status.message().to_owned());
        }
    }
    #[cfg(feature = "postgres")]
    if let Some(sqlx::Error::Database(e)) = source.downcast_ref::<sqlx::Error>() {
        // SQLSTATE 42501, insufficient_privilege: a role without a right on dlock's table,
        // sequence or functions.
        if e.code().as_deref() == Some("42501") {
            return Some(e.message().to_owned());
        }
    }
    None
}

/// Redis answers `-NOPERM <what>` to a command, key or channel outside the user's ACL.
/// A command called from a script is checked against the caller too, and Redis 7.0 words
/// that refusal `The user executing the script can't run this command ... script: <sha>, on
/// @user_script:<line>`, without the command's name: it is read from that line of our script.
#[cfg(feature = "redis")]
pub(crate) fn redis_noperm(e: &redis::RedisError) -> Option<String> {
    let text = e.to_string();
    if e.code() == Some("NOPERM") {
        let detail = format!("NOPERM {}", e.detail().unwrap_or_default());
        return Some(detail.trim().to_owned());
    }
    if !text.contains("The user executing the script can't") && !text.contains("NOPERM") {
        return None;
    }
    Some(match script_command(&text) {
        Some(command) => format!("{text} (the script's `{command}` call)"),
        None => text,
    })
}

/// The command called on the line of one of our scripts that an error names
/// (`script: <sha1>, on @user_script:<line>`).
#[cfg(feature = "redis")]
fn script_command(error: &str) -> Option<String> {
    use std::sync::LazyLock;
    static SCRIPTS: LazyLock<Vec<(String, &'static str)>> = LazyLock::new(|| {
        [
            include_str!("redis/obtain.lua"),
            include_str!("redis/refresh.lua"),
            include_str!("redis/refresh_many.lua"),
            include_str!("redis/release.lua"),
        ]
        .into_iter()
        .map(|source| (redis::Script::new(source).get_hash().to_owned(), source))
        .collect()
    });
    let (_, source) = SCRIPTS
        .iter()
        .find(|(sha, _)| error.contains(sha.as_str()))?;
    let line: usize = error
        .split("@user_script:")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let code = source.lines().nth(line.checked_sub(1)?)?;
    let call = code.split("redis.call(").nth(1)?;
    let command = call.split(['\'', '"']).nth(1)?;
    Some(command.to_owned())
}

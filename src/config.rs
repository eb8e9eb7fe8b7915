//! `Config` and `Driver`: what the Go component reads from YAML/JSON, validated once.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Shortest TTL accepted: renewal runs every TTL/3 and needs a few round trips of slack.
///
/// ```
/// let config = dlock::Config { default_ttl: dlock::MIN_TTL, ..Default::default() };
/// assert!(config.validate().is_ok());
/// ```
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest TTL accepted. A TTL is a failure-detection window, not a hold time: locks are
/// renewed while held, so a longer TTL only delays recovery after a crash.
///
/// ```
/// let too_long = dlock::MAX_TTL + std::time::Duration::from_secs(1);
/// let config = dlock::Config { default_ttl: too_long, ..Default::default() };
/// assert!(config.validate().is_err());
/// ```
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest key (and longest prefix) accepted, in bytes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
/// let key = "k".repeat(dlock::MAX_KEY_LEN + 1);
/// assert!(matches!(locker.try_lock(&key).await, Err(dlock::Error::InvalidKey { .. })));
/// # }
/// ```
pub const MAX_KEY_LEN: usize = 1024;
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// Which backend a [`Locker`](crate::Locker) talks to.
///
/// Written in YAML/JSON as `redis`, `etcd`, `postgres`, `memory` or `custom`.
///
/// ```
/// let driver: dlock::Driver = serde_json::from_str("\"etcd\"").unwrap();
/// assert_eq!(driver, dlock::Driver::Etcd);
/// assert_eq!(driver.to_string(), "etcd");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Driver {
    /// Redis (single node, or Cluster): `SET NX PX` with a token, renewed by the locker's engine.
    Redis,
    /// etcd: a key attached to a lease kept alive, waiters queued by revision.
    Etcd,
    /// PostgreSQL: one row per holder in `dlock_locks`, with an expiry by the server's clock.
    Postgres,
    /// In-process: the same semantics inside one process, for tests and examples.
    Memory,
    /// A backend given with `LockerBuilder::backend` (feature `unstable-backend`), such as
    /// one written outside this crate.
    Custom,
}

impl Driver {
    /// The name used in config files, logs and metric labels.
    ///
    /// ```
    /// assert_eq!(dlock::Driver::Redis.as_str(), "redis");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Redis => "redis",
            Driver::Etcd => "etcd",
            Driver::Postgres => "postgres",
            Driver::Memory => "memory",
            Driver::Custom => "custom",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The locker's configuration, with the Go component's field names.
///
/// Durations are written as humantime strings (`"10s"`, `"100ms"`). `driver` must be
/// given in files; the other fields default to `prefix: "dlock:"`, `default_ttl: 10s`,
/// `retry_interval: 100ms`. Unknown fields are refused. Values are checked once, by
/// [`LockerBuilder::build`](crate::LockerBuilder::build) (or [`Config::validate`]).
///
/// ```
/// use std::time::Duration;
///
/// let config = dlock::Config::from_yaml(
///     "driver: redis\nprefix: \"myapp:lock:\"\ndefault_ttl: 10s\nretry_interval: 100ms\n",
/// )
/// .unwrap();
/// assert_eq!(config.driver, dlock::Driver::Redis);
/// assert_eq!(config.default_ttl, Duration::from_secs(10));
///
/// // Or in code, starting from the defaults:
/// let config = dlock::Config { prefix: "myapp:lock:".into(), ..Default::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The backend: `redis`, `etcd`, `memory`, or `custom` for one given with
    /// `LockerBuilder::backend`.
    pub driver: Driver,
    /// Global prefix of every lock key, such as `"myapp:lock:"`. May be empty.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TTL of a lock when [`LockOptions::ttl`](crate::LockOptions::ttl) is not given. The lock
    /// is renewed every TTL/3 while held; the TTL bounds how long a crashed holder blocks others.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Polling interval of a waiting `lock()`. Waiters are also woken by releases; polling is
    /// the safety net for expiries and lost notifications. Jittered by ±20 %.
    #[serde(default = "default_retry_interval", with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Redis only: after each acquisition and renewal, wait until this many replicas have
    /// the write (`WAIT`), or treat it as failed. Off (`None`) by default: with no replica,
    /// no acknowledgement can ever come. See [`ReplicaAck`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_ack: Option<ReplicaAck>,
}

/// How many Redis replicas must acknowledge a lock before it counts as acquired (or renewed),
/// and how long to wait for them: `WAIT <replicas> <timeout>`, sent with the lock's script.
///
/// If fewer replicas acknowledge within `timeout`, an acquisition is undone (token-checked
/// release) and the attempt fails with [`Error::Backend`](crate::Error::Backend) ("only 0 of
/// 1 replicas acknowledged ..."); a renewal counts as unconfirmed, so the engine retries it
/// until the lock's safety deadline and then fires `lost()`. A lock is safe from a failover
/// only if the replica that gets promoted is one that acknowledged it: ask for as many
/// replicas as can be promoted.
///
/// In YAML: `replica_ack: { replicas: 1, timeout: 100ms }`.
///
/// ```
/// use std::time::Duration;
/// let config = dlock::Config::from_yaml(
///     "driver: redis\nreplica_ack:\n  replicas: 2\n  timeout: 100ms\n",
/// )
/// .unwrap();
/// assert_eq!(config.replica_ack, Some(dlock::ReplicaAck::new(2, Duration::from_millis(100))));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAck {
    /// How many replicas must have the write: 1 ..= [`MAX_REPLICA_ACKS`].
    pub replicas: u32,
    /// How long to wait for them: 1 ms up to the useful time of an attempt (90 % of
    /// `default_ttl`); also cut to what is left of each call's useful time.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl ReplicaAck {
    /// `replicas` acknowledgements within `timeout`.
    pub fn new(replicas: u32, timeout: Duration) -> Self {
        ReplicaAck { replicas, timeout }
    }
}

/// Most permits a semaphore may have ([`Locker::semaphore`](crate::Locker::semaphore)): a
/// larger number is refused with [`Error::InvalidPermits`](crate::Error::InvalidPermits). A
/// semaphore's bookkeeping on the server grows with its holders, never beyond this.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
/// let too_many = locker.semaphore("s", dlock::MAX_PERMITS + 1).try_acquire().await;
/// assert!(matches!(too_many, Err(dlock::Error::InvalidPermits { .. })));
/// # }
/// ```
pub const MAX_PERMITS: u32 = 10_000;

/// Most replica acknowledgements [`ReplicaAck::replicas`] may ask for; more is a typo.
pub const MAX_REPLICA_ACKS: u32 = 64;

fn default_prefix() -> String {
    "dlock:".to_owned()
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_interval() -> Duration {
    Duration::from_millis(100)
}

impl Default for Config {
    /// The in-process driver with the default prefix, TTL and retry interval.
    fn default() -> Self {
        Config {
            driver: Driver::Memory,
            prefix: default_prefix(),
            default_ttl: default_ttl(),
            retry_interval: default_retry_interval(),
            replica_ack: None,
        }
    }
}

impl Config {
    /// A config for `driver` with the defaults for everything else.
    ///
    /// ```
    /// let config = dlock::Config::new(dlock::Driver::Etcd);
    /// assert_eq!(config.prefix, "dlock:");
    /// ```
    pub fn new(driver: Driver) -> Self {
        Config {
            driver,
            ..Config::default()
        }
    }

    /// Parses a YAML document; errors name the offending field.
    ///
    /// ```
    /// let err = dlock::Config::from_yaml("driver: redis\ndefault_ttl: soon\n").unwrap_err();
    /// assert!(err.to_string().contains("default_ttl"), "{err}");
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| parse_error("yaml", e))
    }

    /// Parses a JSON document; errors name the offending field.
    ///
    /// ```
    /// let config = dlock::Config::from_json(r#"{"driver":"etcd","default_ttl":"30s"}"#).unwrap();
    /// assert_eq!(config.default_ttl.as_secs(), 30);
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| parse_error("json", e))
    }

    /// Reads a `.yaml`/`.yml` or `.json` file.
    ///
    /// ```no_run
    /// let config = dlock::Config::from_file("examples/config.yaml").unwrap();
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig {
            field: "<file>".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Config::from_json(&text),
            _ => Config::from_yaml(&text),
        }
    }

    /// Checks every field; [`LockerBuilder::build`](crate::LockerBuilder::build) calls it.
    ///
    /// ```
    /// let config = dlock::Config { default_ttl: std::time::Duration::ZERO, ..Default::default() };
    /// assert!(matches!(config.validate(), Err(dlock::Error::InvalidConfig { .. })));
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.prefix.len() > MAX_KEY_LEN {
            return Err(invalid(
                "prefix",
                format!("is {} bytes; at most {MAX_KEY_LEN}", self.prefix.len()),
            ));
        }
        check_ttl(self.default_ttl).map_err(|reason| invalid("default_ttl", reason))?;
        if self.retry_interval < Duration::from_millis(1)
            || self.retry_interval > MAX_RETRY_INTERVAL
        {
            return Err(invalid(
                "retry_interval",
                format!(
                    "is {:?}; must be between 1ms and 1h (omit it for the 100ms default)",
                    self.retry_interval
                ),
            ));
        }
        if let Some(ack) = &self.replica_ack {
            check_replica_ack(self.driver, self.default_ttl, ack)
                .map_err(|reason| invalid("replica_ack", reason))?;
        }
        Ok(())
    }
}

fn check_replica_ack(
    driver: Driver,
    default_ttl: Duration,
    ack: &ReplicaAck,
) -> std::result::Result<(), String> {
    if !matches!(driver, Driver::Redis) {
        return Err(format!(
            "applies to the redis driver only (driver is {driver}); remove it"
        ));
    }
    if ack.replicas == 0 || ack.replicas > MAX_REPLICA_ACKS {
        return Err(format!(
            "replicas is {}; must be between 1 and {MAX_REPLICA_ACKS} (omit replica_ack to turn it off)",
            ack.replicas
        ));
    }
    // An acknowledgement that may come after the safety deadline (90 % of the TTL, see
    // `Request::useful_for`) could not give a guard.
    let useful = default_ttl - default_ttl / 10;
    if ack.timeout < Duration::from_millis(1) || ack.timeout >= useful {
        return Err(format!(
            "timeout is {:?}; must be at least 1ms and less than 90% of default_ttl ({useful:?})",
            ack.timeout
        ));
    }
    Ok(())
}

/// The TTL rule shared by the config and per-lock options.
pub(crate) fn check_ttl(ttl: Duration) -> std::result::Result<(), String> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(format!(
            "is {ttl:?}; must be between {MIN_TTL:?} and {}h",
            MAX_TTL.as_secs() / 3600
        ));
    }
    Ok(())
}

fn invalid(field: &str, reason: String) -> Error {
    Error::InvalidConfig {
        field: field.to_owned(),
        reason,
    }
}

fn parse_error<E: fmt::Display>(format: &str, e: serde_path_to_error::Error<E>) -> Error {
    let path = e.path().to_string();
    let field = if path.is_empty() || path == "." {
        format!("<{format}>")
    } else {
        path
    };
    Error::InvalidConfig {
        field,
        reason: e.into_inner().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_all_fields() {
        let c = Config::from_yaml(
            "driver: etcd\nprefix: \"app:\"\ndefault_ttl: 30s\nretry_interval: 250ms\n",
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                driver: Driver::Etcd,
                prefix: "app:".into(),
                default_ttl: Duration::from_secs(30),
                retry_interval: Duration::from_millis(250),
                replica_ack: None,
            }
        );
    }

    #[test]
    fn json_defaults_missing_fields() {
        let c = Config::from_json(r#"{"driver":"redis"}"#).unwrap();
        assert_eq!(c, Config::new(Driver::Redis));
    }

    #[test]
    fn driver_is_required_in_files() {
        let err = Config::from_json(r#"{"prefix":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("driver"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Config::from_yaml("driver: redis\nttl: 5s\n").unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[test]
    fn bad_durations_name_the_field() {
        for bad in ["-5s", "soon", "10 parsecs", "5"] {
            let err = Config::from_yaml(&format!("driver: redis\nretry_interval: \"{bad}\"\n"))
                .unwrap_err();
            match &err {
                Error::InvalidConfig { field, .. } => {
                    assert_eq!(field, "retry_interval", "{bad}: {err}")
                }
                other => panic!("{bad}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_driver_is_refused() {
        let err = Config::from_yaml("driver: zookeeper\n").unwrap_err();
        assert!(err.to_string().contains("driver"), "{err}");
    }

    #[test]
    fn round_trips_through_yaml_and_json() {
        let c = Config {
            driver: Driver::Redis,
            prefix: "p:".into(),
            default_ttl: Duration::from_millis(1500),
            retry_interval: Duration::from_millis(20),
            replica_ack: Some(ReplicaAck::new(2, Duration::from_millis(50))),
        };
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(Config::from_yaml(&yaml).unwrap(), c, "{yaml}");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::from_json(&json).unwrap(), c, "{json}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                Config {
                    default_ttl: Duration::ZERO,
                    ..Default::default()
                },
                "default_ttl",
            ),
            (
                Config {
                    default_ttl: Duration::from_nanos(1),
                    ..Default::default()
                },
                "default_ttl",
            ),
            (
                Config {
                    default_ttl: Duration::MAX,
                    ..Default::default()
                },
                "default_ttl",
            ),
            (
                Config {
                    retry_interval: Duration::ZERO,
                    ..Default::default()
                },
                "retry_interval",
            ),
            (
                Config {
                    prefix: "x".repeat(MAX_KEY_LEN + 1),
                    ..Default::default()
                },
                "prefix",
            ),
        ];
        for (config, expected) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, expected),
                other => panic!("expected InvalidConfig({expected}), got {other:?}"),
            }
        }
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn replica_ack_is_off_unless_given() {
        let c = Config::from_yaml("driver: redis\n").unwrap();
        assert_eq!(
            c.replica_ack, None,
            "existing configs must keep parsing, with it off"
        );
        let c = Config::from_json(
            r#"{"driver":"redis","replica_ack":{"replicas":1,"timeout":"250ms"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.replica_ack,
            Some(ReplicaAck::new(1, Duration::from_millis(250)))
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn absurd_replica_acks_name_the_field() {
        let redis = |replicas, timeout| Config {
            replica_ack: Some(ReplicaAck::new(replicas, timeout)),
            ..Config::new(Driver::Redis)
        };
        let ms = Duration::from_millis;
        let cases = [
            (redis(0, ms(100)), "between 1 and"),
            (redis(MAX_REPLICA_ACKS + 1, ms(100)), "between 1 and"),
            (redis(1, Duration::ZERO), "at least 1ms"),
            // 90 % of the default 10 s TTL: an acknowledgement after it is useless.
            (redis(1, ms(9_000)), "less than 90% of default_ttl"),
            (
                Config {
                    replica_ack: Some(ReplicaAck::new(1, ms(100))),
                    ..Config::new(Driver::Etcd)
                },
                "redis driver only",
            ),
        ];
        for (config, expected) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field, reason }) => {
                    assert_eq!(field, "replica_ack", "{reason}");
                    assert!(reason.contains(expected), "{reason}");
                }
                other => panic!("expected InvalidConfig(replica_ack), got {other:?}"),
            }
        }
        let err = Config::from_yaml("driver: redis\nreplica_ack: {replicas: 1, timeout: soon}\n")
            .unwrap_err();
        assert!(err.to_string().contains("replica_ack"), "{err}");
        let err = Config::from_yaml("driver: redis\nreplica_ack: {replicas: 1}\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }
}

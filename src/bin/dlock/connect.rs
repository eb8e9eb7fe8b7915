//! From flags, environment and config file to a `Locker`: which server, at which URL, with
//! which config. Every problem is a [`Failure`] with its exit status; URLs are redacted when
//! printed (see `redact`), and their passwords remembered as secrets first.

use std::path::PathBuf;
use std::time::Duration;

use dlock::{Config, Driver, Locker};

use crate::exit::{self, Failure};
use crate::redact;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the locks live.
#[derive(Debug)]
enum Endpoint {
    Redis(String),
    Etcd(Vec<String>),
}

/// The server and the config to lock with.
#[derive(Debug)]
pub struct Server {
    config: Config,
    endpoint: Endpoint,
}

impl Server {
    /// Flags first, then the config file's driver, then the environment.
    pub fn from_flags(
        redis: Option<String>,
        etcd: Option<String>,
        config_file: Option<PathBuf>,
        prefix: Option<String>,
    ) -> Result<Server, Failure> {
        let file = match &config_file {
            Some(path) => Some(Config::from_file(path).map_err(|e| {
                Failure::new(exit::CONFIG, format!("config file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = match (redis, etcd, file.as_ref().map(|c| c.driver)) {
            (Some(url), None, None | Some(Driver::Redis)) => Endpoint::Redis(url),
            (None, Some(urls), None | Some(Driver::Etcd)) => Endpoint::Etcd(split(&urls)),
            (Some(_), _, Some(driver)) | (_, Some(_), Some(driver)) => {
                return Err(Failure::new(
                    exit::CONFIG,
                    format!("the config file says driver {driver}, but another server was given on the command line"),
                ))
            }
            (None, None, Some(Driver::Redis)) => Endpoint::Redis(
                env("DLOCK_REDIS_URL").ok_or_else(|| missing("the config file's driver is redis"))?,
            ),
            (None, None, Some(Driver::Etcd)) => Endpoint::Etcd(split(
                &env("DLOCK_ETCD_ENDPOINTS")
                    .ok_or_else(|| missing("the config file's driver is etcd"))?,
            )),
            (None, None, Some(driver)) => {
                return Err(Failure::new(
                    exit::CONFIG,
                    format!("driver {driver} cannot be used by the dlock command: use redis or etcd"),
                ))
            }
            (None, None, None) => match (env("DLOCK_REDIS_URL"), env("DLOCK_ETCD_ENDPOINTS")) {
                (Some(url), None) => Endpoint::Redis(url),
                (None, Some(urls)) => Endpoint::Etcd(split(&urls)),
                (Some(_), Some(_)) => {
                    return Err(Failure::new(
                        exit::USAGE,
                        "both DLOCK_REDIS_URL and DLOCK_ETCD_ENDPOINTS are set: pass --redis or --etcd",
                    ))
                }
                (None, None) => return Err(missing("no server given")),
            },
            (Some(_), Some(_), _) => unreachable!("clap refuses --redis with --etcd"),
        };
        let driver = match endpoint {
            Endpoint::Redis(_) => Driver::Redis,
            Endpoint::Etcd(_) => Driver::Etcd,
        };
        let mut config = file.unwrap_or_else(|| Config::new(driver));
        if let Some(prefix) = prefix {
            config.prefix = prefix;
        }
        match &endpoint {
            Endpoint::Redis(url) => remember_password(url),
            Endpoint::Etcd(urls) => urls.iter().for_each(|url| remember_password(url)),
        }
        Ok(Server { config, endpoint })
    }

    /// A locker on the server, connected; `ttl` overrides the config's `default_ttl`.
    pub async fn locker(&self, ttl: Option<Duration>) -> Result<Locker, Failure> {
        let mut config = self.config.clone();
        if let Some(ttl) = ttl {
            config.default_ttl = ttl;
        }
        let builder = Locker::builder(config);
        let builder = match &self.endpoint {
            Endpoint::Redis(url) => redis(builder, url).await?,
            Endpoint::Etcd(urls) => etcd(builder, urls).await?,
        };
        builder
            .build()
            .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
    }
}

fn missing(why: &str) -> Failure {
    Failure::new(
        exit::USAGE,
        format!("{why}: pass --redis URL or --etcd URLS, or set DLOCK_REDIS_URL or DLOCK_ETCD_ENDPOINTS"),
    )
}

fn split(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `(user, password)` of `scheme://user:password@host...`, if any.
fn user_info(url: &str) -> Option<(String, String)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let info = &authority[..authority.rfind('@')?];
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    Some((user.to_owned(), password.to_owned()))
}

fn remember_password(url: &str) {
    if let Some((_, password)) = user_info(url) {
        redact::secret(&password);
    }
}

async fn redis(builder: dlock::LockerBuilder, url: &str) -> Result<dlock::LockerBuilder, Failure> {
    let client = redis::Client::open(url)
        .map_err(|e| Failure::new(exit::CONFIG, format!("invalid Redis URL {url}: {e}")))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1);
    let connecting = redis::aio::ConnectionManager::new_with_config(client.clone(), config);
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(unreachable_at(url, e)),
        Err(_) => return Err(unreachable_at(url, "no answer")),
    };
    Ok(builder.redis(conn).redis_pubsub(client))
}

fn unreachable_at(url: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(exit::UNAVAILABLE, format!("cannot reach {url}: {e}"))
}

#[cfg(feature = "etcd")]
async fn etcd(
    builder: dlock::LockerBuilder,
    urls: &[String],
) -> Result<dlock::LockerBuilder, Failure> {
    let mut options = etcd_client::ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    let mut endpoints = Vec::new();
    for url in urls {
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok {
            return Err(Failure::new(
                exit::CONFIG,
                format!("invalid etcd endpoint {url}: write it as http://host:port or https://host:port"),
            ));
        }
        // etcd takes credentials apart from the endpoints.
        match user_info(url) {
            Some((user, password)) => {
                options = options.with_user(user, password);
                let at = url.rfind('@').expect("user info ends with @");
                let scheme = &url[..url.find("://").expect("checked") + 3];
                endpoints.push(format!("{scheme}{}", &url[at + 1..]));
            }
            None => endpoints.push(url.clone()),
        }
    }
    if endpoints.is_empty() {
        return Err(Failure::new(exit::CONFIG, "no etcd endpoint given"));
    }
    let shown = urls.join(",");
    let connecting = etcd_client::Client::connect(endpoints, Some(options));
    let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(unreachable_at(&shown, e)),
        Err(_) => return Err(unreachable_at(&shown, "no answer")),
    };
    Ok(builder.etcd(client))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(_: dlock::LockerBuilder, _: &[String]) -> Result<dlock::LockerBuilder, Failure> {
    Err(Failure::new(
        exit::CONFIG,
        "this dlock was built without etcd support: build it with `--features cli,etcd` (needs protoc)",
    ))
}

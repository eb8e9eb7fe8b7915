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
    Postgres(String),
}

impl Endpoint {
    fn driver(&self) -> Driver {
        match self {
            Endpoint::Redis(_) => Driver::Redis,
            Endpoint::Etcd(_) => Driver::Etcd,
            Endpoint::Postgres(_) => Driver::Postgres,
        }
    }
}

/// The server and the config to lock with.
#[derive(Debug)]
pub struct Server {
    config: Config,
    endpoint: Endpoint,
}

/// The server flags of the command line: at most one is given (clap refuses two).
pub struct Flags {
    pub redis: Option<String>,
    pub etcd: Option<String>,
    pub postgres: Option<String>,
}

impl Server {
    /// Flags first, then the config file's driver, then the environment.
    pub fn from_flags(
        flags: Flags,
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
        let flag = match (flags.redis, flags.etcd, flags.postgres) {
            (Some(url), None, None) => Some(Endpoint::Redis(url)),
            (None, Some(urls), None) => Some(Endpoint::Etcd(split(&urls))),
            (None, None, Some(url)) => Some(Endpoint::Postgres(url)),
            (None, None, None) => None,
            _ => unreachable!("clap refuses two server flags"),
        };
        let from_env = |driver: Driver| -> Result<Endpoint, Failure> {
            let why = format!("the config file's driver is {driver}");
            match driver {
                Driver::Redis => Ok(Endpoint::Redis(
                    env("DLOCK_REDIS_URL").ok_or_else(|| missing(&why))?,
                )),
                Driver::Etcd => Ok(Endpoint::Etcd(split(
                    &env("DLOCK_ETCD_ENDPOINTS").ok_or_else(|| missing(&why))?,
                ))),
                Driver::Postgres => Ok(Endpoint::Postgres(
                    env("DLOCK_POSTGRES_URL").ok_or_else(|| missing(&why))?,
                )),
                driver => Err(Failure::new(
                    exit::CONFIG,
                    format!("driver {driver} cannot be used by the dlock command: use redis, etcd or postgres"),
                )),
            }
        };
        let endpoint = match (flag, file.as_ref().map(|c| c.driver)) {
            (Some(endpoint), None) => endpoint,
            (Some(endpoint), Some(driver)) if endpoint.driver() == driver => endpoint,
            (Some(_), Some(driver)) => {
                return Err(Failure::new(
                    exit::CONFIG,
                    format!("the config file says driver {driver}, but another server was given on the command line"),
                ))
            }
            (None, Some(driver)) => from_env(driver)?,
            (None, None) => {
                let set: Vec<Endpoint> = [
                    env("DLOCK_REDIS_URL").map(Endpoint::Redis),
                    env("DLOCK_ETCD_ENDPOINTS").map(|urls| Endpoint::Etcd(split(&urls))),
                    env("DLOCK_POSTGRES_URL").map(Endpoint::Postgres),
                ]
                .into_iter()
                .flatten()
                .collect();
                match <[Endpoint; 1]>::try_from(set) {
                    Ok([endpoint]) => endpoint,
                    Err(set) if set.is_empty() => return Err(missing("no server given")),
                    Err(_) => {
                        return Err(Failure::new(
                            exit::USAGE,
                            "more than one of DLOCK_REDIS_URL, DLOCK_ETCD_ENDPOINTS and \
                             DLOCK_POSTGRES_URL is set: pass --redis, --etcd or --postgres",
                        ))
                    }
                }
            }
        };
        let mut config = file.unwrap_or_else(|| Config::new(endpoint.driver()));
        if let Some(prefix) = prefix {
            config.prefix = prefix;
        }
        match &endpoint {
            Endpoint::Redis(url) | Endpoint::Postgres(url) => remember_password(url),
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
            Endpoint::Postgres(url) => postgres(builder, url).await?,
        };
        builder
            .build()
            .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
    }
}

fn missing(why: &str) -> Failure {
    Failure::new(
        exit::USAGE,
        format!("{why}: pass --redis URL, --etcd URLS or --postgres URL, or set DLOCK_REDIS_URL, DLOCK_ETCD_ENDPOINTS or DLOCK_POSTGRES_URL"),
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

/// A small pool (one connection for the statements, one for release notifications while
/// waiting), then a check that dlock's schema is there. The command never creates it: see
/// the guide's `dlock` chapter (the role that runs jobs should not own the schema, and
/// `CREATE OR REPLACE FUNCTION` at every run would rewrite the catalog and need ownership).
#[cfg(feature = "postgres")]
async fn postgres(
    builder: dlock::LockerBuilder,
    url: &str,
) -> Result<dlock::LockerBuilder, Failure> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| Failure::new(exit::CONFIG, format!("invalid PostgreSQL URL {url}: {e}")))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options);
    let pool = match tokio::time::timeout(CONNECT_TIMEOUT * 2, pool).await {
        Ok(Ok(pool)) => pool,
        Ok(Err(e)) => return Err(unreachable_at(url, e)),
        Err(_) => return Err(unreachable_at(url, "no answer")),
    };
    let schema = sqlx::query_scalar::<_, bool>(
        "SELECT to_regclass('dlock_locks') IS NOT NULL AND to_regproc('dlock_acquire') IS NOT NULL",
    )
    .fetch_one(&pool);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, schema).await {
        Ok(Ok(true)) => Ok(builder.postgres(pool)),
        Ok(Ok(false)) => Err(Failure::new(
            exit::CONFIG,
            format!(
                "{url} has no dlock schema (table dlock_locks, function dlock_acquire) in the \
                 role's search_path: create it first with dlock::postgres::migrate or the SQL \
                 of the README's PostgreSQL section (dlock::postgres::SCHEMA)"
            ),
        )),
        Ok(Err(e)) => Err(unreachable_at(url, e)),
        Err(_) => Err(unreachable_at(url, "no answer")),
    }
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: dlock::LockerBuilder, _: &str) -> Result<dlock::LockerBuilder, Failure> {
    Err(Failure::new(
        exit::CONFIG,
        "this dlock was built without PostgreSQL support: build it with `--features cli,postgres`",
    ))
}

//! The etcd backend (work in progress: issue "etcd backend").

use std::time::Duration;

use super::{Lease, Loss, Request};
use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Clone)]
pub(crate) struct EtcdBackend {
    _client: etcd_client::Client,
}

pub(crate) fn check_ttl(ttl: Duration) -> std::result::Result<(), String> {
    if ttl.subsec_nanos() != 0 {
        return Err(format!("is {ttl:?}; etcd leases take whole seconds"));
    }
    Ok(())
}

impl EtcdBackend {
    pub fn new(client: etcd_client::Client, _config: &Config) -> Self {
        EtcdBackend { _client: client }
    }

    pub async fn acquire(&self, request: &Request<'_>) -> Result<Option<Lease>> {
        Err(Error::backend(
            "etcd",
            request.key,
            "the etcd backend is not implemented yet",
        ))
    }

    pub async fn keep(&self, _lease: &Lease) -> Loss {
        Loss::LeaseEnded
    }

    pub async fn release(&self, lease: &Lease) -> Result<bool> {
        Err(Error::backend(
            "etcd",
            &lease.key,
            "the etcd backend is not implemented yet",
        ))
    }
}

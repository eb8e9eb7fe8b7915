//! The one seam where a backend's type is erased: `LockerBuilder::backend` boxes the backend
//! once ([`erase`]), and every grant it makes is boxed once with its held state
//! ([`HeldLock`]). The locker and the guard see only these two object-safe traits; the
//! futures they return are boxed here and nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Backend, Context, Lease, Loss, Request};
use crate::config::Driver;
use crate::error::Result;
use crate::Holder;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend behind one vtable, shared by a locker and the guards it hands out.
pub(crate) type SharedBackend = Arc<dyn DynBackend>;

/// Erases `backend`: the only place where a [`Backend`] becomes a trait object.
pub(crate) fn erase<B: Backend>(backend: B) -> SharedBackend {
    Arc::new(Seam(Arc::new(backend)))
}

/// A granted lock, its backend's type erased: what the locker turns into a guard.
pub(crate) struct Acquired {
    pub lease: Lease,
    /// Send time of the acquiring command.
    pub confirmed_at: Instant,
    pub held: Box<dyn HeldLock>,
}

/// [`Backend`], object-safe.
pub(crate) trait DynBackend: Send + Sync {
    fn name(&self) -> &'static str;
    fn driver(&self) -> Driver;
    fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String>;
    fn storage_key(&self, prefix: &str, key: &str) -> String;
    fn try_acquire<'a>(
        &'a self,
        cx: &'a Context,
        request: &'a Request<'a>,
    ) -> BoxFuture<'a, Result<Option<Acquired>>>;
    fn acquire<'a>(
        &'a self,
        cx: &'a Context,
        request: &'a Request<'a>,
        retry_interval: Duration,
    ) -> BoxFuture<'a, Result<Option<Acquired>>>;
    fn holder<'a>(
        &'a self,
        cx: &'a Context,
        key: &'a str,
        storage_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>>>;
}

/// A held lock's backend and state, object-safe: what the guard's lifecycle task owns.
pub(crate) trait HeldLock: Send {
    /// [`Backend::keep`].
    fn keep<'a>(
        &'a mut self,
        cx: &'a Context,
        lease: &'a Lease,
        confirmed: &'a mut Instant,
    ) -> BoxFuture<'a, Loss>;
    /// [`Backend::confirmed`].
    fn confirmed(&self) -> Option<Instant>;
    /// [`Backend::release`], given up when the server forgets the lock anyway (`expiry`).
    fn release<'a>(
        self: Box<Self>,
        cx: &'a Context,
        lease: &'a Lease,
        expiry: Instant,
    ) -> BoxFuture<'a, Result<bool>>;
}

struct Seam<B>(Arc<B>);

struct Holding<B: Backend> {
    backend: Arc<B>,
    held: B::Held,
}

impl<B: Backend> Seam<B> {
    fn acquired(
        &self,
        request: &Request<'_>,
        grant: Option<super::Grant<B::Held>>,
    ) -> Option<Acquired> {
        grant.map(|grant| Acquired {
            lease: Lease::new(request, grant.fencing_token),
            confirmed_at: grant.confirmed_at,
            held: Box::new(Holding {
                backend: self.0.clone(),
                held: grant.held,
            }),
        })
    }
}

impl<B: Backend> DynBackend for Seam<B> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn driver(&self) -> Driver {
        self.0.driver()
    }

    fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String> {
        self.0.check_ttl(ttl)
    }

    fn storage_key(&self, prefix: &str, key: &str) -> String {
        self.0.storage_key(prefix, key)
    }

    fn try_acquire<'a>(
        &'a self,
        cx: &'a Context,
        request: &'a Request<'a>,
    ) -> BoxFuture<'a, Result<Option<Acquired>>> {
        Box::pin(async move {
            let grant = self.0.try_acquire(cx, request).await?;
            Ok(self.acquired(request, grant))
        })
    }

    fn acquire<'a>(
        &'a self,
        cx: &'a Context,
        request: &'a Request<'a>,
        retry_interval: Duration,
    ) -> BoxFuture<'a, Result<Option<Acquired>>> {
        Box::pin(async move {
            let grant = self.0.acquire(cx, request, retry_interval).await?;
            Ok(self.acquired(request, grant))
        })
    }

    fn holder<'a>(
        &'a self,
        cx: &'a Context,
        key: &'a str,
        storage_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>>> {
        Box::pin(self.0.holder(cx, key, storage_key))
    }
}

impl<B: Backend> HeldLock for Holding<B> {
    fn keep<'a>(
        &'a mut self,
        cx: &'a Context,
        lease: &'a Lease,
        confirmed: &'a mut Instant,
    ) -> BoxFuture<'a, Loss> {
        // Boxed: it lives as long as the guard, and the backends' futures differ in size by
        // kilobytes (etcd's gRPC state), which every guard would otherwise pay for.
        Box::pin(self.backend.keep(cx, lease, &mut self.held, confirmed))
    }

    fn confirmed(&self) -> Option<Instant> {
        self.backend.confirmed(&self.held)
    }

    fn release<'a>(
        self: Box<Self>,
        cx: &'a Context,
        lease: &'a Lease,
        expiry: Instant,
    ) -> BoxFuture<'a, Result<bool>> {
        let limit = expiry.saturating_duration_since(Instant::now());
        let Holding { backend, held } = *self;
        Box::pin(async move { backend.release(cx, lease, held, limit).await })
    }
}

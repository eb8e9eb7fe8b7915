//! The one seam where a backend's type is erased: `LockerBuilder::backend` boxes the backend
//! once ([`erase`]), and every grant it makes boxes its held state once ([`Held`]). The
//! locker and the engine see only the object-safe [`DynBackend`]; the futures it returns are
//! boxed here and nowhere else.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Backend, Context, Lease, Renewal, Request};
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

/// A backend's held state, its type erased: only the [`Seam`] of the backend that made it
/// looks inside (by downcasting to its `Backend::Held`).
pub(crate) type Held = Box<dyn Any + Send>;

/// A granted lock, its backend's type erased: what the locker hands to the engine.
pub(crate) struct Acquired {
    pub lease: Lease,
    /// Send time of the acquiring command.
    pub confirmed_at: Instant,
    pub held: Held,
}

/// A held lock as the engine keeps it: what a renewal or the release needs.
pub(crate) struct Kept {
    pub lease: Lease,
    pub held: Held,
}

/// [`Backend`], object-safe.
pub(crate) trait DynBackend: Send + Sync {
    fn name(&self) -> &'static str;
    fn driver(&self) -> Driver;
    fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String>;
    fn storage_key(&self, prefix: &str, key: &str) -> String;
    fn max_permits(&self) -> u32;
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
    fn holders<'a>(
        &'a self,
        cx: &'a Context,
        key: &'a str,
        storage_key: &'a str,
        permits: u32,
    ) -> BoxFuture<'a, Result<Vec<Holder>>>;
    /// [`Backend::renew_many`]: one answer per lock of `locks`, in order.
    fn renew_many<'a>(
        &'a self,
        cx: &'a Context,
        locks: &'a mut [Kept],
    ) -> BoxFuture<'a, Vec<Result<Renewal>>>;
    /// [`Backend::confirmed`].
    fn confirmed(&self, held: &Held) -> Option<Instant>;
    /// [`Backend::loss_signal`].
    fn loss_signal(&self, held: &Held) -> Option<CancellationToken>;
    /// [`Backend::release`], given up when the server forgets the lock anyway (`expiry`).
    fn release<'a>(
        &'a self,
        cx: &'a Context,
        lease: &'a Lease,
        held: Held,
        expiry: Instant,
    ) -> BoxFuture<'a, Result<bool>>;
}

struct Seam<B>(Arc<B>);

impl<B: Backend> Seam<B> {
    fn acquired(
        &self,
        request: &Request<'_>,
        grant: Option<super::Grant<B::Held>>,
    ) -> Option<Acquired> {
        grant.map(|grant| Acquired {
            lease: Lease::new(request, grant.fencing_token),
            confirmed_at: grant.confirmed_at,
            held: Box::new(grant.held),
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

    fn max_permits(&self) -> u32 {
        self.0.max_permits()
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

    fn holders<'a>(
        &'a self,
        cx: &'a Context,
        key: &'a str,
        storage_key: &'a str,
        permits: u32,
    ) -> BoxFuture<'a, Result<Vec<Holder>>> {
        Box::pin(self.0.holders(cx, key, storage_key, permits))
    }

    fn renew_many<'a>(
        &'a self,
        cx: &'a Context,
        locks: &'a mut [Kept],
    ) -> BoxFuture<'a, Vec<Result<Renewal>>> {
        let locks = locks
            .iter_mut()
            .map(|kept| (&kept.lease, own::<B>(&mut kept.held)))
            .collect();
        Box::pin(self.0.renew_many(cx, locks))
    }

    fn confirmed(&self, held: &Held) -> Option<Instant> {
        self.0.confirmed(held.downcast_ref().expect(FOREIGN))
    }

    fn loss_signal(&self, held: &Held) -> Option<CancellationToken> {
        self.0.loss_signal(held.downcast_ref().expect(FOREIGN))
    }

    fn release<'a>(
        &'a self,
        cx: &'a Context,
        lease: &'a Lease,
        held: Held,
        expiry: Instant,
    ) -> BoxFuture<'a, Result<bool>> {
        let limit = expiry.saturating_duration_since(Instant::now());
        let held = *held.downcast::<B::Held>().expect(FOREIGN);
        Box::pin(self.0.release(cx, lease, held, limit))
    }
}

/// Every held state a locker keeps was made by that locker's one backend.
const FOREIGN: &str = "a held lock handed to a backend that did not grant it";

fn own<B: Backend>(held: &mut Held) -> &mut B::Held {
    held.downcast_mut().expect(FOREIGN)
}

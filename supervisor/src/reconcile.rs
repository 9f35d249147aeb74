//! The minimal webhook reconciler: one task consuming [`ReconcileRequest`]s (and, at start, the operations a previous
//! daemon left pending) and converging each member through `users.rs` and the worker manager: create with its tier,
//! change tier, suspend (stop the worker, unbind), delete (stop, archive, tombstone). Each operation is marked done or
//! failed in the webhook store. Requests are applied one at a time, in arrival order (so one per member in flight).
//!
//! Not done here yet: retries with back-off of failed operations. Drift repair (`wirebot reconcile`) is `drift.rs`.

use std::sync::Arc;

use provisioning::Tier;
use tokio::sync::mpsc;

use crate::daemon::App;
use crate::error::Error;
use crate::registry::UserStatus;
use crate::users::{self, CreateUser, UpdateUser};
use crate::webhook::{self, ReconcileRequest, Status, Store};

const ACTOR: &str = "webhook";

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Join)?
}

/// Runs until shutdown: pending operations first, then every new request.
pub async fn run(app: Arc<App>, store: Arc<Store>, mut rx: mpsc::Receiver<ReconcileRequest>) {
    let pending = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.pending_operations()).await
    };
    match pending {
        Ok(Ok(ops)) => {
            for op in ops {
                apply(&app, &store, op).await;
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read pending webhook operations"),
        Err(e) => tracing::error!(error = %e, "reading pending webhook operations panicked"),
    }
    loop {
        let request = tokio::select! {
            r = rx.recv() => r,
            _ = app.shutdown.cancelled() => return,
        };
        match request {
            Some(request) => apply(&app, &store, request).await,
            None => return,
        }
    }
}

async fn apply(app: &Arc<App>, store: &Arc<Store>, request: ReconcileRequest) {
    let id = request.operation_id;
    let started = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.start_operation(id, unix_now())).await
    };
    match started {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return, // superseded or already finished
        Ok(Err(e)) => {
            tracing::error!(user_id = %request.user_id, error = %e, "cannot start a webhook operation");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a webhook operation panicked");
            return;
        }
    }
    let result = converge(app, store, &request).await;
    if let Err(e) = &result {
        tracing::warn!(user_id = %request.user_id, error = %e.chain(), "webhook operation failed");
    }
    let outcome = result.map_err(|e| e.chain());
    let store = store.clone();
    let finished = tokio::task::spawn_blocking(move || {
        store.finish_operation(
            id,
            outcome.as_ref().map(|_| ()).map_err(String::as_str),
            unix_now(),
        )
    })
    .await;
    if !matches!(finished, Ok(Ok(()))) {
        tracing::error!(user_id = %request.user_id, "cannot record the outcome of a webhook operation");
    }
}

/// Level-triggered: each step is a no-op when already true.
async fn converge(
    app: &Arc<App>,
    store: &Arc<Store>,
    request: &ReconcileRequest,
) -> Result<(), Error> {
    let id = request.user_id.clone();
    let row = blocking({
        let app = app.clone();
        let id = id.clone();
        move || app.registry.user(&id)
    })
    .await?;
    let tier = match request.desired.tier {
        webhook::Tier::Shared => Some(Tier::Shared),
        webhook::Tier::Dedicated => Some(Tier::Dedicated),
        webhook::Tier::None => None,
    };
    match (request.desired.status, tier) {
        (Status::Deleted, _) => {
            if row.is_some() {
                crate::workers::forget(app, &id).await?;
                blocking({
                    let app = app.clone();
                    let id = id.clone();
                    move || users::delete(&app, ACTOR, &id).map(|_| ())
                })
                .await?;
                crate::routes::rebuild_logged(app).await;
            }
            let store = store.clone();
            blocking(move || {
                store
                    .write_tombstone(&id, unix_now())
                    .map_err(|source| Error::Webhook { source })
            })
            .await?;
        }
        (Status::Suspended, _) | (Status::Active, None) => {
            // Keep the data; stop serving: no worker, no route.
            if let Some(row) = row
                && row.status == UserStatus::Active
            {
                crate::workers::forget(app, &id).await?;
                blocking({
                    let app = app.clone();
                    let id = id.clone();
                    move || app.registry.set_status(&id, UserStatus::Suspended)
                })
                .await?;
                crate::routes::rebuild_logged(app).await;
            }
        }
        (Status::Active, Some(tier)) => {
            let row = match row {
                None => {
                    let request = CreateUser {
                        id: id.clone(),
                        tier,
                        email: None,
                        display_name: None,
                    };
                    blocking({
                        let app = app.clone();
                        move || users::create(&app, ACTOR, request).map(|(row, _token)| row)
                    })
                    .await?
                }
                Some(row) => {
                    let row = if row.status == UserStatus::Suspended {
                        blocking({
                            let app = app.clone();
                            let id = id.clone();
                            move || {
                                app.registry.set_status(&id, UserStatus::Active)?;
                                app.registry
                                    .user(&id)?
                                    .ok_or(Error::UserNotFound { user: id })
                            }
                        })
                        .await?
                    } else {
                        row
                    };
                    if row.tier != tier {
                        if tier == Tier::Shared {
                            crate::workers::forget(app, &id).await?;
                        }
                        let patch = UpdateUser {
                            tier: Some(tier),
                            ..UpdateUser::default()
                        };
                        blocking({
                            let app = app.clone();
                            let id = id.clone();
                            move || users::update(&app, ACTOR, &id, patch)
                        })
                        .await?
                    } else {
                        row
                    }
                }
            };
            crate::routes::rebuild_logged(app).await;
            crate::workers::ensure_ready(app, &row).await?;
        }
    }
    Ok(())
}

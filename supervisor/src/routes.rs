//! The daemon's side of the edge proxy's route table: [`RouteSpec`]s built from the registry (every active dedicated
//! member gets `/u/<id>/` + token + its host bindings) and the last known upstream of each worker, swapped into the
//! proxy's [`RouteTableHandle`] on every member change and every worker transition.
//!
//! Invariant: one mutex (`App::upstreams`) is held across reading the upstream map and swapping the table, so a
//! rebuild after a member change can never overwrite a newer worker transition with a stale upstream.
//! Shared members route to their shard's upstream, authenticated by their own token and sent on with the shard's
//! internal token and `x-wirebot-agent: <id>`.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, PoisonError};

use provisioning::{Tier, UserId};

use crate::daemon::App;
use crate::error::Error;
use crate::proxy::{Binding, RouteAuth, RouteSpec, TokenHash, UpstreamState};
use crate::registry::{BindingKind, UserStatus};

fn upstreams(app: &App) -> MutexGuard<'_, HashMap<UserId, UpstreamState>> {
    app.upstreams.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The route specs of every served member, from the registry and the known upstreams.
fn specs(app: &App, known: &HashMap<UserId, UpstreamState>) -> Result<Vec<RouteSpec>, Error> {
    let users = app.registry.users()?;
    let bindings = app.registry.bindings()?;
    let shard_of: HashMap<UserId, u32> = app.registry.shard_members()?.into_iter().collect();
    let mut specs = Vec::new();
    for user in users {
        if user.status != UserStatus::Active {
            continue;
        }
        let shard = shard_of.get(&user.id).copied();
        let Some(token_hash) = TokenHash::from_hex(&user.token_hash) else {
            tracing::error!(user_id = %user.id, "registry token hash is not 64 hex digits; member not routed");
            continue;
        };
        let mut routes = vec![
            Binding::PathPrefix(format!("/u/{}/", user.id)),
            Binding::Token,
        ];
        if let Some(pattern) = &app.config.host_pattern {
            routes.push(Binding::HostPattern(pattern.clone()));
        }
        for b in bindings.iter().filter(|b| b.user_id == user.id) {
            match b.kind {
                BindingKind::Host => routes.push(Binding::Host(b.value.clone())),
                BindingKind::Path => {
                    let prefix = if b.value.ends_with('/') {
                        b.value.clone()
                    } else {
                        format!("{}/", b.value)
                    };
                    if prefix != format!("/u/{}/", user.id) {
                        routes.push(Binding::PathPrefix(prefix));
                    }
                }
                BindingKind::Token => {}
            }
        }
        let (upstream, auth, user_dir) = match (user.tier, shard) {
            (Tier::Shared, Some(n)) => (
                known
                    .get(&crate::shared::shard_key(n))
                    .cloned()
                    .unwrap_or(UpstreamState::Starting),
                RouteAuth::Shared {
                    member_token_hash: token_hash,
                    internal_token: crate::shared::route_token(app, n),
                    agent_id: user.id.as_str().to_owned(),
                },
                // Shards are never idle-stopped, so no cron wake either.
                None,
            ),
            // Moving onto a shard (a new member, or a tier move in flight): 503 with Retry-After until the shard
            // serves it. Nothing is forwarded while Starting, so the internal token is a throwaway.
            (Tier::Shared, None) => (
                UpstreamState::Starting,
                RouteAuth::Shared {
                    member_token_hash: token_hash,
                    internal_token: provisioning::Secret::generate(),
                    agent_id: user.id.as_str().to_owned(),
                },
                None,
            ),
            _ => (
                known
                    .get(&user.id)
                    .cloned()
                    .unwrap_or(UpstreamState::Stopped),
                RouteAuth::Dedicated { token_hash },
                Some(app.layout.user_dir(&user.id)),
            ),
        };
        specs.push(RouteSpec {
            upstream,
            user_dir,
            user_id: user.id,
            bindings: routes,
            auth,
        });
    }
    Ok(specs)
}

/// Rebuilds the whole table from the registry (after a member was created, changed or removed). Blocking.
pub fn rebuild(app: &App) -> Result<(), Error> {
    let known = upstreams(app);
    let specs = specs(app, &known)?;
    app.routes
        .replace(specs)
        .map_err(|source| Error::Routes { source })
}

/// [`rebuild`] on a blocking thread, logging (not returning) a failure: the member change itself already happened.
pub async fn rebuild_logged(app: &Arc<App>) {
    let app = app.clone();
    let result = tokio::task::spawn_blocking(move || rebuild(&app)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e.chain(), "cannot rebuild the route table"),
        Err(e) => tracing::error!(error = %e, "route table rebuild panicked"),
    }
}

/// Records a worker's upstream and updates its route (if it has one).
pub fn set_upstream(app: &App, user: &UserId, upstream: UpstreamState) {
    let mut known = upstreams(app);
    known.insert(user.clone(), upstream.clone());
    if let Err(e) = app.routes.set_upstream(user, upstream) {
        tracing::error!(user_id = %user, error = %e, "cannot update the route table");
    }
}

/// Forgets a removed worker's upstream (its route disappears with the next [`rebuild`]).
pub fn forget_upstream(app: &App, user: &UserId) {
    upstreams(app).remove(user);
}

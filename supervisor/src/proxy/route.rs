//! Bindings and the routing table: `RouteSpec`s in, an immutable `RouteTable` out, swapped atomically in a
//! `RouteTableHandle`. Lookups are lock-free (one `ArcSwap` load) and O(1) by host and token hash.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use provisioning::{Secret, Tier, UserId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::Error;
use super::member::MemberState;
use super::pool::{HostPool, PoolConfig};

/// SHA-256 of a member token. The registry stores only this; the proxy hashes what the client presents.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the 64-hex-digit form kept in the registry.
    pub fn from_hex(hex_digest: &str) -> Option<TokenHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut out).ok()?;
        Some(TokenHash(out))
    }

    /// The 64-hex-digit form.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality (the comparison a client can time).
    pub(crate) fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not the secret, but a prefix is enough to correlate in logs.
        write!(f, "TokenHash({}…)", &hex::encode(&self.0[..4]))
    }
}

/// How a request finds a member. Templates may contain `{id}`, replaced by the member's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// An exact host name, e.g. `alice.example.org` (compared case-insensitively, port ignored).
    Host(String),
    /// A host template such as `{id}.helm.example.com`.
    HostPattern(String),
    /// A path prefix such as `/u/{id}/`; stripped before forwarding, sent as `X-Forwarded-Prefix`.
    PathPrefix(String),
    /// `Authorization: Bearer <member token>` (or `?token=`) alone selects the member.
    Token,
}

/// Where a member's worker is, as far as the lifecycle manager has told the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamState {
    /// Listening on this loopback address.
    Running(SocketAddr),
    /// Being started; requests to a dedicated worker are held until it is Ready.
    Starting,
    /// Not running; a request wakes a dedicated worker.
    Stopped,
    /// Crash-looping; requests get 503 with this short, member-safe reason.
    Quarantined { reason: String },
}

/// How the proxy authenticates a member and what it sends upstream.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// The member's token is their worker's own gateway token and passes unchanged.
    Dedicated { token_hash: TokenHash },
    /// The member is one agent of the shared worker: the proxy checks the member token, then replaces it with
    /// the shared worker's internal token and scopes the request with `x-wirebot-agent: <agent_id>`.
    Shared {
        member_token_hash: TokenHash,
        internal_token: Secret,
        agent_id: String,
    },
}

/// One member's route as the daemon describes it (plain data, built from the registry).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub user_id: UserId,
    pub bindings: Vec<Binding>,
    pub upstream: UpstreamState,
    pub auth: RouteAuth,
    /// The member's state dir; the idle stopper reads `<user_dir>/cron/jobs.json` from it. `None` disables cron wake.
    pub user_dir: Option<PathBuf>,
}

/// The upstream of a built route.
#[derive(Debug, Clone)]
pub(crate) enum Upstream {
    Running(Arc<HostPool>),
    Starting,
    Stopped,
    Quarantined(Arc<str>),
}

/// A built route: the spec plus the runtime handles the hot path needs.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) user_id: UserId,
    pub(crate) tier: Tier,
    pub(crate) upstream: Upstream,
    pub(crate) auth: RouteAuth,
    pub(crate) member: Arc<MemberState>,
    pub(crate) user_dir: Option<PathBuf>,
    /// Header value of `x-wirebot-agent` for shared members, built once.
    pub(crate) agent_header: Option<http::HeaderValue>,
    /// `Bearer <internal token>` for shared members, built once (marked sensitive).
    pub(crate) internal_auth_header: Option<http::HeaderValue>,
}

impl Route {
    /// The hash a presented token must match.
    pub(crate) fn token_hash(&self) -> &TokenHash {
        match &self.auth {
            RouteAuth::Dedicated { token_hash } => token_hash,
            RouteAuth::Shared {
                member_token_hash, ..
            } => member_token_hash,
        }
    }
}

/// What a lookup by host and path found.
#[derive(Debug)]
pub(crate) enum PathMatch<'t> {
    /// Matched by host or path; `prefix` is the path prefix to strip (without its trailing `/`), if any.
    Bound {
        route: &'t Arc<Route>,
        prefix: Option<&'t str>,
    },
    /// The path is a bound prefix without its trailing slash (`/u/alice`): redirect to `/u/alice/`.
    AddSlash,
    /// Neither host nor path is bound: try the token.
    Unbound,
}

/// An immutable routing table; replaced as a whole on every change.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_host: HashMap<Box<str>, usize>,
    /// Prefixes with their trailing slash, e.g. `/u/alice/`.
    by_prefix: HashMap<Box<str>, usize>,
    /// Most `/`-separated segments of any prefix, bounding the lookup.
    max_prefix_segments: usize,
    by_token: HashMap<TokenHash, usize>,
}

impl RouteTable {
    /// Finds a route by `Host` (lowercase, without port) and then by path prefix.
    pub(crate) fn match_host_path<'t>(&'t self, host: Option<&str>, path: &str) -> PathMatch<'t> {
        if let Some(host) = host
            && let Some(&i) = self.by_host.get(host)
        {
            return PathMatch::Bound {
                route: &self.routes[i],
                prefix: None,
            };
        }
        if self.max_prefix_segments == 0 {
            return PathMatch::Unbound;
        }
        // Try `/a/`, `/a/b/`, ... up to the deepest configured prefix; no allocation.
        let bytes = path.as_bytes();
        let mut segments = 0;
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            if b == b'/' {
                segments += 1;
                if let Some((k, &r)) = self.by_prefix.get_key_value(&path[..=i]) {
                    return PathMatch::Bound {
                        route: &self.routes[r],
                        prefix: Some(&k[..k.len() - 1]),
                    };
                }
                if segments >= self.max_prefix_segments {
                    return PathMatch::Unbound;
                }
            }
        }
        if path.len() > 1 && !path.ends_with('/') {
            let mut with_slash = String::with_capacity(path.len() + 1);
            with_slash.push_str(path);
            with_slash.push('/');
            if self.by_prefix.contains_key(with_slash.as_str()) {
                return PathMatch::AddSlash;
            }
        }
        PathMatch::Unbound
    }

    /// Finds a route by the hash of a presented token (only routes with a `Token` binding are indexed).
    pub(crate) fn by_token(&self, hash: &TokenHash) -> Option<&Arc<Route>> {
        self.by_token.get(hash).map(|&i| &self.routes[i])
    }

    /// Every route (for the idle stopper and diagnostics).
    pub(crate) fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no member is routed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The live table plus the state that survives swaps (upstream connection pools, member activity).
#[derive(Debug)]
pub struct RouteTableHandle {
    current: ArcSwap<RouteTable>,
    pools: Mutex<HashMap<SocketAddr, Arc<HostPool>>>,
    members: Mutex<HashMap<UserId, Arc<MemberState>>>,
    pool_config: PoolConfig,
    /// Serialises writers so two concurrent `replace`/`set_upstream` calls cannot lose an update.
    write: Mutex<Vec<RouteSpec>>,
}

impl RouteTableHandle {
    /// Builds the first table. `pool_config` comes from [`super::ProxyConfig`] via [`RouteTableHandle::for_config`].
    pub fn new(specs: Vec<RouteSpec>, pool_config: PoolConfig) -> Result<RouteTableHandle, Error> {
        let handle = RouteTableHandle {
            current: ArcSwap::from_pointee(RouteTable::default()),
            pools: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            pool_config,
            write: Mutex::new(Vec::new()),
        };
        handle.replace(specs)?;
        Ok(handle)
    }

    /// Builds the first table with pool settings taken from the proxy config.
    pub fn for_config(
        specs: Vec<RouteSpec>,
        cfg: &super::ProxyConfig,
    ) -> Result<RouteTableHandle, Error> {
        RouteTableHandle::new(specs, PoolConfig::from(cfg))
    }

    /// Replaces every route at once (call after any registry change). On error the old table stays.
    pub fn replace(&self, specs: Vec<RouteSpec>) -> Result<(), Error> {
        let mut written = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.build(&specs)?;
        self.current.store(Arc::new(table));
        *written = specs;
        Ok(())
    }

    /// Changes one member's upstream state (the lifecycle manager calls this on Running/Stopped/Quarantined).
    /// Returns false if the member has no route.
    pub fn set_upstream(&self, user: &UserId, upstream: UpstreamState) -> Result<bool, Error> {
        let mut written = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut specs = written.clone();
        // A shared member's upstream is its shard's (set by a rebuild), never a worker event of its own: a dedicated
        // worker stopping during a move to the shared tier must not touch the new route.
        let Some(spec) = specs
            .iter_mut()
            .find(|s| &s.user_id == user && matches!(s.auth, RouteAuth::Dedicated { .. }))
        else {
            return Ok(false);
        };
        spec.upstream = upstream;
        let table = self.build(&specs)?;
        self.current.store(Arc::new(table));
        *written = specs;
        Ok(true)
    }

    /// The current table (lock-free).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// The current table as an owned snapshot.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// How long a member has had no request and no open WebSocket; `None` if active now or unknown.
    pub fn idle_since(&self, user: &UserId) -> Option<Duration> {
        self.member(user)?.idle_for()
    }

    /// Open WebSockets of a member through this proxy.
    pub fn open_websockets(&self, user: &UserId) -> u32 {
        self.member(user).map_or(0, |m| m.open_websockets())
    }

    fn member(&self, user: &UserId) -> Option<Arc<MemberState>> {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
    }

    /// The pool of one upstream address, shared by every table version (kept alive across swaps).
    pub(crate) fn pool_for(&self, addr: SocketAddr) -> Arc<HostPool> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            pools
                .entry(addr)
                .or_insert_with(|| Arc::new(HostPool::new(addr, self.pool_config.clone()))),
        )
    }

    fn build(&self, specs: &[RouteSpec]) -> Result<RouteTable, Error> {
        let mut table = RouteTable::default();
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live_addrs = Vec::new();
        for spec in specs {
            let i = table.routes.len();
            for binding in &spec.bindings {
                index_binding(&mut table, spec, binding, i)?;
            }
            let member = Arc::clone(
                members
                    .entry(spec.user_id.clone())
                    .or_insert_with(|| Arc::new(MemberState::new())),
            );
            let upstream = match &spec.upstream {
                UpstreamState::Running(addr) => {
                    live_addrs.push(*addr);
                    Upstream::Running(self.pool_for(*addr))
                }
                UpstreamState::Starting => Upstream::Starting,
                UpstreamState::Stopped => Upstream::Stopped,
                UpstreamState::Quarantined { reason } => {
                    Upstream::Quarantined(Arc::from(reason.as_str()))
                }
            };
            let (tier, agent_header, internal_auth_header) = match &spec.auth {
                RouteAuth::Dedicated { .. } => (Tier::Dedicated, None, None),
                RouteAuth::Shared {
                    internal_token,
                    agent_id,
                    ..
                } => {
                    let agent = http::HeaderValue::from_str(agent_id).map_err(|_| {
                        Error::InvalidBinding {
                            user_id: spec.user_id.clone(),
                            binding: agent_id.clone(),
                            reason: "agent id is not a valid header value",
                        }
                    })?;
                    let mut auth =
                        http::HeaderValue::from_str(&format!("Bearer {}", internal_token.expose()))
                            .map_err(|_| Error::InvalidBinding {
                                user_id: spec.user_id.clone(),
                                binding: "internal token".to_owned(),
                                reason: "internal token is not a valid header value",
                            })?;
                    auth.set_sensitive(true);
                    (Tier::Shared, Some(agent), Some(auth))
                }
            };
            table.routes.push(Arc::new(Route {
                user_id: spec.user_id.clone(),
                tier,
                upstream,
                auth: spec.auth.clone(),
                member,
                user_dir: spec.user_dir.clone(),
                agent_header,
                internal_auth_header,
            }));
        }
        // Members that left the registry drop their state; pools of addresses no route uses are closed.
        members.retain(|id, _| specs.iter().any(|s| &s.user_id == id));
        drop(members);
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|addr, _| live_addrs.contains(addr));
        Ok(table)
    }
}

fn index_binding(
    table: &mut RouteTable,
    spec: &RouteSpec,
    binding: &Binding,
    i: usize,
) -> Result<(), Error> {
    let user = &spec.user_id;
    let invalid = |reason| Error::InvalidBinding {
        user_id: user.clone(),
        binding: format!("{binding:?}"),
        reason,
    };
    let duplicate = |table: &RouteTable, what, value: &str, j: usize| Error::DuplicateBinding {
        user_id: user.clone(),
        other: table
            .routes
            .get(j)
            .map_or_else(|| user.clone(), |r| r.user_id.clone()),
        what,
        value: value.to_owned(),
    };
    match binding {
        Binding::Host(host) | Binding::HostPattern(host) => {
            if matches!(binding, Binding::HostPattern(_)) && !host.contains("{id}") {
                return Err(invalid("a host pattern must contain {id}"));
            }
            let host = host.replace("{id}", user.as_str()).to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', ':']) {
                return Err(invalid(
                    "a host is a bare name without port, slash or space",
                ));
            }
            if let Some(&j) = table.by_host.get(host.as_str()) {
                return Err(duplicate(table, "host", &host, j));
            }
            table.by_host.insert(host.into_boxed_str(), i);
        }
        Binding::PathPrefix(prefix) => {
            let mut prefix = prefix.replace("{id}", user.as_str());
            if !prefix.starts_with('/')
                || prefix.len() < 2
                || prefix.contains(['?', '#', ' '])
                || prefix.contains("//")
            {
                return Err(invalid(
                    "a path prefix starts with / and names at least one segment",
                ));
            }
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            if let Some(&j) = table.by_prefix.get(prefix.as_str()) {
                return Err(duplicate(table, "path prefix", &prefix, j));
            }
            let segments = prefix.matches('/').count() - 1;
            table.max_prefix_segments = table.max_prefix_segments.max(segments);
            table.by_prefix.insert(prefix.into_boxed_str(), i);
        }
        Binding::Token => {
            let hash = match &spec.auth {
                RouteAuth::Dedicated { token_hash } => *token_hash,
                RouteAuth::Shared {
                    member_token_hash, ..
                } => *member_token_hash,
            };
            if let Some(&j) = table.by_token.get(&hash) {
                return Err(duplicate(table, "token", "(hash)", j));
            }
            table.by_token.insert(hash, i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, bindings: Vec<Binding>) -> RouteSpec {
        RouteSpec {
            user_id: id.parse().unwrap(),
            bindings,
            upstream: UpstreamState::Stopped,
            auth: RouteAuth::Dedicated {
                token_hash: TokenHash::of(&format!("tok-{id}")),
            },
            user_dir: None,
        }
    }

    fn table(specs: Vec<RouteSpec>) -> Arc<RouteTable> {
        RouteTableHandle::new(
            specs,
            PoolConfig::from(&super::super::ProxyConfig::default()),
        )
        .unwrap()
        .snapshot()
    }

    fn bound_user(m: PathMatch<'_>) -> Option<(String, Option<String>)> {
        match m {
            PathMatch::Bound { route, prefix } => {
                Some((route.user_id.to_string(), prefix.map(str::to_owned)))
            }
            _ => None,
        }
    }

    #[test]
    fn each_binding_kind_finds_its_member() {
        let t = table(vec![
            spec(
                "alice",
                vec![Binding::Host("Alice.Example.org".into()), Binding::Token],
            ),
            spec(
                "bob",
                vec![
                    Binding::HostPattern("{id}.helm.example.com".into()),
                    Binding::PathPrefix("/u/{id}/".into()),
                ],
            ),
        ]);
        assert_eq!(
            bound_user(t.match_host_path(Some("alice.example.org"), "/x")),
            Some(("alice".into(), None))
        );
        assert_eq!(
            bound_user(t.match_host_path(Some("bob.helm.example.com"), "/")),
            Some(("bob".into(), None))
        );
        assert_eq!(
            bound_user(t.match_host_path(Some("other"), "/u/bob/chat?x")),
            Some(("bob".into(), Some("/u/bob".into())))
        );
        assert!(matches!(
            t.match_host_path(None, "/u/bob"),
            PathMatch::AddSlash
        ));
        assert!(matches!(
            t.match_host_path(None, "/u/carol/"),
            PathMatch::Unbound
        ));
        assert!(matches!(
            t.match_host_path(None, "/u/bobby/"),
            PathMatch::Unbound
        ));
        assert_eq!(
            t.by_token(&TokenHash::of("tok-alice"))
                .unwrap()
                .user_id
                .as_str(),
            "alice"
        );
        assert!(
            t.by_token(&TokenHash::of("tok-bob")).is_none(),
            "bob has no token binding"
        );
    }

    #[test]
    fn duplicate_and_malformed_bindings_are_refused() {
        let cfg = PoolConfig::from(&super::super::ProxyConfig::default());
        let dup = RouteTableHandle::new(
            vec![
                spec("alice", vec![Binding::Host("h".into())]),
                spec("bob", vec![Binding::Host("H".into())]),
            ],
            cfg.clone(),
        )
        .unwrap_err();
        assert!(
            dup.to_string().contains("already bound to user alice"),
            "{dup}"
        );
        let bad = RouteTableHandle::new(
            vec![spec(
                "alice",
                vec![Binding::HostPattern("x.example".into())],
            )],
            cfg.clone(),
        )
        .unwrap_err();
        assert!(bad.to_string().contains("{id}"), "{bad}");
        let bad = RouteTableHandle::new(
            vec![spec("alice", vec![Binding::PathPrefix("u/{id}".into())])],
            cfg,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("starts with /"), "{bad}");
    }

    #[test]
    fn set_upstream_swaps_one_route_and_keeps_member_state() {
        let h = RouteTableHandle::new(
            vec![spec("alice", vec![Binding::Token])],
            PoolConfig::from(&super::super::ProxyConfig::default()),
        )
        .unwrap();
        let before = Arc::clone(&h.snapshot().routes()[0].member);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(
            h.set_upstream(&"alice".parse().unwrap(), UpstreamState::Running(addr))
                .unwrap()
        );
        let t = h.snapshot();
        assert!(matches!(t.routes()[0].upstream, Upstream::Running(_)));
        assert!(Arc::ptr_eq(&before, &t.routes()[0].member));
        assert!(
            !h.set_upstream(&"nobody".parse().unwrap(), UpstreamState::Stopped)
                .unwrap()
        );
    }

    #[test]
    fn token_hash_hex_round_trips() {
        let h = TokenHash::of("secret");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }
}

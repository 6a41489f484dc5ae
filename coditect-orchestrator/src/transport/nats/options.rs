//! Connection and delivery options of the NATS transport.

use std::path::PathBuf;
use std::time::Duration;

use crate::id::TenantId;

use super::NatsTransport;
use super::error::{NatsError, NatsErrorKind};

/// How messages addressed to a kind or to an agent id travel (topics,
/// replies and cancels always use core NATS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KindDelivery {
    /// Through the tenant's JetStream work-queue stream: stored, acked after
    /// the handler finished and its reply was sent, redelivered to another
    /// worker if one dies; messages to an id go through the partition whose
    /// lease one worker holds (single activation across processes). At least
    /// once.
    #[default]
    Durable,
    /// Over core NATS to a queue group: at most once, lowest latency; single
    /// activation holds within one worker only.
    AtMostOnce,
}

/// Settings of the durable (JetStream) task path.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DurableOptions {
    /// How long the server waits for an ack before redelivering a task to
    /// another worker. Live workers extend it with in-progress acks while a
    /// task runs (the first by half the ack wait, then every quarter), so
    /// this bounds how long a dead worker's tasks wait.
    pub ack_wait: Duration,
    /// How many deliveries a task gets before it is dead-lettered.
    pub max_deliver: i64,
    /// How many unacked tasks one kind may have out at once (per consumer).
    pub max_ack_pending: i64,
    /// How long to wait before a refused task is redelivered.
    pub nak_delay: Duration,
    /// Stream replicas (3 on a three-node cluster).
    pub replicas: usize,
    /// Most tasks a tenant's stream holds; beyond it publishes are refused
    /// (`discard: new`), never silently dropped.
    pub max_tasks: i64,
    /// The de-duplication window of `Nats-Msg-Id`: longer than the longest
    /// outage a publisher retries through.
    pub duplicate_window: Duration,
    /// How many tasks one pull asks for.
    pub batch: usize,
    /// How long a worker's hold on a partition of ids lasts without renewal:
    /// how long an id's messages wait after its worker died.
    pub lease_ttl: Duration,
    /// How long a task publish the server did not acknowledge (a stream
    /// leader being elected after a node loss, a reconnect) is tried again
    /// before the send fails. Retrying is safe: `Nats-Msg-Id` stores it once.
    pub publish_retry: Duration,
    /// How long a dead-lettered task stays in the tenant's dead-letter stream
    /// for inspection before the server drops it. Taken when the stream is
    /// created; an existing stream keeps the age it was created with.
    pub dead_letter_max_age: Duration,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
            nak_delay: Duration::from_secs(1),
            replicas: 1,
            max_tasks: 1_000_000,
            duplicate_window: Duration::from_secs(120),
            batch: 64,
            lease_ttl: Duration::from_secs(10),
            publish_retry: Duration::from_secs(10),
            dead_letter_max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

impl DurableOptions {
    /// Sets [`DurableOptions::ack_wait`].
    #[must_use]
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    /// Sets [`DurableOptions::max_deliver`].
    #[must_use]
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n;
        self
    }
    /// Sets [`DurableOptions::max_ack_pending`].
    #[must_use]
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n;
        self
    }
    /// Sets [`DurableOptions::nak_delay`].
    #[must_use]
    pub fn nak_delay(mut self, d: Duration) -> Self {
        self.nak_delay = d;
        self
    }
    /// Sets [`DurableOptions::replicas`].
    #[must_use]
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }
    /// Sets [`DurableOptions::max_tasks`].
    #[must_use]
    pub fn max_tasks(mut self, n: i64) -> Self {
        self.max_tasks = n;
        self
    }
    /// Sets [`DurableOptions::duplicate_window`].
    #[must_use]
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }
    /// Sets [`DurableOptions::lease_ttl`].
    #[must_use]
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d.max(Duration::from_millis(300));
        self
    }
    /// Sets [`DurableOptions::publish_retry`].
    #[must_use]
    pub fn publish_retry(mut self, d: Duration) -> Self {
        self.publish_retry = d;
        self
    }
    /// Sets [`DurableOptions::dead_letter_max_age`].
    #[must_use]
    pub fn dead_letter_max_age(mut self, d: Duration) -> Self {
        self.dead_letter_max_age = d;
        self
    }
    /// Sets [`DurableOptions::batch`].
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }
}

/// How the client authenticates.
#[derive(Clone, Debug, Default)]
enum Auth {
    #[default]
    None,
    CredentialsFile(PathBuf),
    NKey(String),
    UserPassword(String, String),
    Token(String),
}

/// Options of a [`NatsTransport`], ending in [`NatsOptions::connect`].
///
/// ```no_run
/// use coditect_orchestrator::transport::nats::NatsOptions;
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = NatsOptions::new("nats://127.0.0.1:4222")
///     .name("worker-1")
///     .user_password("tenant-a", "secret")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "NatsOptions do nothing until .connect().await"]
pub struct NatsOptions {
    pub(crate) urls: Vec<String>,
    auth: Auth,
    tls_roots: Vec<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    tls_required: bool,
    pub(crate) name: Option<String>,
    reconnect_max_delay: Duration,
    max_reconnects: Option<usize>,
    connect_timeout: Duration,
    pub(crate) tenant: Option<TenantId>,
    pub(crate) kind_delivery: KindDelivery,
    pub(crate) durable: DurableOptions,
    pub(crate) max_message_size: Option<usize>,
    pub(crate) permission_check: Duration,
    retain_order: bool,
    subscription_capacity: Option<usize>,
}

impl NatsOptions {
    /// Options for one server URL (`nats://host:port`, or `tls://`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            auth: Auth::None,
            tls_roots: Vec::new(),
            tls_client: None,
            tls_required: false,
            name: None,
            reconnect_max_delay: Duration::from_secs(4),
            max_reconnects: None,
            connect_timeout: Duration::from_secs(5),
            tenant: None,
            kind_delivery: KindDelivery::default(),
            durable: DurableOptions::default(),
            max_message_size: None,
            permission_check: Duration::ZERO,
            subscription_capacity: None,
            retain_order: false,
        }
    }

    /// Options for several server URLs (a cluster): the client fails over
    /// between them.
    pub fn with_urls<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        let mut o = Self::new(String::new());
        o.urls = urls.into_iter().map(Into::into).collect();
        o
    }

    /// Authenticates with a `.creds` file (JWT + nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self.permission_check = self.permission_check.max(Duration::from_millis(100));
        self
    }

    /// Authenticates with an nkey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NKey(seed.into());
        self.permission_check = self.permission_check.max(Duration::from_millis(100));
        self
    }

    /// Authenticates with a user and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self.permission_check = self.permission_check.max(Duration::from_millis(100));
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self.permission_check = self.permission_check.max(Duration::from_millis(100));
        self
    }

    /// Trusts this PEM root certificate for TLS (and turns TLS on).
    pub fn tls_root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_roots.push(path.into());
        self.tls_required = true;
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    pub fn tls_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self.tls_required = true;
        self
    }

    /// Requires TLS even without extra certificates.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// The connection name the server shows in its monitoring.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reconnects forever (or `max_attempts` times) with exponential backoff
    /// up to `max_delay` after the connection is lost.
    pub fn reconnect(mut self, max_delay: Duration, max_attempts: Option<usize>) -> Self {
        self.reconnect_max_delay = max_delay;
        self.max_reconnects = max_attempts;
        self
    }

    /// Tries the servers in the order given instead of shuffling them (the
    /// default spreads clients over a cluster).
    pub fn retain_servers_order(mut self, retain: bool) -> Self {
        self.retain_order = retain;
        self
    }

    /// How long the first connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many messages each core-NATS subscription (replies, run signals,
    /// at-most-once kinds) may hold before its handler takes them (the
    /// client's default is 65,536). A subscription that overflows drops what
    /// does not fit, and the transport reports it: a
    /// [`NatsEvent::SlowConsumer`](super::NatsEvent::SlowConsumer), a `warn`
    /// log, [`NatsMetrics::slow_consumers`](super::NatsMetrics::slow_consumers)
    /// and the `coditect.nats.slow_consumers` metric. Durable kinds pull
    /// from JetStream and never overflow.
    pub fn subscription_capacity(mut self, messages: usize) -> Self {
        self.subscription_capacity = Some(messages.max(1));
        self
    }

    /// Binds the connection to one tenant: its replies and JetStream API
    /// answers arrive under `coditect.<tenant>.inbox` instead of the shared
    /// `_INBOX`, so a server can allow this tenant's credentials
    /// `coditect.<tenant>.>` and nothing else.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// How messages to a kind travel (durable by default).
    pub fn kind_delivery(mut self, delivery: KindDelivery) -> Self {
        self.kind_delivery = delivery;
        self
    }

    /// Settings of the durable task path.
    pub fn durable(mut self, durable: DurableOptions) -> Self {
        self.durable = durable;
        self
    }

    /// The largest envelope this transport sends or accepts (the server's
    /// `max_payload` if smaller). Larger incoming ones are dead-lettered.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How long `attach` waits for the server to refuse a subscription
    /// (permission violations arrive asynchronously). On by default (100 ms)
    /// when credentials are set; zero turns it off.
    pub fn permission_check(mut self, wait: Duration) -> Self {
        self.permission_check = wait;
        self
    }

    /// Connects and returns the transport.
    ///
    /// # Errors
    /// [`NatsError`] of kind `Connect` if no server accepts the connection,
    /// `Options` if credentials cannot be read.
    pub async fn connect(self) -> Result<NatsTransport, NatsError> {
        NatsTransport::connect(self).await
    }

    pub(crate) async fn client_options(
        &self,
        events: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<async_nats::ConnectOptions, NatsError> {
        // When an application's dependencies turn on both of rustls's crypto
        // providers, rustls cannot pick one and the TLS handshake panics.
        // Install ring (what this crate builds async-nats with) as the
        // process default, unless the application installed one already.
        {
            use async_nats::rustls::crypto::{CryptoProvider, ring};
            if CryptoProvider::get_default().is_none() {
                let _ = ring::default_provider().install_default();
            }
        }
        let mut o = match &self.auth {
            Auth::None => async_nats::ConnectOptions::new(),
            Auth::CredentialsFile(p) => async_nats::ConnectOptions::with_credentials_file(p)
                .await
                .map_err(|e| {
                    NatsError::new(
                        NatsErrorKind::Options,
                        format!("cannot read credentials file {}: {e}", p.display()),
                    )
                })?,
            Auth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            Auth::UserPassword(u, p) => {
                async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
            }
            Auth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
        };
        for root in &self.tls_roots {
            o = o.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            o = o.require_tls(true);
        }
        if self.retain_order {
            o = o.retain_servers_order();
        }
        if let Some(name) = &self.name {
            o = o.name(name);
        }
        if let Some(t) = &self.tenant {
            o = o.custom_inbox_prefix(super::wire::inbox_prefix(t));
        }
        let max = self.reconnect_max_delay;
        if let Some(n) = self.subscription_capacity {
            o = o.subscription_capacity(n);
        }
        o = o
            .connection_timeout(self.connect_timeout)
            .max_reconnects(self.max_reconnects)
            .reconnect_delay_callback(move |attempts| {
                let base =
                    Duration::from_millis(50).saturating_mul(1u32 << attempts.min(16) as u32);
                base.min(max)
            })
            .event_callback(move |event| {
                events(event);
                async {}
            });
        Ok(o)
    }
}

//! Storage: customers, orders, tickets, callbacks, the email outbox and call records.
//!
//! One set of queries for SQLite and Postgres through sqlx's `Any` driver: `$n` placeholders
//! (both accept them), text ids generated here (no autoincrement dialects), timestamps as epoch
//! milliseconds in BIGINT, and the rich per-call record as JSON text. SQLite files are created
//! and seeded with demo data on first run.
//!
//! PII columns (numbers, emails, transcripts, summaries, email bodies) go through
//! [`Crypto`] when a key is configured, so lookups by email/phone compare in Rust after opening
//! rather than in SQL. Customer and order reads are read-through cached in [`Shared`] (Redis or
//! in process) and invalidated by every write to the record.

use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::fleet::shared_state::Shared;
use crate::server::security::{Crypto, open_opt, seal_opt};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A short unique id with a prefix (`TKT-…`): time plus a process-wide counter.
pub fn new_id(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{:04x}", now_ms(), n & 0xFFFF)
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL, \
     email TEXT NOT NULL, tier TEXT NOT NULL, notes TEXT NOT NULL, last_contact_ms BIGINT, last_call_summary TEXT)",
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, item TEXT NOT NULL, \
     status TEXT NOT NULL, eta TEXT NOT NULL, carrier TEXT NOT NULL, tracking TEXT NOT NULL, total_cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tickets (id TEXT PRIMARY KEY, customer_id TEXT, call_sid TEXT NOT NULL, \
     subject TEXT NOT NULL, description TEXT NOT NULL, priority TEXT NOT NULL, status TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS callbacks (id TEXT PRIMARY KEY, customer_id TEXT, phone TEXT NOT NULL, \
     requested_time TEXT NOT NULL, reason TEXT NOT NULL, call_sid TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, to_addr TEXT NOT NULL, from_addr TEXT NOT NULL, \
     subject TEXT NOT NULL, body TEXT NOT NULL, call_sid TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, from_number TEXT NOT NULL, started_ms BIGINT NOT NULL, \
     ended_ms BIGINT NOT NULL, duration_ms BIGINT NOT NULL, end_reason TEXT NOT NULL, resolved BIGINT NOT NULL, \
     errors BIGINT NOT NULL, summary TEXT, sentiment TEXT, record_json TEXT NOT NULL, workflow_json TEXT)",
    // Durable post-call jobs (see jobs.rs) and the per-step markers that make retries idempotent.
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, call_sid TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, \
     status TEXT NOT NULL, attempts BIGINT NOT NULL, lease_owner TEXT, lease_until_ms BIGINT NOT NULL, \
     created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, last_error TEXT)",
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, lease_until_ms)",
    "CREATE TABLE IF NOT EXISTS job_steps (job_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, \
     detail TEXT NOT NULL, owner TEXT NOT NULL, done_ms BIGINT NOT NULL, PRIMARY KEY (job_id, step))",
    // CRM contact history: one row per call, written by the workflow's crm_update step.
    "CREATE TABLE IF NOT EXISTS crm_log (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, call_sid TEXT NOT NULL, \
     note TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log (id TEXT PRIMARY KEY, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, \
     action TEXT NOT NULL, target TEXT NOT NULL, client TEXT NOT NULL)",
];

/// A customer row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Customer {
    /// `C-…`: what skills, tickets and the CRM step refer to.
    pub id: String,
    /// Full name, read to the LLM so the bot can greet the caller by name.
    pub name: String,
    /// Phone number as stored (any format: lookups compare digits); PII.
    pub phone: String,
    /// Email address; follow-up emails go here; PII.
    pub email: String,
    /// Service tier (`gold`, `standard`…), for the LLM's tone and priorities.
    pub tier: String,
    /// Free-text account notes shown to the LLM.
    pub notes: String,
    /// Last call with this customer, epoch ms (written by the CRM step).
    pub last_contact_ms: Option<i64>,
    /// Summary of the last call (written by the CRM step); PII.
    pub last_call_summary: Option<String>,
}

/// An order row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    /// The order number callers quote (e.g. `12345`).
    pub order_id: String,
    /// The [`Customer::id`] who placed it.
    pub customer_id: String,
    /// What was ordered, as the bot may say it.
    pub item: String,
    /// Fulfilment status (`processing`, `shipped`, `delivered`…).
    pub status: String,
    /// Delivery estimate, human-readable.
    pub eta: String,
    /// Shipping carrier.
    pub carrier: String,
    /// Carrier tracking number.
    pub tracking: String,
    /// Order total formatted for speech, e.g. `$42.50` (stored as cents).
    pub total: String,
}

/// A stored call (summary columns plus the JSON record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRow {
    /// Twilio's id of the call (primary key).
    pub call_sid: String,
    /// The caller's number; PII (`[redacted]` after retention).
    pub from_number: String,
    /// Epoch ms when the stream started.
    pub started_ms: i64,
    /// Epoch ms when the call ended; retention cuts by it.
    pub ended_ms: i64,
    /// `ended_ms - started_ms`, kept for statistics after redaction.
    pub duration_ms: i64,
    /// Why the call ended (`bot_ended`, `caller_hung_up`, `shutdown`,
    /// `protocol_violation: …`); the part before `:` is
    /// the metrics label.
    pub end_reason: String,
    /// The post-call workflow's verdict (LLM, or the heuristic when it had none).
    pub resolved: bool,
    /// Errors recorded during the call.
    pub errors: i64,
    /// The workflow's call summary; PII.
    pub summary: Option<String>,
    /// `positive`, `neutral` or `negative`, from the workflow.
    pub sentiment: Option<String>,
    /// The full call record (transcript, tool calls, turn latencies) as JSON; PII.
    pub record: Value,
    /// The workflow's step results as JSON, once it ran.
    pub workflow: Option<Value>,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
    crypto: Option<Crypto>,
    cache: Option<(Shared, Duration)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A cache key for a lookup value that is itself PII (phone, email): hashed so the key names in
/// Redis do not spell out callers' numbers.
fn pii_key(kind: &str, v: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    format!("{kind}:{:016x}", h.finish())
}

impl Store {
    /// Connect, create tables, and seed demo data if asked and the database is empty.
    pub async fn connect(url: &str, seed: bool) -> anyhow::Result<Self> {
        Self::connect_with(url, seed, 8, None).await
    }

    /// [`Store::connect`] with a pool size and an optional PII key (demo data is sealed too).
    pub async fn connect_with(url: &str, seed: bool, pool_max: u32, crypto: Option<Crypto>) -> anyhow::Result<Self> {
        install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        // An in-memory SQLite database exists per connection: keep exactly one.
        let max = if url.contains(":memory:") { 1 } else { pool_max.max(1) };
        let (url, schema) = split_schema(&url)?;
        if let Some(schema) = &schema {
            // A private schema per deployment (or test run) on a shared Postgres database.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .with_context(|| format!("storage: cannot open {}", redact(&url)))?;
            let _ = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&pool).await;
            pool.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    if let Some(schema) = schema {
                        sqlx::query(&format!("SET search_path TO {schema}")).execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("storage: cannot open {}", redact(&url)))?;
        if is_sqlite {
            // Concurrent calls write at once: WAL and a busy timeout avoid "database is locked".
            let _ = sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await;
            let _ = sqlx::query("PRAGMA busy_timeout=5000").execute(&pool).await;
        }
        for stmt in SCHEMA {
            // Instances starting together race on CREATE … IF NOT EXISTS in Postgres (a unique
            // violation on the catalog): the loser retries once the winner committed.
            let mut tries = 0;
            loop {
                match sqlx::query(stmt).execute(&pool).await {
                    Ok(_) => break,
                    Err(_) if tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                    }
                    Err(e) => return Err(e).context("storage: schema"),
                }
            }
        }
        let store = Self { pool, postgres: !is_sqlite, crypto, cache: None };
        if seed {
            store.seed().await?;
        }
        Ok(store)
    }

    async fn seed(&self) -> anyhow::Result<()> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM customers").fetch_one(&self.pool).await?.try_get("n")?;
        if n > 0 {
            return Ok(());
        }
        let customers = [
            ("C-1001", "Jane Cooper", "+15550001111", "jane.cooper@example.com", "gold", "Prefers email follow-ups."),
            ("C-1002", "Marcus Lee", "+15550002222", "marcus.lee@example.com", "standard", ""),
            ("C-1003", "Priya Patel", "+15550003333", "priya.patel@example.com", "platinum", "VIP: escalate quickly."),
        ];
        for (id, name, phone, email, tier, notes) in customers {
            sqlx::query("INSERT INTO customers (id, name, phone, email, tier, notes) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(name)
                .bind(self.seal(phone)?)
                .bind(self.seal(email)?)
                .bind(tier)
                .bind(notes)
                .execute(&self.pool)
                .await?;
        }
        let orders = [
            ("12345", "C-1001", "wireless headset", "shipped", "tomorrow", "UPS", "1Z999AA10123456784", 12999),
            ("12346", "C-1001", "charging dock", "processing", "in 3 days", "", "", 3999),
            ("55501", "C-1002", "standing desk", "delayed", "next week", "FedEx", "7712 3456 7890", 45900),
            ("77777", "C-1003", "office chair", "delivered", "already delivered", "UPS", "1Z999AA10987654321", 32900),
        ];
        for (id, cust, item, status, eta, carrier, tracking, cents) in orders {
            sqlx::query(
                "INSERT INTO orders (id, customer_id, item, status, eta, carrier, tracking, total_cents) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(cust)
            .bind(item)
            .bind(status)
            .bind(eta)
            .bind(carrier)
            .bind(tracking)
            .bind(i64::from(cents))
            .execute(&self.pool)
            .await?;
        }
        tracing::info!("seeded demo customers and orders");
        Ok(())
    }

    /// Use `shared` as a read-through cache for customer and order lookups.
    pub fn with_cache(mut self, shared: Shared, ttl: Duration) -> Self {
        self.cache = Some((shared, ttl));
        self
    }

    /// The pool (the job queue shares it).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Postgres (row locks, `SKIP LOCKED`) rather than SQLite (one writer at a time).
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Seal a PII value for storage.
    pub fn seal(&self, plain: &str) -> anyhow::Result<String> {
        seal_opt(self.crypto.as_ref(), plain)
    }

    /// Open a stored PII value.
    pub fn open(&self, stored: &str) -> anyhow::Result<String> {
        open_opt(self.crypto.as_ref(), stored)
    }

    fn open_opt_col(&self, v: Option<String>) -> anyhow::Result<Option<String>> {
        v.map(|v| self.open(&v)).transpose()
    }

    async fn cached<T: Serialize + for<'de> Deserialize<'de>>(&self, key: &str) -> Option<T> {
        let (shared, _) = self.cache.as_ref()?;
        let raw = shared.cache_get(key).await?;
        let json = self.open(&raw).ok()?;
        serde_json::from_str(&json).ok()
    }

    async fn cache_put<T: Serialize>(&self, key: &str, v: &T) {
        let Some((shared, ttl)) = &self.cache else { return };
        // Cached customers carry PII too: sealed like the columns they came from.
        if let Ok(json) = serde_json::to_string(v)
            && let Ok(sealed) = self.seal(&json)
        {
            shared.cache_put(key, &sealed, *ttl).await;
        }
    }

    /// Drop a customer's cached record (every write to a customer calls this).
    pub async fn invalidate_customer(&self, id: &str) {
        if let Some((shared, _)) = &self.cache {
            shared.cache_invalidate(&format!("customer:{id}")).await;
        }
    }

    fn customer_from(&self, row: &sqlx::any::AnyRow) -> anyhow::Result<Customer> {
        Ok(Customer {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            phone: self.open(&row.try_get::<String, _>("phone")?)?,
            email: self.open(&row.try_get::<String, _>("email")?)?,
            tier: row.try_get("tier")?,
            notes: row.try_get("notes")?,
            last_contact_ms: row.try_get("last_contact_ms")?,
            last_call_summary: self.open_opt_col(row.try_get("last_call_summary")?)?,
        })
    }

    /// Find a customer by phone (digits compared, so formatting does not matter) or email.
    pub async fn find_customer(&self, phone: Option<&str>, email: Option<&str>) -> anyhow::Result<Option<Customer>> {
        let email = email.map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty());
        let digits: Option<String> =
            phone.map(|p| p.chars().filter(char::is_ascii_digit).collect::<String>()).filter(|d: &String| d.len() >= 7);
        let index_key = match (&email, &digits) {
            (Some(e), _) => Some(pii_key("customer-by-email", e)),
            (None, Some(d)) => Some(pii_key("customer-by-phone", d)),
            _ => None,
        };
        if let Some(k) = &index_key
            && let Some(id) = self.cached::<String>(k).await
            && let Some(c) = self.customer(&id).await?
        {
            return Ok(Some(c));
        }
        let found = self.find_customer_db(email.as_deref(), digits.as_deref()).await?;
        if let (Some(k), Some(c)) = (&index_key, &found) {
            self.cache_put(k, &c.id).await;
            self.cache_put(&format!("customer:{}", c.id), c).await;
        }
        Ok(found)
    }

    async fn find_customer_db(&self, email: Option<&str>, digits: Option<&str>) -> anyhow::Result<Option<Customer>> {
        const COLS: &str = "id, name, phone, email, tier, notes, last_contact_ms, last_call_summary";
        if email.is_none() && digits.is_none() {
            return Ok(None);
        }
        // Sealed columns cannot be compared in SQL: scan and compare opened values. The
        // customer table of a call center is small next to its call volume, and the cache
        // absorbs repeat lookups.
        let rows = sqlx::query(&format!("SELECT {COLS} FROM customers ORDER BY id")).fetch_all(&self.pool).await?;
        let all: Vec<Customer> = rows.iter().map(|r| self.customer_from(r)).collect::<anyhow::Result<_>>()?;
        if let Some(e) = email
            && let Some(c) = all.iter().find(|c| c.email.to_lowercase() == e)
        {
            return Ok(Some(c.clone()));
        }
        if let Some(digits) = digits {
            for c in &all {
                let cd: String = c.phone.chars().filter(char::is_ascii_digit).collect();
                if !cd.is_empty() && (cd.ends_with(digits) || digits.ends_with(&cd)) {
                    return Ok(Some(c.clone()));
                }
            }
        }
        Ok(None)
    }

    /// An order by id (case-insensitive, `#` and spaces ignored).
    pub async fn order(&self, order_id: &str) -> anyhow::Result<Option<Order>> {
        let id: String = order_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let key = format!("order:{}", id.to_uppercase());
        if let Some(o) = self.cached::<Order>(&key).await {
            return Ok(Some(o));
        }
        let found = self.order_db(&id).await?;
        if let Some(o) = &found {
            self.cache_put(&key, o).await;
        }
        Ok(found)
    }

    async fn order_db(&self, id: &str) -> anyhow::Result<Option<Order>> {
        let id = id.to_string();
        let row = sqlx::query(
            "SELECT id, customer_id, item, status, eta, carrier, tracking, total_cents FROM orders WHERE UPPER(id) = UPPER($1)",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let cents: i64 = r.try_get("total_cents")?;
        Ok(Some(Order {
            order_id: r.try_get("id")?,
            customer_id: r.try_get("customer_id")?,
            item: r.try_get("item")?,
            status: r.try_get("status")?,
            eta: r.try_get("eta")?,
            carrier: r.try_get("carrier")?,
            tracking: r.try_get("tracking")?,
            total: format!("${}.{:02}", cents / 100, cents % 100),
        }))
    }

    /// Open a ticket; returns its id.
    pub async fn create_ticket(
        &self,
        customer_id: Option<&str>,
        call_sid: &str,
        subject: &str,
        description: &str,
        priority: &str,
    ) -> anyhow::Result<String> {
        let id = new_id("TKT");
        sqlx::query(
            "INSERT INTO tickets (id, customer_id, call_sid, subject, description, priority, status, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7)",
        )
        .bind(id.clone())
        .bind(customer_id.map(str::to_string))
        .bind(call_sid.to_string())
        .bind(subject.to_string())
        .bind(self.seal(description)?)
        .bind(priority.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Tickets opened during a call.
    pub async fn tickets_for_call(&self, call_sid: &str) -> anyhow::Result<Vec<Value>> {
        let rows = sqlx::query("SELECT id, subject, priority FROM tickets WHERE call_sid = $1")
            .bind(call_sid.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({"id": r.try_get::<String, _>("id")?, "subject": r.try_get::<String, _>("subject")?,
                          "priority": r.try_get::<String, _>("priority")?}))
            })
            .collect()
    }

    /// Schedule a callback; returns its id.
    pub async fn schedule_callback(
        &self,
        customer_id: Option<&str>,
        phone: &str,
        when: &str,
        reason: &str,
        call_sid: &str,
    ) -> anyhow::Result<String> {
        let id = new_id("CB");
        sqlx::query(
            "INSERT INTO callbacks (id, customer_id, phone, requested_time, reason, call_sid, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(customer_id.map(str::to_string))
        .bind(self.seal(phone)?)
        .bind(when.to_string())
        .bind(reason.to_string())
        .bind(call_sid.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// CRM update: last contact time and the latest call summary.
    #[cfg_attr(not(test), allow(dead_code))]
    pub async fn update_customer_contact(&self, customer_id: &str, summary: &str) -> anyhow::Result<bool> {
        let r = sqlx::query("UPDATE customers SET last_contact_ms = $1, last_call_summary = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(self.seal(summary)?)
            .bind(customer_id.to_string())
            .execute(&self.pool)
            .await?;
        self.invalidate_customer(customer_id).await;
        Ok(r.rows_affected() > 0)
    }

    /// Insert or replace a call record.
    pub async fn save_call(&self, c: &CallRow) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        self.save_call_in(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::save_call`] inside a caller's transaction (the job queue enqueues in the same one).
    pub async fn save_call_in(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, c: &CallRow) -> anyhow::Result<()> {
        let record = self.seal(&serde_json::to_string(&c.record)?)?;
        let workflow = c.workflow.as_ref().map(serde_json::to_string).transpose()?;
        let workflow = workflow.map(|w| self.seal(&w)).transpose()?;
        let summary = c.summary.as_deref().map(|s| self.seal(s)).transpose()?;
        // Delete-then-insert keeps one statement set valid on both SQLite and Postgres.
        sqlx::query("DELETE FROM calls WHERE call_sid = $1").bind(c.call_sid.clone()).execute(&mut **tx).await?;
        sqlx::query(
            "INSERT INTO calls (call_sid, from_number, started_ms, ended_ms, duration_ms, end_reason, resolved, errors, \
             summary, sentiment, record_json, workflow_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(c.call_sid.clone())
        .bind(self.seal(&c.from_number)?)
        .bind(c.started_ms)
        .bind(c.ended_ms)
        .bind(c.duration_ms)
        .bind(c.end_reason.clone())
        .bind(i64::from(c.resolved))
        .bind(c.errors)
        .bind(summary)
        .bind(c.sentiment.clone())
        .bind(record)
        .bind(workflow)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn call_from(&self, r: &sqlx::any::AnyRow) -> anyhow::Result<CallRow> {
        let record = self.open(&r.try_get::<String, _>("record_json")?)?;
        let workflow = self.open_opt_col(r.try_get("workflow_json")?)?;
        let resolved: i64 = r.try_get("resolved")?;
        Ok(CallRow {
            call_sid: r.try_get("call_sid")?,
            from_number: self.open(&r.try_get::<String, _>("from_number")?)?,
            started_ms: r.try_get("started_ms")?,
            ended_ms: r.try_get("ended_ms")?,
            duration_ms: r.try_get("duration_ms")?,
            end_reason: r.try_get("end_reason")?,
            resolved: resolved != 0,
            errors: r.try_get("errors")?,
            summary: self.open_opt_col(r.try_get("summary")?)?,
            sentiment: r.try_get("sentiment")?,
            record: serde_json::from_str(&record).unwrap_or(Value::Null),
            workflow: workflow.and_then(|w| serde_json::from_str(&w).ok()),
        })
    }

    /// The most recent calls, newest first.
    pub async fn list_calls(&self, limit: i64) -> anyhow::Result<Vec<CallRow>> {
        let rows = sqlx::query("SELECT * FROM calls ORDER BY started_ms DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| self.call_from(r)).collect()
    }

    /// One call.
    pub async fn get_call(&self, call_sid: &str) -> anyhow::Result<Option<CallRow>> {
        let row = sqlx::query("SELECT * FROM calls WHERE call_sid = $1")
            .bind(call_sid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| self.call_from(r)).transpose()
    }

    /// Emails queued for a call.
    // Only the end-to-end tests read the outbox today; a mailer would.
    #[cfg_attr(not(test), allow(dead_code))]
    pub async fn outbox_for_call(&self, call_sid: &str) -> anyhow::Result<Vec<Value>> {
        let rows = sqlx::query("SELECT id, to_addr, subject FROM outbox WHERE call_sid = $1")
            .bind(call_sid.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({"id": r.try_get::<String, _>("id")?, "to": self.open(&r.try_get::<String, _>("to_addr")?)?,
                          "subject": r.try_get::<String, _>("subject")?}))
            })
            .collect()
    }

    /// A customer by id (read-through cached).
    pub async fn customer(&self, id: &str) -> anyhow::Result<Option<Customer>> {
        let key = format!("customer:{id}");
        if let Some(c) = self.cached::<Customer>(&key).await {
            return Ok(Some(c));
        }
        let row = sqlx::query(
            "SELECT id, name, phone, email, tier, notes, last_contact_ms, last_call_summary FROM customers WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let found = row.as_ref().map(|r| self.customer_from(r)).transpose()?;
        if let Some(c) = &found {
            self.cache_put(&key, c).await;
        }
        Ok(found)
    }

    /// Record an admin read of customer data.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, client: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO audit_log (id, at_ms, actor, action, target, client) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(new_id("AUD"))
            .bind(now_ms())
            .bind(actor.to_string())
            .bind(action.to_string())
            .bind(target.to_string())
            .bind(client.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: i64) -> anyhow::Result<Vec<Value>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, target, client FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({"id": r.try_get::<String, _>("id")?, "at_ms": r.try_get::<i64, _>("at_ms")?,
                          "actor": r.try_get::<String, _>("actor")?, "action": r.try_get::<String, _>("action")?,
                          "target": r.try_get::<String, _>("target")?, "client": r.try_get::<String, _>("client")?}))
            })
            .collect()
    }

    /// Retention: call data that ended before `cutoff_ms` is deleted, or redacted (numbers,
    /// transcripts, summaries and email bodies dropped; durations and outcomes kept for stats).
    /// Returns how many calls were affected.
    pub async fn apply_retention(&self, cutoff_ms: i64, redact: bool) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = if redact {
            sqlx::query(
                "UPDATE calls SET from_number = '[redacted]', summary = NULL, record_json = '{\"redacted\":true}', \
                 workflow_json = NULL WHERE ended_ms < $1 AND from_number <> '[redacted]'",
            )
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query("DELETE FROM calls WHERE ended_ms < $1")
                .bind(cutoff_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        // Derived copies of the conversation go either way.
        sqlx::query("UPDATE outbox SET body = '[redacted]', to_addr = '[redacted]' WHERE created_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE tickets SET description = '[redacted]' WHERE created_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE callbacks SET phone = '[redacted]' WHERE created_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM jobs WHERE updated_ms < $1 AND status IN ('done', 'dead')")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// Take `voxline_schema=NAME` out of a Postgres URL: the tables then live in schema `NAME`.
fn split_schema(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), None)) };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("voxline_schema=") {
            Some(v) => {
                schema = Some(v.to_string());
                false
            }
            None => true,
        })
        .collect();
    if let Some(s) = &schema
        && (s.is_empty() || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    {
        anyhow::bail!("storage: voxline_schema must be lowercase letters, digits and _");
    }
    let url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, schema))
}

/// Hide the password of a database URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) async fn temp_store() -> Store {
        let path = std::env::temp_dir().join(format!("voxline-store-{}.db", new_id("t")));
        match Store::connect(&format!("sqlite://{}", path.display()), true).await {
            Ok(s) => s,
            Err(e) => panic!("store: {e:#}"),
        }
    }

    #[tokio::test]
    async fn seed_and_queries() -> anyhow::Result<()> {
        let s = temp_store().await;
        let c = s.find_customer(Some("(555) 000-1111"), None).await?;
        assert_eq!(c.as_ref().map(|c| c.id.as_str()), Some("C-1001"));
        let c = s.find_customer(None, Some("MARCUS.LEE@example.com")).await?;
        assert_eq!(c.map(|c| c.id), Some("C-1002".to_string()));
        assert!(s.find_customer(Some("123"), None).await?.is_none());
        let o = s.order("#12345").await?;
        assert_eq!(o.as_ref().map(|o| o.status.as_str()), Some("shipped"));
        assert!(s.order("99999").await?.is_none());
        let t = s.create_ticket(Some("C-1001"), "CA1", "Broken", "desc", "high").await?;
        assert!(t.starts_with("TKT-"));
        assert_eq!(s.tickets_for_call("CA1").await?.len(), 1);
        assert!(s.update_customer_contact("C-1001", "called about order").await?);
        assert_eq!(
            s.customer("C-1001").await?.and_then(|c| c.last_call_summary),
            Some("called about order".to_string())
        );
        let row = CallRow {
            call_sid: "CA1".into(),
            from_number: "+1".into(),
            started_ms: 1,
            ended_ms: 2,
            duration_ms: 1,
            end_reason: "x".into(),
            resolved: true,
            errors: 0,
            summary: None,
            sentiment: None,
            record: json!({"a": 1}),
            workflow: None,
        };
        s.save_call(&row).await?;
        s.save_call(&row).await?;
        assert_eq!(s.list_calls(10).await?.len(), 1);
        assert_eq!(s.get_call("CA1").await?.map(|c| c.record), Some(json!({"a": 1})));
        // Re-connecting does not seed twice.
        Ok(())
    }

    #[test]
    fn redacts() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}

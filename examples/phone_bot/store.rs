//! Storage: customers, orders, tickets, callbacks, the email outbox and call records.
//!
//! One set of queries for SQLite and Postgres through sqlx's `Any` driver: `$n` placeholders
//! (both accept them), text ids generated here (no autoincrement dialects), timestamps as epoch
//! milliseconds in BIGINT, and the rich per-call record as JSON text. SQLite files are created
//! and seeded with demo data on first run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

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
];

/// A customer row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub phone: String,
    pub email: String,
    pub tier: String,
    pub notes: String,
    pub last_contact_ms: Option<i64>,
    pub last_call_summary: Option<String>,
}

/// An order row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub item: String,
    pub status: String,
    pub eta: String,
    pub carrier: String,
    pub tracking: String,
    pub total: String,
}

/// A stored call (summary columns plus the JSON record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRow {
    pub call_sid: String,
    pub from_number: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub duration_ms: i64,
    pub end_reason: String,
    pub resolved: bool,
    pub errors: i64,
    pub summary: Option<String>,
    pub sentiment: Option<String>,
    pub record: Value,
    pub workflow: Option<Value>,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connect, create tables, and seed demo data if asked and the database is empty.
    pub async fn connect(url: &str, seed: bool) -> anyhow::Result<Self> {
        install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        // An in-memory SQLite database exists per connection: keep exactly one.
        let max = if url.contains(":memory:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await
            .with_context(|| format!("storage: cannot open {}", redact(&url)))?;
        if is_sqlite {
            // Concurrent calls write at once: WAL and a busy timeout avoid "database is locked".
            let _ = sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await;
            let _ = sqlx::query("PRAGMA busy_timeout=5000").execute(&pool).await;
        }
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await.context("storage: schema")?;
        }
        let store = Self { pool };
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
                .bind(phone)
                .bind(email)
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

    fn customer_from(row: &sqlx::any::AnyRow) -> anyhow::Result<Customer> {
        Ok(Customer {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            phone: row.try_get("phone")?,
            email: row.try_get("email")?,
            tier: row.try_get("tier")?,
            notes: row.try_get("notes")?,
            last_contact_ms: row.try_get("last_contact_ms")?,
            last_call_summary: row.try_get("last_call_summary")?,
        })
    }

    /// Find a customer by phone (digits compared, so formatting does not matter) or email.
    pub async fn find_customer(&self, phone: Option<&str>, email: Option<&str>) -> anyhow::Result<Option<Customer>> {
        const COLS: &str = "id, name, phone, email, tier, notes, last_contact_ms, last_call_summary";
        if let Some(email) = email.filter(|e| !e.trim().is_empty()) {
            let row = sqlx::query(&format!("SELECT {COLS} FROM customers WHERE LOWER(email) = LOWER($1)"))
                .bind(email.trim().to_string())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = row {
                return Ok(Some(Self::customer_from(&r)?));
            }
        }
        if let Some(phone) = phone {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= 7 {
                let rows = sqlx::query(&format!("SELECT {COLS} FROM customers")).fetch_all(&self.pool).await?;
                for r in rows {
                    let c = Self::customer_from(&r)?;
                    let cd: String = c.phone.chars().filter(char::is_ascii_digit).collect();
                    if cd.ends_with(&digits) || digits.ends_with(&cd) {
                        return Ok(Some(c));
                    }
                }
            }
        }
        Ok(None)
    }

    /// An order by id (case-insensitive, `#` and spaces ignored).
    pub async fn order(&self, order_id: &str) -> anyhow::Result<Option<Order>> {
        let id: String = order_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
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
        .bind(description.to_string())
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
        .bind(phone.to_string())
        .bind(when.to_string())
        .bind(reason.to_string())
        .bind(call_sid.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Queue an email in the outbox; returns its id.
    pub async fn queue_email(
        &self,
        to: &str,
        from: &str,
        subject: &str,
        body: &str,
        call_sid: &str,
    ) -> anyhow::Result<String> {
        let id = new_id("MAIL");
        sqlx::query(
            "INSERT INTO outbox (id, to_addr, from_addr, subject, body, call_sid, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(to.to_string())
        .bind(from.to_string())
        .bind(subject.to_string())
        .bind(body.to_string())
        .bind(call_sid.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// CRM update: last contact time and the latest call summary.
    pub async fn update_customer_contact(&self, customer_id: &str, summary: &str) -> anyhow::Result<bool> {
        let r = sqlx::query("UPDATE customers SET last_contact_ms = $1, last_call_summary = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(summary.to_string())
            .bind(customer_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Insert or replace a call record.
    pub async fn save_call(&self, c: &CallRow) -> anyhow::Result<()> {
        let record = serde_json::to_string(&c.record)?;
        let workflow = c.workflow.as_ref().map(serde_json::to_string).transpose()?;
        // Delete-then-insert keeps one statement set valid on both SQLite and Postgres.
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM calls WHERE call_sid = $1").bind(c.call_sid.clone()).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO calls (call_sid, from_number, started_ms, ended_ms, duration_ms, end_reason, resolved, errors, \
             summary, sentiment, record_json, workflow_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(c.call_sid.clone())
        .bind(c.from_number.clone())
        .bind(c.started_ms)
        .bind(c.ended_ms)
        .bind(c.duration_ms)
        .bind(c.end_reason.clone())
        .bind(i64::from(c.resolved))
        .bind(c.errors)
        .bind(c.summary.clone())
        .bind(c.sentiment.clone())
        .bind(record)
        .bind(workflow)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    fn call_from(r: &sqlx::any::AnyRow) -> anyhow::Result<CallRow> {
        let record: String = r.try_get("record_json")?;
        let workflow: Option<String> = r.try_get("workflow_json")?;
        let resolved: i64 = r.try_get("resolved")?;
        Ok(CallRow {
            call_sid: r.try_get("call_sid")?,
            from_number: r.try_get("from_number")?,
            started_ms: r.try_get("started_ms")?,
            ended_ms: r.try_get("ended_ms")?,
            duration_ms: r.try_get("duration_ms")?,
            end_reason: r.try_get("end_reason")?,
            resolved: resolved != 0,
            errors: r.try_get("errors")?,
            summary: r.try_get("summary")?,
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
        rows.iter().map(Self::call_from).collect()
    }

    /// One call.
    pub async fn get_call(&self, call_sid: &str) -> anyhow::Result<Option<CallRow>> {
        let row = sqlx::query("SELECT * FROM calls WHERE call_sid = $1")
            .bind(call_sid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::call_from).transpose()
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
                Ok(json!({"id": r.try_get::<String, _>("id")?, "to": r.try_get::<String, _>("to_addr")?,
                          "subject": r.try_get::<String, _>("subject")?}))
            })
            .collect()
    }

    /// A customer by id.
    pub async fn customer(&self, id: &str) -> anyhow::Result<Option<Customer>> {
        let row = sqlx::query(
            "SELECT id, name, phone, email, tier, notes, last_contact_ms, last_call_summary FROM customers WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::customer_from).transpose()
    }
}

/// Hide the password of a database URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
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

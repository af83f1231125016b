//! Durable post-call jobs: a table in the main database, claimed with leases.
//!
//! Why a database table (`FOR UPDATE SKIP LOCKED` on Postgres) and not a Redis stream: the job
//! is written in the same transaction as the call record, and every step's side effect (CRM
//! note, outbox email, ticket) is written in the same transaction as the step's done-marker. So
//! "enqueued iff the call was stored" and "a step's effect exists iff its marker does" hold by
//! construction, which a stream plus a separate database cannot give without a second
//! idempotency layer; the queue also inherits Postgres' durability and backups instead of
//! depending on Redis persistence settings. SQLite runs the same SQL minus `SKIP LOCKED` (it has
//! one writer at a time, so a claim is atomic anyway).
//!
//! Life of a job: `queued` → claimed (`running`, `lease_owner`, `lease_until_ms`) → `done`. The
//! runner renews its lease while working; an instance that dies stops renewing and any other
//! instance's worker re-claims the job once the lease has expired. Steps already marked done are
//! not run again, and a marker insert that loses a race (two claimers after a lease expired
//! under a stalled-but-alive owner) rolls back its side effect, so each effect happens once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use crate::fleet::store::{Store, new_id, now_ms};

/// A job this instance holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// `JOB-<call_sid>` (see [`Jobs::id_for`]).
    pub id: String,
    /// The call whose post-call workflow this is.
    pub call_sid: String,
    /// What the workflow needs, as enqueued with the call record (JSON, PII sealed).
    pub payload: Value,
    /// Including this claim.
    pub attempts: i64,
    /// Unique per claim: renewals and completion only apply while the lease is still ours.
    pub owner: String,
}

/// The queue, as seen by one instance.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    instance: String,
    lease: Duration,
    max_attempts: u32,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

/// What a step does besides recording that it ran. Everything here is written in the
/// transaction that inserts the step's done-marker.
#[derive(Debug)]
pub enum Effect<'a> {
    /// Nothing outside the marker (e.g. the summary, which later steps reuse).
    None,
    /// CRM: customer's last contact + a contact-history row.
    Crm {
        /// The customer whose record is updated (its cache entry is invalidated).
        customer_id: &'a str,
        /// The call the note is about; the history row's id derives from it.
        call_sid: &'a str,
        /// The note (the call summary); sealed as PII.
        note: &'a str,
    },
    /// Queue a follow-up email in the outbox (a mailer sends each outbox id once).
    Email {
        /// Outbox id, derived from the call so a retry cannot queue a second email.
        id: &'a str,
        /// Recipient address; sealed as PII.
        to: &'a str,
        /// Sender address (`workflow.email_from`).
        from: &'a str,
        /// Subject line.
        subject: &'a str,
        /// Body; sealed as PII.
        body: &'a str,
        /// The call the email follows up.
        call_sid: &'a str,
    },
    /// Open a ticket.
    Ticket {
        /// Ticket id, derived from the call (`TKT-<call>-wf`).
        id: &'a str,
        /// The customer, when the call identified one.
        customer_id: Option<&'a str>,
        /// The call the ticket comes from.
        call_sid: &'a str,
        /// One-line summary.
        subject: &'a str,
        /// What happened; sealed as PII.
        description: &'a str,
    },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Jobs {
    /// The queue in `store` for `instance` (prefix of its lease owners), with `jobs.lease_ms`
    /// and `jobs.max_attempts`.
    pub fn new(store: Store, instance: &str, lease: Duration, max_attempts: u32) -> Self {
        Self { store, instance: instance.to_string(), lease, max_attempts }
    }

    /// The job id of a call (one workflow per call, so enqueueing twice is a no-op).
    pub fn id_for(call_sid: &str) -> String {
        format!("JOB-{call_sid}")
    }

    /// Enqueue inside the transaction that stores the call.
    pub async fn enqueue_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        call_sid: &str,
        payload: &Value,
    ) -> anyhow::Result<String> {
        let id = Self::id_for(call_sid);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, call_sid, payload, status, attempts, lease_owner, lease_until_ms, created_ms, \
             updated_ms) VALUES ($1, $2, $3, 'queued', 0, NULL, 0, $4, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.clone())
        .bind(call_sid.to_string())
        .bind(serde_json::to_string(payload)?)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// Claim the oldest runnable job (queued, or running with an expired lease), or exactly
    /// `only` if it is runnable.
    pub async fn claim(&self, only: Option<&str>) -> anyhow::Result<Option<Claimed>> {
        let now = now_ms();
        let owner = format!("{}/{}", self.instance, new_id("c"));
        let lock = if self.store.is_postgres() { "FOR UPDATE SKIP LOCKED" } else { "" };
        let filter = if only.is_some() { "AND id = $5" } else { "" };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, \
             updated_ms = $3 WHERE id = (SELECT id FROM jobs WHERE ((status = 'queued' AND lease_until_ms <= $3) \
             OR (status = 'running' AND lease_until_ms < $3)) AND attempts < $4 {filter} ORDER BY created_ms, id \
             LIMIT 1 {lock}) RETURNING id, call_sid, payload, attempts"
        );
        let mut q = sqlx::query(&sql)
            .bind(owner.clone())
            .bind(now + ms(self.lease))
            .bind(now)
            .bind(i64::from(self.max_attempts));
        if let Some(id) = only {
            q = q.bind(id.to_string());
        }
        let Some(row) = q.fetch_optional(self.store.pool()).await? else { return Ok(None) };
        let payload: String = row.try_get("payload")?;
        Ok(Some(Claimed {
            id: row.try_get("id")?,
            call_sid: row.try_get("call_sid")?,
            payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
            attempts: row.try_get("attempts")?,
            owner,
        }))
    }

    /// Extend the lease; `false` when another instance took the job over.
    pub async fn renew(&self, job: &Claimed) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_until_ms = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(now_ms() + ms(self.lease))
        .bind(job.id.clone())
        .bind(job.owner.clone())
        .execute(self.store.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Mark done.
    pub async fn complete(&self, job: &Claimed) -> anyhow::Result<()> {
        sqlx::query("UPDATE jobs SET status = 'done', updated_ms = $1, last_error = NULL WHERE id = $2")
            .bind(now_ms())
            .bind(job.id.clone())
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Give the job back with a backoff, or park it as `dead` after the last attempt.
    pub async fn fail(&self, job: &Claimed, error: &str) -> anyhow::Result<()> {
        let dead = job.attempts >= i64::from(self.max_attempts);
        let backoff = 1000 * (1i64 << job.attempts.clamp(0, 6));
        sqlx::query(
            "UPDATE jobs SET status = $1, lease_owner = NULL, lease_until_ms = $2, updated_ms = $3, last_error = $4 \
             WHERE id = $5 AND lease_owner = $6",
        )
        .bind(if dead { "dead" } else { "queued" })
        .bind(now_ms() + backoff)
        .bind(now_ms())
        .bind(error.chars().take(500).collect::<String>())
        .bind(job.id.clone())
        .bind(job.owner.clone())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Jobs by status (`/metrics` queue depth).
    pub async fn depth(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(self.store.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?))).collect()
    }
}

/// Steps of `job_id` already done: step → (status, detail).
pub async fn done_steps(store: &Store, job_id: &str) -> anyhow::Result<HashMap<String, (String, Value)>> {
    let rows = sqlx::query("SELECT step, status, detail FROM job_steps WHERE job_id = $1")
        .bind(job_id.to_string())
        .fetch_all(store.pool())
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let detail = store.open(&r.try_get::<String, _>("detail")?)?;
        out.insert(r.try_get("step")?, (r.try_get("status")?, serde_json::from_str(&detail).unwrap_or(Value::Null)));
    }
    Ok(out)
}

/// Run `effect` and mark `step` done in one transaction. `Ok(false)`: the step was already done
/// (by an earlier attempt or a concurrent claimer), and nothing was written.
pub async fn step_once(
    store: &Store,
    job_id: &str,
    step: &str,
    owner: &str,
    status: &str,
    detail: &Value,
    effect: Effect<'_>,
) -> anyhow::Result<bool> {
    let now = now_ms();
    let mut tx = store.pool().begin().await?;
    // The marker goes first: on Postgres a concurrent insert of the same key waits for this
    // transaction, then does nothing, so the loser never reaches the effect.
    let inserted = sqlx::query(
        "INSERT INTO job_steps (job_id, step, status, detail, owner, done_ms) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (job_id, step) DO NOTHING",
    )
    .bind(job_id.to_string())
    .bind(step.to_string())
    .bind(status.to_string())
    .bind(store.seal(&detail.to_string())?)
    .bind(owner.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let mut invalidate = None;
    match effect {
        Effect::None => {}
        Effect::Crm { customer_id, call_sid, note } => {
            sqlx::query("UPDATE customers SET last_contact_ms = $1, last_call_summary = $2 WHERE id = $3")
                .bind(now)
                .bind(store.seal(note)?)
                .bind(customer_id.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO crm_log (id, customer_id, call_sid, note, created_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(format!("CRM-{call_sid}"))
            .bind(customer_id.to_string())
            .bind(call_sid.to_string())
            .bind(store.seal(note)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            invalidate = Some(customer_id.to_string());
        }
        Effect::Email { id, to, from, subject, body, call_sid } => {
            sqlx::query(
                "INSERT INTO outbox (id, to_addr, from_addr, subject, body, call_sid, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id.to_string())
            .bind(store.seal(to)?)
            .bind(from.to_string())
            .bind(subject.to_string())
            .bind(store.seal(body)?)
            .bind(call_sid.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        Effect::Ticket { id, customer_id, call_sid, subject, description } => {
            sqlx::query(
                "INSERT INTO tickets (id, customer_id, call_sid, subject, description, priority, status, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'normal', 'open', $6)",
            )
            .bind(id.to_string())
            .bind(customer_id.map(str::to_string))
            .bind(call_sid.to_string())
            .bind(subject.to_string())
            .bind(store.seal(description)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    if let Some(id) = invalidate {
        store.invalidate_customer(&id).await;
    }
    Ok(true)
}

//! Failing fast while PostgreSQL is unreachable. sqlx's pool answers a refused connection by
//! trying again until its acquire timeout (seconds), so without this every request of an outage
//! would wait that long before its 503. Instead: an operation that fails to reach the database,
//! or waits on it for longer than [`SUSPECT_AFTER`], sets off one probe on a connection of its
//! own; if the probe cannot connect either, the circuit opens — every waiting and every new
//! operation fails at once with [`StoreError::Unavailable`] — and the probe goes on every
//! [`PROBE_EVERY`] until the database answers, which closes the circuit again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::Notify;

use crate::StoreError;

/// An operation waiting this long makes the circuit check whether the database is there.
const SUSPECT_AFTER: Duration = Duration::from_millis(40);
/// How often an open circuit tries the database again.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// After a probe found the database there, the next may start only this much later.
const QUIET_AFTER_ANSWER: Duration = Duration::from_secs(1);
/// The longest one probe may take; a database slower than this to accept a connection and
/// answer `SELECT 1` counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Circuit {
    connect: Arc<PgConnectOptions>,
    open: AtomicBool,
    /// A probe is running (at most one at a time).
    probing: AtomicBool,
    /// Woken when the circuit opens, so operations already waiting give up at once.
    opened: Notify,
}

impl Circuit {
    pub(crate) fn new(connect: Arc<PgConnectOptions>) -> Arc<Self> {
        Arc::new(Self { connect, open: AtomicBool::new(false), probing: AtomicBool::new(false), opened: Notify::new() })
    }

    fn refusal() -> StoreError {
        StoreError::Unavailable("PostgreSQL cannot be reached (the connection is retried every 250 ms)".into())
    }

    /// Runs one database operation, unless the circuit is open or opens while it waits.
    pub(crate) async fn guard<T>(self: &Arc<Self>, operation: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        if self.open.load(Ordering::Acquire) {
            return Err(Self::refusal());
        }
        let opened = self.opened.notified();
        tokio::pin!(operation, opened);
        opened.as_mut().enable();
        tokio::select! {
            done = &mut operation => done,
            () = tokio::time::sleep(SUSPECT_AFTER) => {
                self.probe();
                tokio::select! {
                    done = &mut operation => done,
                    () = &mut opened => Err(Self::refusal()),
                }
            }
            () = &mut opened => Err(Self::refusal()),
        }
    }

    /// Starts a probe unless one is running.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let circuit = self.clone();
        tokio::spawn(async move {
            loop {
                let reached = circuit.reaches_database().await;
                match (reached, circuit.open.load(Ordering::Acquire)) {
                    (Ok(()), true) => {
                        circuit.open.store(false, Ordering::Release);
                        tracing::info!("PostgreSQL answers again: the circuit is closed");
                        break;
                    }
                    (Ok(()), false) => {
                        // The database was only slow: no second probe for a while, so a busy
                        // database is not also handed a connection a moment.
                        tokio::time::sleep(QUIET_AFTER_ANSWER).await;
                        break;
                    }
                    (Err(error), was_open) => {
                        if !was_open {
                            circuit.open.store(true, Ordering::Release);
                            circuit.opened.notify_waiters();
                            tracing::error!(%error, "PostgreSQL cannot be reached: requests that need it get 503 until it answers");
                        }
                        tokio::time::sleep(PROBE_EVERY).await;
                    }
                }
            }
            circuit.probing.store(false, Ordering::Release);
        });
    }

    async fn reaches_database(&self) -> Result<(), String> {
        let attempt = async {
            let mut connection = PgConnection::connect_with(&self.connect).await?;
            sqlx::query("SELECT 1").execute(&mut connection).await?;
            connection.close().await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        }
    }
}

//! The teacher reply cache: one redb file, the only handle to it.
//!
//! - **Key**: hex sha256 of the endpoint as configured (`"embedded"` or a URL), and the request
//!   body as sent (model, messages, sampling parameters, `response_format` schema) except its
//!   token budget (`max_tokens`). Anything else that can change the answer changes the key, so
//!   there is no manual invalidation and no stale answer. The budget only decides where a reply
//!   stops, so it is checked against the stored reply instead ([`CachedReply::fits`]): raising
//!   `max_tokens` re-asks only the replies that were cut, never the ones that completed.
//!   Entries stored before (shipped answers among them) are found under their old key, the
//!   body with its budget ([`RequestKey::legacy`]).
//! - **Value**: the raw reply text, token usage and timing as JSON. Replies are parsed when
//!   read, so a fix to `parse.rs` re-labels from the cache without asking again. A reply that
//!   does not parse is still a reply (it was paid for and a parser fix may rescue it); HTTP
//!   errors, timeouts and the like are never stored.
//! - **Durability**: each reply is committed (fsync) as it arrives, by one writer thread that
//!   groups replies arriving together into one transaction. `put` returns once its reply is on
//!   disk, so a killed run loses only requests still in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

const REPLIES: TableDefinition<&str, &[u8]> = TableDefinition::new("teacher_replies_v1");

/// Bumped if the key derivation changes, so old entries are simply never looked up.
const KEY_VERSION: &str = "biodistill-teacher-cache-v2";
/// The scheme before the budget left the key (still read, never written).
const LEGACY_KEY_VERSION: &str = "biodistill-teacher-cache-v1";

/// A stored reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReply {
    /// The assistant message content, exactly as received.
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The model name the server reported.
    pub model: String,
    pub finish_reason: Option<String>,
    /// Wall time of the successful attempt.
    pub latency_ms: f64,
    /// The run that paid for this reply (absent in replies stored before runs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_run: Option<String>,
    /// The request's `max_tokens` (absent in replies stored under a legacy key, whose key
    /// holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The Batch API batch that answered it (`teacher.mode = "batch"`): its tokens cost the
    /// batch price, in this run and in any later one that reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Each reply token's UTF-8 length in bytes and log probability, when the request asked
    /// for them (`teacher.logprobs`) and the server returned them: the teacher's confidence
    /// in each label ([`super::confidence`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<(u32, f32)>>,
}

impl CachedReply {
    /// Whether this reply is the answer to its request under a token budget of `budget`: a
    /// completed reply when it is no longer than that, a cut one when it was cut at that
    /// budget or a larger one (it would be cut again).
    pub fn fits(&self, budget: u32) -> bool {
        if self.finish_reason.as_deref() == Some("length") {
            self.max_tokens.is_none_or(|cut_at| cut_at >= budget)
        } else {
            self.completion_tokens <= u64::from(budget)
        }
    }
}

/// Where one request's reply is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// The key replies are stored under: endpoint and body without the token budget.
    pub key: String,
    /// The key of the same request before 2026-12-06 (body with its budget), still looked up.
    pub legacy: String,
    /// The request's `max_tokens`.
    pub budget: u32,
}

impl RequestKey {
    /// The key of `request_body` sent to `endpoint`.
    pub fn new(endpoint: &str, request_body: &serde_json::Value) -> Self {
        let legacy = hash(LEGACY_KEY_VERSION, endpoint, request_body);
        let mut body = request_body.clone();
        let budget = body.as_object_mut().and_then(|fields| {
            fields.remove("max_completion_tokens");
            fields.remove("max_tokens")
        });
        let budget = budget.and_then(|b| b.as_u64()).map_or(u32::MAX, |b| u32::try_from(b).unwrap_or(u32::MAX));
        Self { key: hash(KEY_VERSION, endpoint, &body), legacy, budget }
    }

    /// Whether `keys` (e.g. a shipped file's) holds this request under either key.
    pub fn is_in(&self, keys: &std::collections::HashSet<String>) -> bool {
        keys.contains(&self.key) || keys.contains(&self.legacy)
    }
}

fn hash(version: &str, endpoint: &str, body: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    for part in [version, endpoint, &body.to_string()] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// The stored reply that answers `key`, from an open table, and whether it was found under
/// the legacy key.
fn lookup(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
    key: &RequestKey,
) -> Result<Option<(CachedReply, bool)>> {
    for (k, legacy) in [(&key.key, false), (&key.legacy, true)] {
        let Some(value) = table.get(k.as_str()).map_err(|e| db_error(path, e))? else { continue };
        match serde_json::from_slice::<CachedReply>(value.value()) {
            Ok(reply) if reply.fits(key.budget) => return Ok(Some((reply, legacy))),
            Ok(_) => {}
            // An entry we cannot read is treated as missing: asking again costs one request,
            // failing the run would cost all of them.
            Err(e) => tracing::warn!(key = k, "unreadable teacher cache entry, asking again: {e}"),
        }
    }
    Ok(None)
}

type Write = (String, Vec<u8>, oneshot::Sender<Result<()>>);

/// The open cache (see the module docs). Dropping it finishes pending writes.
pub struct Cache {
    path: PathBuf,
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn db_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(path, format!("teacher cache: {e}"))
}

impl Cache {
    /// Open or create the cache file. Fails with a clear message if another run has it open.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| db_error(dir, e))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                db_error(path, "already open in another biodistill process (one label run per cache)")
            }
            other => db_error(path, other),
        })?;
        let txn = db.begin_write().map_err(|e| db_error(path, e))?;
        txn.open_table(REPLIES).map_err(|e| db_error(path, e))?;
        txn.commit().map_err(|e| db_error(path, e))?;
        let db = Arc::new(db);
        let (writer, jobs) = mpsc::channel::<Write>();
        let thread_db = Arc::clone(&db);
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("teacher-cache-writer".into())
            .spawn(move || write_loop(&thread_db, &thread_path, jobs))
            .map_err(|e| db_error(path, e))?;
        Ok(Cache { path: path.to_path_buf(), db, writer: Some(writer), thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored reply that answers `key` under its budget, if any. One found only under the
    /// legacy key is stored under the current key too (with the budget its old key held), where
    /// `label --export` and later lookups find it.
    pub async fn get(&self, key: &RequestKey) -> Result<Option<CachedReply>> {
        let found = {
            let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
            let table = txn.open_table(REPLIES).map_err(|e| db_error(&self.path, e))?;
            lookup(&table, &self.path, key)?
        };
        let Some((reply, legacy)) = found else { return Ok(None) };
        if legacy {
            let migrated = CachedReply { max_tokens: reply.max_tokens.or(Some(key.budget)), ..reply.clone() };
            self.put(&key.key, &migrated).await?;
        }
        Ok(Some(reply))
    }

    /// The reply stored under exactly `key`, whatever its budget (for export).
    pub fn get_stored(&self, key: &str) -> Result<Option<CachedReply>> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(REPLIES).map_err(|e| db_error(&self.path, e))?;
        let Some(value) = table.get(key).map_err(|e| db_error(&self.path, e))? else { return Ok(None) };
        Ok(serde_json::from_slice(value.value()).ok())
    }

    /// Store a reply; returns once it is committed to disk.
    pub async fn put(&self, key: &str, reply: &CachedReply) -> Result<()> {
        let bytes = serde_json::to_vec(reply)?;
        let (done, committed) = oneshot::channel();
        let writer = self.writer.as_ref().expect("the writer lives until drop");
        writer
            .send((key.to_string(), bytes, done))
            .map_err(|_| Error::Internal("teacher cache writer thread stopped".into()))?;
        committed.await.map_err(|_| Error::Internal("teacher cache writer thread stopped".into()))?
    }

    /// Which of `keys` have a stored reply that answers them (one read transaction for all).
    pub fn contains(&self, keys: &[RequestKey]) -> Result<Vec<bool>> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(REPLIES).map_err(|e| db_error(&self.path, e))?;
        keys.iter().map(|key| Ok(lookup(&table, &self.path, key)?.is_some())).collect()
    }

    /// Which of the raw `keys` hold an entry, whatever it answers (for imports).
    pub fn has(&self, keys: &[String]) -> Result<Vec<bool>> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(REPLIES).map_err(|e| db_error(&self.path, e))?;
        keys.iter().map(|key| Ok(table.get(key.as_str()).map_err(|e| db_error(&self.path, e))?.is_some())).collect()
    }

    /// Number of stored replies.
    pub fn len(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = txn.open_table(REPLIES).map_err(|e| db_error(&self.path, e))?;
        table.len().map_err(|e| db_error(&self.path, e))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Group commit: take one write, then everything already queued, and commit them together.
fn write_loop(db: &Database, path: &Path, jobs: mpsc::Receiver<Write>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(next) = jobs.try_recv() {
            batch.push(next);
            if batch.len() >= 256 {
                break;
            }
        }
        let result = (|| -> std::result::Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(REPLIES).map_err(|e| e.to_string())?;
                for (key, bytes, _) in &batch {
                    table.insert(key.as_str(), bytes.as_slice()).map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        for (_, _, done) in batch {
            let _ = done.send(result.clone().map_err(|e| db_error(path, e)));
        }
    }
}

/// Which of `keys` have a reply that answers them, read-only (for `--plan`); a missing file
/// holds none.
pub fn stored(path: &Path, keys: &[RequestKey]) -> Result<Vec<bool>> {
    if !path.exists() {
        return Ok(vec![false; keys.len()]);
    }
    // Both handles must outlive the transaction.
    let (read_only, writable);
    let txn = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => {
            read_only = db;
            read_only.begin_read()
        }
        // A writer killed mid-run leaves a file that needs repair, which only a writable open
        // does (the next label run would do the same).
        Err(redb::DatabaseError::RepairAborted) => {
            writable = Database::open(path).map_err(|e| db_error(path, e))?;
            writable.begin_read()
        }
        Err(e) => return Err(db_error(path, e)),
    }
    .map_err(|e| db_error(path, e))?;
    let table = match txn.open_table(REPLIES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![false; keys.len()]),
        Err(e) => return Err(db_error(path, e)),
    };
    keys.iter().map(|key| Ok(lookup(&table, path, key)?.is_some())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(content: &str) -> CachedReply {
        CachedReply {
            content: content.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            model: "m".into(),
            finish_reason: Some("stop".into()),
            latency_ms: 1.0,
            first_run: None,
            max_tokens: None,
            batch_id: None,
            token_logprobs: None,
        }
    }

    fn body(text: &str, max_tokens: u32) -> serde_json::Value {
        serde_json::json!({"model": "m", "messages": [["user", text]], "temperature": 0.0, "max_tokens": max_tokens})
    }

    #[tokio::test]
    async fn replies_persist_across_reopen_and_keys_cover_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let k = RequestKey::new("http://a/v1", &body("hi", 64));
        assert_ne!(k.key, RequestKey::new("http://b/v1", &body("hi", 64)).key);
        assert_ne!(k.key, RequestKey::new("http://a/v1", &body("hi!", 64)).key);
        assert_eq!(k.key, RequestKey::new("http://a/v1", &body("hi", 128)).key, "the budget is not in the key");
        assert_ne!(k.legacy, RequestKey::new("http://a/v1", &body("hi", 128)).legacy, "it was in the old one");
        assert_eq!(k.budget, 64);
        let nope = RequestKey::new("http://a/v1", &body("nope", 64));
        {
            let cache = Cache::open(&path).unwrap();
            assert!(cache.get(&k).await.unwrap().is_none());
            let puts = (0..20).map(|i| {
                let cache = &cache;
                async move { cache.put(&format!("k{i}"), &reply("x")).await }
            });
            futures::future::try_join_all(puts).await.unwrap();
            cache.put(&k.key, &reply("{}")).await.unwrap();
            let second = Cache::open(&path).err().expect("a second open of a live cache fails");
            assert!(second.to_string().contains("already open"), "{second}");
        }
        assert_eq!(stored(&path, &[k.clone(), nope.clone()]).unwrap(), vec![true, false]);
        let cache = Cache::open(&path).unwrap();
        assert_eq!(cache.contains(&[k.clone(), nope]).unwrap(), vec![true, false]);
        assert_eq!(cache.get(&k).await.unwrap(), Some(reply("{}")));
        assert_eq!(cache.len().unwrap(), 21);
    }

    /// Raising `max_tokens` finds every completed reply and none of the cut ones; lowering it
    /// below a completed reply's length, or below a cut reply's budget, is a miss; entries
    /// stored under the legacy key (budget in the key) are found at their own budget.
    #[tokio::test]
    async fn a_raised_budget_reuses_completed_replies_and_re_asks_cut_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.redb")).unwrap();
        let (done, cut, old) = (body("done", 64), body("cut", 64), body("old", 64));
        let key = |b: &serde_json::Value, budget: u32| {
            let mut b = b.clone();
            b["max_tokens"] = budget.into();
            RequestKey::new("embedded", &b)
        };
        let completed = CachedReply { completion_tokens: 40, max_tokens: Some(64), ..reply("{}") };
        let truncated = CachedReply {
            completion_tokens: 64,
            max_tokens: Some(64),
            finish_reason: Some("length".into()),
            ..reply("{\"x")
        };
        cache.put(&key(&done, 64).key, &completed).await.unwrap();
        cache.put(&key(&cut, 64).key, &truncated).await.unwrap();
        cache.put(&key(&old, 64).legacy, &reply("legacy")).await.unwrap();

        let hits = |budget| cache.contains(&[key(&done, budget), key(&cut, budget), key(&old, budget)]).unwrap();
        assert_eq!(hits(64), [true, true, true]);
        assert_eq!(hits(128), [true, false, false], "raised: the completed reply holds, the cut one is asked again");
        assert_eq!(hits(32), [false, true, false], "lowered: 40 tokens no longer fit; cut at 64 is cut at 32 too");
        assert_eq!(cache.get(&key(&old, 64)).await.unwrap().unwrap().content, "legacy");
    }
}

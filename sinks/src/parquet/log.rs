//! The commit log: which data files hold which offsets of which Kafka partition.
//!
//! Each Kafka partition has its own log folder (`_connectd/log/<topic>/<partition>/`). A
//! commit is one small JSON object whose key is the offset the log stood at when its flush
//! began (`from`); it names the flush's data files and the next offset (`next`). Commits are
//! created with put-if-absent (`PutMode::Create`: a hard link on a local disk, `If-None-Match`
//! on S3, generation preconditions on GCS and Azure), so of two writers that started a flush
//! at the same offset — a process and a zombie of a past rebalance — exactly one commits and
//! the other learns it lost. The log's next offset is the `next` of its last commit; that is
//! what the sink answers from [`stored_offsets`](connector_core::Sink::stored_offsets).
//!
//! Before a flush writes data files it records them in an *intent*
//! (`_connectd/pending/<topic>/<partition>/<from>-<id>.json`). An intent whose `from` is below
//! the log's next can never commit any more; [`Log::collect_garbage`] deletes its files
//! (except those a commit names, which a rewrite may share) and then the intent. That is how a
//! kill -9 between a data file and its commit leaves no duplicate behind once the partition
//! commits again.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::layout::{log_dir, log_key, parse_from, pending_dir};

/// Errors of the object store behind the log and the data files.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store refused or failed a request (retried by the runtime).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A log object is not what this sink writes (hand-edited or another program's).
    #[error("log object {path} is not a connectd commit: {error}")]
    Corrupt {
        /// The object's path.
        path: String,
        /// Why it could not be read.
        error: String,
    },
}

/// One data file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path under the sink's root (`event_type=x/date=…/<name>.parquet`).
    pub path: String,
    /// Rows in the file.
    pub records: u64,
    /// Size of the file.
    pub bytes: u64,
}

/// One commit of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// The log's next offset when the flush began (the key of this commit).
    pub from: i64,
    /// The next offset to read after this commit.
    pub next: i64,
    /// First record offset in the files.
    pub first_offset: i64,
    /// Last record offset in the files.
    pub last_offset: i64,
    /// Rows in all files.
    pub records: u64,
    /// The files, in folder order.
    pub files: Vec<FileEntry>,
    /// Who wrote it (connector name and a per-instance id).
    pub writer: String,
}

/// Files a flush is about to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The `from` of the commit the flush will attempt.
    pub from: i64,
    /// Paths under the sink's root.
    pub files: Vec<String>,
    /// Who wrote it.
    pub writer: String,
}

/// What became of a commit attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// This commit is now in the log.
    Yes,
    /// Another commit already starts at this `from`.
    Lost(Box<Commit>),
}

/// The log over one object store root.
#[derive(Clone)]
pub struct Log {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl Log {
    /// The log under `root` (a path prefix inside `store`, may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, root: &str) -> Self {
        Self {
            store,
            root: root.trim_matches('/').to_string(),
        }
    }

    /// The store the data files go to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full path of `rel` (relative to the root).
    pub fn path(&self, rel: &str) -> Result<Path, LogError> {
        let full = if self.root.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.root)
        };
        Path::parse(&full).map_err(|e| LogError::Store(e.into()))
    }

    fn rel<'a>(&self, p: &'a Path) -> &'a str {
        let s = p.as_ref();
        if self.root.is_empty() {
            s
        } else {
            s.strip_prefix(self.root.as_str())
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(s)
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, p: &Path) -> Result<T, LogError> {
        let bytes = self.store.get(p).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
            path: p.to_string(),
            error: e.to_string(),
        })
    }

    async fn list(&self, dir: &str) -> Result<Vec<Path>, LogError> {
        let prefix = self.path(dir)?;
        let mut out: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        out.sort();
        Ok(out)
    }

    /// The last commit of a partition (`None`: nothing committed yet).
    pub async fn last(&self, topic: &str, partition: i32) -> Result<Option<Commit>, LogError> {
        let keys = self.list(&log_dir(topic, partition)).await?;
        let last = keys
            .iter()
            .filter_map(|k| Some((parse_from(k.filename()?)?, k)))
            .max_by_key(|(from, _)| *from);
        match last {
            Some((_, k)) => self.get_json(k).await.map(Some),
            None => Ok(None),
        }
    }

    /// Every commit of a partition, in offset order.
    pub async fn commits(&self, topic: &str, partition: i32) -> Result<Vec<Commit>, LogError> {
        let mut out = Vec::new();
        for k in self.list(&log_dir(topic, partition)).await? {
            if k.filename().and_then(parse_from).is_some() {
                out.push(self.get_json::<Commit>(&k).await?);
            }
        }
        out.sort_by_key(|c| c.from);
        Ok(out)
    }

    /// The commit that starts at `from`, if any.
    pub async fn at(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<Option<Commit>, LogError> {
        match self
            .get_json(&self.path(&log_key(topic, partition, from))?)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(LogError::Store(object_store::Error::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the files a flush is about to write; returns the intent's key.
    pub async fn intend(
        &self,
        topic: &str,
        partition: i32,
        intent: &Intent,
        id: &str,
    ) -> Result<Path, LogError> {
        let key = self.path(&format!(
            "{}/{:020}-{id}.json",
            pending_dir(topic, partition),
            intent.from
        ))?;
        let body = serde_json::to_vec(intent).map_err(|e| LogError::Corrupt {
            path: key.to_string(),
            error: e.to_string(),
        })?;
        self.store.put(&key, PutPayload::from(body)).await?;
        Ok(key)
    }

    /// Adds `c` to the log unless a commit already starts at `c.from`.
    pub async fn commit(&self, c: &Commit) -> Result<Committed, LogError> {
        let key = self.path(&log_key(&c.topic, c.partition, c.from))?;
        let body = serde_json::to_vec_pretty(c).map_err(|e| LogError::Corrupt {
            path: key.to_string(),
            error: e.to_string(),
        })?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(Committed::Yes),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let other: Commit = self.get_json(&key).await?;
                if &other == c {
                    // Our own earlier attempt, whose answer was lost.
                    Ok(Committed::Yes)
                } else {
                    Ok(Committed::Lost(Box::new(other)))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, p: &Path) -> Result<(), LogError> {
        match self.store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the files of intents that can no longer commit (`from < next`) and are not
    /// named by the commit at their `from`, then the intents. Returns the files deleted.
    pub async fn collect_garbage(
        &self,
        topic: &str,
        partition: i32,
        next: i64,
    ) -> Result<u64, LogError> {
        let mut deleted = 0;
        for key in self.list(&pending_dir(topic, partition)).await? {
            let Some(from) = key.filename().and_then(parse_from) else {
                continue;
            };
            if from >= next {
                continue;
            }
            let intent: Intent = match self.get_json(&key).await {
                Ok(i) => i,
                Err(LogError::Store(object_store::Error::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            };
            let kept: Vec<String> = self
                .at(topic, partition, from)
                .await?
                .map(|c| c.files.into_iter().map(|f| f.path).collect())
                .unwrap_or_default();
            for f in intent.files.iter().filter(|f| !kept.contains(f)) {
                let p = self.path(f)?;
                if self.store.head(&p).await.is_ok() {
                    self.delete(&p).await?;
                    deleted += 1;
                    tracing::info!(topic, partition, file = %f, "deleted a file no commit names");
                }
            }
            self.delete(&key).await?;
        }
        Ok(deleted)
    }

    /// Every data file (`*.parquet`) under the root, relative to it.
    pub async fn data_files(&self) -> Result<Vec<String>, LogError> {
        let prefix = if self.root.is_empty() {
            None
        } else {
            Some(self.path("")?)
        };
        let mut out: Vec<String> = self
            .store
            .list(prefix.as_ref())
            .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
            .map_ok(|m| self.rel(&m.location).to_string())
            .try_collect()
            .await?;
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn commit(from: i64, next: i64, files: &[&str], writer: &str) -> Commit {
        Commit {
            topic: "t".into(),
            partition: 0,
            from,
            next,
            first_offset: from,
            last_offset: next - 1,
            records: (next - from) as u64,
            files: files
                .iter()
                .map(|f| FileEntry {
                    path: (*f).into(),
                    records: 1,
                    bytes: 1,
                })
                .collect(),
            writer: writer.into(),
        }
    }

    async fn put(log: &Log, rel: &str) {
        log.store
            .put(&log.path(rel).expect("path"), PutPayload::from("x"))
            .await
            .expect("put");
    }

    #[tokio::test]
    async fn of_two_writers_from_one_offset_exactly_one_commits_and_the_loser_leaves_nothing() {
        let log = Log::new(Arc::new(InMemory::new()), "root");
        assert_eq!(log.last("t", 0).await.expect("empty"), None);
        // Both flushed from offset 0, with different ranges (a zombie of a rebalance).
        let a = commit(0, 300, &["d=1/t-0-0-299.parquet"], "a");
        let b = commit(
            0,
            250,
            &["d=1/t-0-0-249.parquet", "d=2/t-0-0-249.parquet"],
            "b",
        );
        let ia = Intent {
            from: 0,
            files: vec![a.files[0].path.clone()],
            writer: "a".into(),
        };
        let ib = Intent {
            from: 0,
            files: b.files.iter().map(|f| f.path.clone()).collect(),
            writer: "b".into(),
        };
        let ka = log.intend("t", 0, &ia, "a").await.expect("intent");
        log.intend("t", 0, &ib, "b").await.expect("intent");
        for f in ia.files.iter().chain(&ib.files) {
            put(&log, f).await;
        }
        assert_eq!(log.commit(&a).await.expect("commit"), Committed::Yes);
        log.delete(&ka).await.expect("delete");
        // Answering the same commit again (a lost reply, retried) is still a success.
        assert_eq!(log.commit(&a).await.expect("again"), Committed::Yes);
        match log.commit(&b).await.expect("commit") {
            Committed::Lost(other) => assert_eq!(*other, a),
            Committed::Yes => panic!("two commits from one offset"),
        }
        assert_eq!(
            log.last("t", 0).await.expect("last").map(|c| c.next),
            Some(300)
        );
        // B never cleaned up (killed): its intent is below the log's next, so its files go.
        assert_eq!(log.collect_garbage("t", 0, 300).await.expect("gc"), 2);
        assert_eq!(
            log.data_files().await.expect("list"),
            ["d=1/t-0-0-299.parquet"]
        );
        assert!(log
            .list(&pending_dir("t", 0))
            .await
            .expect("list")
            .is_empty());
    }

    #[tokio::test]
    async fn a_crashed_flush_is_collected_once_the_partition_commits_past_it_not_before() {
        let log = Log::new(Arc::new(InMemory::new()), "");
        log.commit(&commit(0, 100, &["t-0-0-99.parquet"], "w"))
            .await
            .expect("commit");
        put(&log, "t-0-0-99.parquet").await;
        // Killed after its file, before its commit: from 100, records 100..180.
        let crashed = Intent {
            from: 100,
            files: vec!["t-0-100-179.parquet".into()],
            writer: "w".into(),
        };
        log.intend("t", 0, &crashed, "x").await.expect("intent");
        put(&log, "t-0-100-179.parquet").await;
        // It may still commit (it starts at the log's next): left alone.
        assert_eq!(log.collect_garbage("t", 0, 100).await.expect("gc"), 0);
        assert_eq!(log.data_files().await.expect("list").len(), 2);
        // The restarted writer flushed 100..250 under another name, and committed.
        let redo = commit(100, 250, &["t-0-100-249.parquet"], "w2");
        put(&log, "t-0-100-249.parquet").await;
        assert_eq!(log.commit(&redo).await.expect("commit"), Committed::Yes);
        assert_eq!(log.collect_garbage("t", 0, 250).await.expect("gc"), 1);
        assert_eq!(
            log.data_files().await.expect("list"),
            ["t-0-0-99.parquet", "t-0-100-249.parquet"]
        );
        let chain = log.commits("t", 0).await.expect("commits");
        assert_eq!(
            chain.iter().map(|c| (c.from, c.next)).collect::<Vec<_>>(),
            [(0, 100), (100, 250)]
        );
    }
}

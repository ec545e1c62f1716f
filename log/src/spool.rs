//! The embedded log: a durable spool on local disk, for deployments on one
//! machine with no broker to run. Same contract as Kafka (see the crate docs),
//! checked by the same conformance tests.
//!
//! Layout under the spool directory:
//!
//! ```text
//! partitions/<p>/<base offset, 20 digits>.seg   records, appended in order
//! groups/<group>.pos                            committed positions, "partition offset" lines
//! ```
//!
//! A record on disk is `len: u32 LE | crc32: u32 LE | key_len: u16 LE | key | value`,
//! where `len` counts the bytes after the crc and the crc covers them. A
//! single writer thread takes every append queued at that moment, writes
//! them, fsyncs each touched segment once (group commit) and only then makes
//! them visible to consumers and answers the appenders. After a crash the
//! torn tail of a segment (a record cut short, or one whose crc fails) is cut
//! off on open: it was never acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{Delivered, LogConsumer, LogError, LogProducer, Record, Resume};

/// Bytes before a record's key: len, crc, key_len.
const FRAME_HEADER: usize = 4 + 4 + 2;
/// Appends the writer takes into one group commit at most.
const MAX_GROUP: usize = 4096;
/// Bytes one poll reads from one segment at most.
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Records are spread over partitions by a hash of their key, so one
    /// key's records keep their order (default 4). Fixed once a spool exists.
    pub partitions: u32,
    /// A segment is closed and a new one started past this size (default 64 MiB).
    pub segment_bytes: u64,
    /// Appends that would take the spool past this size are refused with
    /// `Full` until consumers commit and old segments are deleted (default 10 GiB).
    pub max_disk_bytes: u64,
    /// Appends waiting for the writer before new ones are refused with `Full` (default 4096).
    pub queue_depth: usize,
    /// Largest record value accepted (default 16 MiB).
    pub max_record_bytes: usize,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            partitions: 4,
            segment_bytes: 64 * 1024 * 1024,
            max_disk_bytes: 10 * 1024 * 1024 * 1024,
            queue_depth: 4096,
            max_record_bytes: 16 * 1024 * 1024,
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync of directory", dir, e))
}

/// Parses framed records from `bytes`; returns each record's start and the
/// length of the valid prefix (shorter than `bytes` when the tail is torn).
fn scan(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut positions = Vec::new();
    let mut pos = 0;
    while let Some(frame) = parse_frame(bytes, pos) {
        positions.push(pos as u64);
        pos = frame.next;
    }
    (positions, pos)
}

/// One record read from segment bytes.
struct Frame<'a> {
    key: &'a [u8],
    value: &'a [u8],
    /// Where the next record starts.
    next: usize,
}

/// The record at `pos`, or `None` if the bytes there are not a whole,
/// intact record.
fn parse_frame(bytes: &[u8], pos: usize) -> Option<Frame<'_>> {
    let header = bytes.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let body = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if len < 2 || crc32fast::hash(body) != crc {
        return None;
    }
    let key_len = u16::from_le_bytes([body[0], body[1]]) as usize;
    let key = body.get(2..2 + key_len)?;
    Some(Frame {
        key,
        value: &body[2 + key_len..],
        next: pos + 8 + len,
    })
}

fn encode_frame(out: &mut Vec<u8>, record: &Record) {
    let key = record.key.as_bytes();
    let len = 2 + key.len() + record.value.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&record.value);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Segment {
    base: i64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte position of every durable record.
    positions: Vec<u64>,
    /// Durable length of the file.
    bytes: u64,
}

impl Segment {
    fn end(&self) -> i64 {
        self.base + self.positions.len() as i64
    }

    fn create(dir: &Path, base: i64) -> Result<Self, LogError> {
        let path = dir.join(format!("{base:020}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("creating segment", &path, e))?;
        fsync_dir(dir)?;
        Ok(Self {
            base,
            path,
            file: Arc::new(file),
            positions: Vec::new(),
            bytes: 0,
        })
    }
}

struct Partition {
    dir: PathBuf,
    /// Oldest first; the last one takes appends.
    segments: Vec<Segment>,
}

impl Partition {
    fn open(dir: PathBuf) -> Result<Self, LogError> {
        fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        let mut bases: Vec<i64> = fs::read_dir(&dir)
            .map_err(|e| io_error("listing", &dir, e))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(format!("{base:020}.seg"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("opening segment", &path, e))?;
            let bytes = fs::read(&path).map_err(|e| io_error("reading segment", &path, e))?;
            let (positions, valid) = scan(&bytes);
            if valid < bytes.len() {
                if i + 1 < bases.len() {
                    return Err(LogError::Fatal(format!(
                        "segment {} is damaged at byte {valid} and is not the last one",
                        path.display()
                    )));
                }
                // The torn tail of the last segment was never acknowledged.
                file.set_len(valid as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error("truncating torn tail of", &path, e))?;
                tracing::warn!(segment = %path.display(), cut = bytes.len() - valid, "cut a torn tail after a crash");
            }
            if let Some(prev) = segments.last()
                && prev.end() != base
            {
                return Err(LogError::Fatal(format!(
                    "segment {} starts at {base}, expected {}",
                    path.display(),
                    prev.end()
                )));
            }
            segments.push(Segment {
                base,
                path,
                file: Arc::new(file),
                positions,
                bytes: valid as u64,
            });
        }
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0)?);
        }
        Ok(Self { dir, segments })
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a partition always has a segment")
    }

    fn high(&self) -> i64 {
        self.segments
            .last()
            .expect("a partition always has a segment")
            .end()
    }

    fn low(&self) -> i64 {
        self.segments[0].base
    }
}

struct AppendRequest {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), LogError>>,
}

struct Shared {
    config: SpoolConfig,
    partitions: Vec<Mutex<Partition>>,
    groups_dir: PathBuf,
    /// Groups with a consumer open in this process (one consumer per group).
    open_groups: Mutex<BTreeSet<String>>,
    disk_bytes: AtomicU64,
    /// Woken after every group commit.
    appended: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still consistent
    // for readers: positions are only published after a successful fsync.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn partition_of(&self, key: &str) -> usize {
        (crc32fast::hash(key.as_bytes()) % self.config.partitions) as usize
    }

    /// Writes one group of appends: everything fsynced before anything is
    /// visible or answered; on failure every written byte is cut off again.
    fn write_group(&self, requests: Vec<AppendRequest>) {
        let mut buffers: BTreeMap<usize, (Vec<u8>, Vec<u64>)> = BTreeMap::new();
        let mut accepted = Vec::with_capacity(requests.len());
        let mut group_bytes = 0u64;
        let on_disk = self.disk_bytes.load(Ordering::Relaxed);
        for request in requests {
            let size: u64 = request
                .records
                .iter()
                .map(|r| (FRAME_HEADER + r.key.len() + r.value.len()) as u64)
                .sum();
            if on_disk + group_bytes + size > self.config.max_disk_bytes {
                let _ = request.done.send(Err(LogError::Full(format!(
                    "spool holds {on_disk} bytes, its budget is {}",
                    self.config.max_disk_bytes
                ))));
                continue;
            }
            group_bytes += size;
            for r in &request.records {
                let (buf, starts) = buffers.entry(self.partition_of(&r.key)).or_default();
                starts.push(buf.len() as u64);
                encode_frame(buf, r);
            }
            accepted.push(request.done);
        }
        if accepted.is_empty() {
            return;
        }
        let outcome = self.write_and_publish(buffers);
        if outcome.is_ok() {
            self.disk_bytes.fetch_add(group_bytes, Ordering::Relaxed);
            self.appended.notify_waiters();
        }
        for done in accepted {
            let _ = done.send(outcome.clone());
        }
    }

    fn write_and_publish(
        &self,
        buffers: BTreeMap<usize, (Vec<u8>, Vec<u64>)>,
    ) -> Result<(), LogError> {
        // Where each partition's bytes go. Only this thread appends, so the
        // active segment cannot change between here and publishing.
        let mut targets = Vec::with_capacity(buffers.len());
        for (&p, (buf, _)) in &buffers {
            let mut part = lock(&self.partitions[p]);
            if part.active().bytes >= self.config.segment_bytes {
                let (dir, base) = (part.dir.clone(), part.high());
                part.segments.push(Segment::create(&dir, base)?);
            }
            let seg = part.active();
            targets.push((p, seg.file.clone(), seg.path.clone(), seg.bytes, buf));
        }
        let written = targets.iter().try_for_each(|(_, file, path, at, buf)| {
            file.write_all_at(buf, *at)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error("appending to", path, e))
        });
        if let Err(e) = written {
            for (_, file, path, at, _) in &targets {
                if let Err(cut) = file.set_len(*at).and_then(|()| file.sync_data()) {
                    // The bytes past `at` were never published; on open they
                    // are a torn tail or follow the last valid record anyway.
                    tracing::error!(segment = %path.display(), error = %cut, "could not cut back a failed append");
                }
            }
            return Err(e);
        }
        for (p, (buf, starts)) in buffers {
            let mut part = lock(&self.partitions[p]);
            let seg = part.active();
            let at = seg.bytes;
            seg.positions.extend(starts.into_iter().map(|s| at + s));
            seg.bytes += buf.len() as u64;
        }
        Ok(())
    }

    /// Durable records of partition `p` from offset `from`, at most `max`.
    fn read(&self, p: usize, from: i64, max: usize) -> Result<(i64, Vec<Delivered>), LogError> {
        let (file, path, start, end, first) = {
            let part = lock(&self.partitions[p]);
            // Records below the oldest segment were deleted after every
            // group committed past them; continue from the oldest kept.
            let from = from.max(part.low());
            if from >= part.high() || max == 0 {
                return Ok((from, Vec::new()));
            }
            let i = part.segments.partition_point(|s| s.end() <= from);
            let seg = &part.segments[i];
            let first = (from - seg.base) as usize;
            let mut last = (first + max).min(seg.positions.len());
            let start = seg.positions[first];
            while last > first + 1
                && seg.positions.get(last).copied().unwrap_or(seg.bytes) - start > MAX_READ_BYTES
            {
                last -= 1;
            }
            let end = seg.positions.get(last).copied().unwrap_or(seg.bytes);
            (seg.file.clone(), seg.path.clone(), start, end, from)
        };
        let mut bytes = vec![0; (end - start) as usize];
        file.read_exact_at(&mut bytes, start)
            .map_err(|e| io_error("reading", &path, e))?;
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let frame = parse_frame(&bytes, pos).ok_or_else(|| {
                LogError::Fatal(format!(
                    "record damaged on disk in {} at byte {}",
                    path.display(),
                    start + pos as u64
                ))
            })?;
            out.push(Delivered {
                partition: p as i32,
                offset: first + out.len() as i64,
                key: frame.key.to_vec(),
                value: frame.value.to_vec(),
            });
            pos = frame.next;
        }
        Ok((first + out.len() as i64, out))
    }

    fn group_path(&self, group: &str) -> PathBuf {
        self.groups_dir.join(format!("{group}.pos"))
    }

    fn load_group(&self, group: &str) -> Result<Vec<i64>, LogError> {
        let path = self.group_path(group);
        let mut positions = vec![0; self.partitions.len()];
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(positions),
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        for line in text.lines() {
            let parsed = line
                .split_once(' ')
                .and_then(|(p, o)| Some((p.parse::<usize>().ok()?, o.parse::<i64>().ok()?)));
            match parsed {
                Some((p, o)) if p < positions.len() => positions[p] = o,
                _ => {
                    return Err(LogError::Fatal(format!(
                        "bad line {line:?} in {}",
                        path.display()
                    )));
                }
            }
        }
        Ok(positions)
    }

    /// Replaces a group's positions atomically (write, fsync, rename, fsync).
    fn store_group(&self, group: &str, positions: &[i64]) -> Result<(), LogError> {
        let path = self.group_path(group);
        let tmp = path.with_extension("pos.tmp");
        let text: String = positions
            .iter()
            .enumerate()
            .map(|(p, o)| format!("{p} {o}\n"))
            .collect();
        fs::write(&tmp, text)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| io_error("writing", &path, e))?;
        fsync_dir(&self.groups_dir)
    }

    /// Deletes closed segments every group has committed past.
    fn delete_consumed(&self) -> Result<(), LogError> {
        let mut floor: Option<Vec<i64>> = None;
        for entry in
            fs::read_dir(&self.groups_dir).map_err(|e| io_error("listing", &self.groups_dir, e))?
        {
            let name = entry
                .map_err(|e| io_error("listing", &self.groups_dir, e))?
                .file_name();
            let Some(group) = name.to_str().and_then(|n| n.strip_suffix(".pos")) else {
                continue;
            };
            let positions = self.load_group(group)?;
            floor = Some(match floor {
                None => positions,
                Some(f) => f.iter().zip(&positions).map(|(a, b)| *a.min(b)).collect(),
            });
        }
        // With no group yet, nothing has been read: keep everything.
        let Some(floor) = floor else { return Ok(()) };
        for (p, committed) in floor.into_iter().enumerate() {
            let mut part = lock(&self.partitions[p]);
            while part.segments.len() > 1 && part.segments[0].end() <= committed {
                let seg = part.segments.remove(0);
                fs::remove_file(&seg.path).map_err(|e| io_error("deleting", &seg.path, e))?;
                self.disk_bytes.fetch_sub(seg.bytes, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// An open spool. Cheap to clone; the writer thread stops when the last
/// clone and every producer are dropped.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: mpsc::Sender<AppendRequest>,
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, cutting off any torn
    /// tail a crash left behind.
    pub fn open(config: SpoolConfig) -> Result<Self, LogError> {
        if config.partitions == 0 || config.queue_depth == 0 {
            return Err(LogError::Fatal(
                "a spool needs at least one partition and a queue".into(),
            ));
        }
        let groups_dir = config.dir.join("groups");
        fs::create_dir_all(&groups_dir).map_err(|e| io_error("creating", &groups_dir, e))?;
        let existing = fs::read_dir(config.dir.join("partitions"))
            .map(|d| d.count())
            .unwrap_or(0);
        if existing != 0 && existing != config.partitions as usize {
            return Err(LogError::Fatal(format!(
                "spool {} has {existing} partitions, configured {}; the count cannot change",
                config.dir.display(),
                config.partitions
            )));
        }
        let partitions = (0..config.partitions)
            .map(|p| {
                Partition::open(config.dir.join("partitions").join(p.to_string())).map(Mutex::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let disk: u64 = partitions
            .iter()
            .map(|p| lock(p).segments.iter().map(|s| s.bytes).sum::<u64>())
            .sum();
        let (tx, mut rx) = mpsc::channel::<AppendRequest>(config.queue_depth);
        let shared = Arc::new(Shared {
            config,
            partitions,
            groups_dir,
            open_groups: Mutex::new(BTreeSet::new()),
            disk_bytes: AtomicU64::new(disk),
            appended: Notify::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("candor-spool-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    writer.write_group(group);
                }
            })
            .map_err(|e| LogError::Fatal(format!("starting the spool writer: {e}")))?;
        Ok(Self { shared, tx })
    }

    pub fn producer(&self) -> SpoolProducer {
        SpoolProducer {
            spool: self.clone(),
        }
    }

    /// The consumer of `group`. One per group at a time: a spool serves one
    /// process, so there is nothing to share partitions with.
    pub fn consumer(&self, group: &str) -> Result<SpoolConsumer, LogError> {
        let valid = !group.is_empty()
            && group.len() <= 128
            && group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(LogError::Fatal(format!(
                "group name {group:?} must be 1-128 of [A-Za-z0-9._-]"
            )));
        }
        if !lock(&self.shared.open_groups).insert(group.to_string()) {
            return Err(LogError::Fatal(format!(
                "group {group} already has a consumer in this process"
            )));
        }
        let positions = match self.shared.load_group(group) {
            Ok(p) => p,
            Err(e) => {
                lock(&self.shared.open_groups).remove(group);
                return Err(e);
            }
        };
        Ok(SpoolConsumer {
            shared: self.shared.clone(),
            group: group.to_string(),
            positions,
            next_partition: 0,
        })
    }

    /// Bytes of records the spool holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }
}

pub struct SpoolProducer {
    spool: Spool,
}

#[async_trait]
impl LogProducer for SpoolProducer {
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let max = self.spool.shared.config.max_record_bytes;
        if let Some(r) = records
            .iter()
            .find(|r| r.value.len() > max || r.key.len() > u16::MAX as usize)
        {
            return Err(LogError::Fatal(format!(
                "record of {} bytes (key {} bytes) exceeds the spool's limits",
                r.value.len(),
                r.key.len()
            )));
        }
        let (done, answer) = oneshot::channel();
        self.spool
            .tx
            .try_send(AppendRequest { records, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    LogError::Full("spool append queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    LogError::Fatal("spool writer stopped".into())
                }
            })?;
        answer
            .await
            .map_err(|_| LogError::Fatal("spool writer stopped".into()))?
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), LogError> {
        // Every append is durable by the time it is answered.
        Ok(())
    }

    async fn check(&self) -> Result<(), LogError> {
        let shared = &self.spool.shared;
        if self.spool.tx.is_closed() {
            return Err(LogError::Fatal("spool writer stopped".into()));
        }
        if shared.disk_bytes.load(Ordering::Relaxed) >= shared.config.max_disk_bytes {
            return Err(LogError::Full("spool disk budget is used up".into()));
        }
        Ok(())
    }

    fn queue_depth(&self) -> u64 {
        let tx = &self.spool.tx;
        (tx.max_capacity() - tx.capacity()) as u64
    }
}

pub struct SpoolConsumer {
    shared: Arc<Shared>,
    group: String,
    /// Next offset to read, per partition.
    positions: Vec<i64>,
    /// Partition a poll starts from, rotated so none is starved.
    next_partition: usize,
}

impl SpoolConsumer {
    fn read_available(&mut self, max: usize) -> Result<Vec<Delivered>, LogError> {
        let n = self.positions.len();
        let mut out = Vec::new();
        for i in 0..n {
            let p = (self.next_partition + i) % n;
            let (next, mut records) = self.shared.read(p, self.positions[p], max - out.len())?;
            self.positions[p] = next;
            out.append(&mut records);
            if out.len() >= max {
                break;
            }
        }
        self.next_partition = (self.next_partition + 1) % n;
        Ok(out)
    }
}

#[async_trait]
impl LogConsumer for SpoolConsumer {
    async fn poll(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        let shared = self.shared.clone();
        loop {
            // Register for the wake-up before looking, so an append that
            // lands in between is not missed.
            let appended = shared.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let records = self.read_available(max_records.max(1))?;
            if !records.is_empty() {
                return Ok(records);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn commit(&mut self, positions: &[Resume]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut stored = self.shared.load_group(&self.group)?;
        for r in positions {
            let slot = stored
                .get_mut(r.partition as usize)
                .ok_or_else(|| LogError::Fatal(format!("no partition {}", r.partition)))?;
            *slot = r.next_offset;
        }
        self.shared.store_group(&self.group, &stored)?;
        self.shared.delete_consumed()
    }

    async fn end_offsets(&self) -> Result<Vec<Resume>, LogError> {
        Ok(self
            .shared
            .partitions
            .iter()
            .enumerate()
            .map(|(p, part)| Resume {
                partition: p as i32,
                next_offset: lock(part).high(),
            })
            .collect())
    }

    async fn committed(&self) -> Result<Vec<Resume>, LogError> {
        Ok(self
            .shared
            .load_group(&self.group)?
            .into_iter()
            .enumerate()
            .map(|(p, next_offset)| Resume {
                partition: p as i32,
                next_offset,
            })
            .collect())
    }
}

impl Drop for SpoolConsumer {
    fn drop(&mut self) {
        lock(&self.shared.open_groups).remove(&self.group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tails_are_found() {
        let mut buf = Vec::new();
        for i in 0..3 {
            encode_frame(
                &mut buf,
                &Record {
                    key: format!("k{i}"),
                    value: vec![i as u8; 10 + i],
                },
            );
        }
        let (positions, valid) = scan(&buf);
        assert_eq!(positions.len(), 3);
        assert_eq!(valid, buf.len());
        for cut in 1..buf.len() - positions[2] as usize {
            let (p, v) = scan(&buf[..buf.len() - cut]);
            assert_eq!((p.len(), v as u64), (2, positions[2]), "cut {cut}");
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            scan(&flipped).0.len(),
            2,
            "a crc mismatch ends the valid prefix"
        );
    }
}

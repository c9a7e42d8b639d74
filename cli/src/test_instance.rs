//! `livemig-test-instance`: a stand-in for a VM, used by the tests, the demo
//! and the bench.
//!
//! It is a real librbd client: it opens its volume and writes a verifiable
//! pattern (random offsets, random sizes, some discards) at a configured
//! rate with a few operations in flight, never two overlapping ones at once
//! (so the order of acknowledgements is the order of effect). Every
//! acknowledged operation goes to the log as one line (see
//! `livemig::hypervisor::test_instance::LogEntry`), from which a test
//! rebuilds the exact content the volume must have. It obeys hold / resume /
//! re-point over a unix control socket, like a hypervisor would; with
//! `--ignore-hold` it claims to hold but keeps writing (a rogue writer, to
//! prove the fence).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use livemig::ceph::{Cluster, ClusterConfig, Image};
use livemig::spec::ImageSpec;
use livemig_test_support::{apply_log, pattern, LogEntry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Notify};

/// A test instance: writes a verifiable pattern to an RBD image and obeys
/// hold / resume / repoint on a control socket.
#[derive(Parser)]
#[command(name = "livemig-test-instance")]
struct Args {
    /// The image to write, POOL/IMAGE or POOL/NAMESPACE/IMAGE.
    #[arg(long)]
    image: ImageSpec,
    /// ceph.conf of its cluster (default: $CEPH_CONF).
    #[arg(long, env = "CEPH_CONF")]
    conf: PathBuf,
    /// Control socket path (created; removed at exit).
    #[arg(long, required_unless_present = "verify")]
    control: Option<PathBuf>,
    /// Log of acknowledged operations.
    #[arg(long)]
    log: PathBuf,
    /// Operations per second (0: as fast as the depth allows).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Operations in flight at most.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Smallest write, bytes (a multiple of 512).
    #[arg(long, default_value_t = 4096)]
    min_size: u64,
    /// Largest write, bytes (sizes are log-uniform between the two).
    #[arg(long, default_value_t = 1 << 20)]
    max_size: u64,
    /// Percent of operations that are discards.
    #[arg(long, default_value_t = 10)]
    discard_percent: u32,
    /// Write only within the first BYTES of the image (default: all of it).
    #[arg(long)]
    span: Option<u64>,
    /// Random seed (offsets, sizes, patterns).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Claim to hold but keep writing (a rogue writer).
    #[arg(long)]
    ignore_hold: bool,
    /// Do not write: check that the image holds exactly what the log's
    /// acknowledged operations wrote onto an image that started as zeros.
    #[arg(long)]
    verify: bool,
}

/// `--verify`: rebuilds the content from the log and compares.
async fn verify(args: &Args) -> anyhow::Result<()> {
    let cluster = connect(args.conf.clone()).await?;
    let (image, size) = open(&cluster, &args.image).await?;
    let text = std::fs::read_to_string(&args.log).with_context(|| format!("reading {}", args.log.display()))?;
    let entries: Vec<LogEntry> = text.lines().filter_map(LogEntry::parse).collect();
    let acked = entries
        .iter()
        .filter(|e| matches!(e, LogEntry::Write { .. } | LogEntry::Discard { .. }))
        .count();
    let mut model = vec![0u8; size as usize];
    apply_log(&mut model, &entries);
    let step = 16usize << 20;
    let mut buf = Vec::new();
    for offset in (0..model.len()).step_by(step) {
        let len = step.min(model.len() - offset);
        buf = image.read(offset as u64, len, buf).await?;
        if let Some(i) = buf.iter().zip(&model[offset..offset + len]).position(|(a, b)| a != b) {
            bail!(
                "{}: byte {} differs from what the {acked} acknowledged operations in {} wrote",
                args.image,
                offset + i,
                args.log.display()
            );
        }
    }
    image.close().await;
    println!(
        "{}: all {acked} acknowledged writes and discards in {} are there ({} bytes compared)",
        args.image,
        args.log.display(),
        model.len()
    );
    Ok(())
}

enum Control {
    Hold,
    Resume,
    Repoint { conf: Option<PathBuf>, image: ImageSpec },
    Prepare { conf: Option<PathBuf>, image: ImageSpec },
    Status,
    StatsReset,
    Stop,
}

fn parse_control(line: &str) -> Result<Control, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        ["hold"] => Ok(Control::Hold),
        ["resume"] => Ok(Control::Resume),
        ["status"] => Ok(Control::Status),
        ["stats-reset"] => Ok(Control::StatsReset),
        ["stop"] => Ok(Control::Stop),
        ["repoint", conf, image] => Ok(Control::Repoint {
            conf: (*conf != "-").then(|| PathBuf::from(conf)),
            image: image.parse().map_err(|e: livemig::Error| e.to_string())?,
        }),
        ["prepare", conf, image] => Ok(Control::Prepare {
            conf: (*conf != "-").then(|| PathBuf::from(conf)),
            image: image.parse().map_err(|e: livemig::Error| e.to_string())?,
        }),
        _ => Err(format!("unknown command `{line}`")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
struct Op {
    offset: u64,
    len: u64,
    /// `None` for a discard.
    seed: Option<u64>,
}

/// Latencies and gaps since the last reset.
#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    failed: u64,
    last_ack: Option<Instant>,
    max_gap_us: u64,
}

impl Stats {
    fn json(&self, held: bool, image: &ImageSpec, acked_total: u64) -> serde_json::Value {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        serde_json::json!({
            "held": held,
            "image": image.to_string(),
            "acked_total": acked_total,
            "acked": l.len(),
            "failed": self.failed,
            "p50_us": pct(0.5),
            "p99_us": pct(0.99),
            "max_us": l.last().copied().unwrap_or(0),
            "max_gap_us": self.max_gap_us,
        })
    }
}

struct Instance {
    args: Args,
    rng: StdRng,
    cluster: Cluster,
    image: Image,
    spec: ImageSpec,
    size: u64,
    log: std::io::BufWriter<std::fs::File>,
}

impl Instance {
    fn pick(&mut self, in_flight: &[Op]) -> Op {
        let span = self.args.span.unwrap_or(self.size).min(self.size);
        loop {
            let (lo, hi) = (
                (self.args.min_size.max(512) as f64).ln(),
                (self.args.max_size.max(self.args.min_size).max(512) as f64).ln(),
            );
            let len = (self.rng.gen_range(lo..=hi).exp() as u64 / 512 * 512).clamp(512, span);
            let offset = self.rng.gen_range(0..=(span - len) / 512) * 512;
            if in_flight
                .iter()
                .any(|o| offset < o.offset + o.len && o.offset < offset + len)
            {
                continue;
            }
            let discard = self.rng.gen_range(0..100) < self.args.discard_percent;
            return Op {
                offset,
                len,
                seed: (!discard).then(|| self.rng.gen()),
            };
        }
    }

    /// Logs an operation, at once: a test may read the log while this
    /// instance hangs on a lost cluster, and must see every acknowledgement.
    fn log(&mut self, entry: LogEntry) {
        let _ = writeln!(self.log, "{entry}");
        let _ = self.log.flush();
    }
}

async fn run_op(image: Image, op: Op) -> (Op, Result<(), livemig::Error>, Instant) {
    let started = Instant::now();
    let result = match op.seed {
        Some(seed) => {
            let data = pattern(seed, op.len as usize);
            let n = data.len();
            image.write(op.offset, data, 0..n).await.map(|_| ())
        }
        None => image.discard(op.offset, op.len).await,
    };
    (op, result, started)
}

async fn connect(conf: PathBuf) -> anyhow::Result<Cluster> {
    let mut config = ClusterConfig::from_conf(conf);
    // Discards read back as zeros (librbd otherwise may leave partial
    // discards in place), so the log determines the content exactly.
    config.options.push(("rbd_skip_partial_discard".into(), "false".into()));
    Ok(Cluster::connect(config).await?)
}

/// An image opened ahead of a re-point.
struct Prepared {
    conf: Option<PathBuf>,
    spec: ImageSpec,
    cluster: Cluster,
    image: Image,
    size: u64,
}

impl Prepared {
    /// Leaves `slot` holding `spec` (on `conf`'s cluster) open: kept if it
    /// already does, otherwise whatever it held is closed and `spec` opened.
    async fn ensure(
        slot: &mut Option<Prepared>,
        me: &Instance,
        conf: Option<PathBuf>,
        spec: ImageSpec,
    ) -> anyhow::Result<()> {
        if slot.as_ref().is_some_and(|p| p.spec == spec && p.conf == conf) {
            return Ok(());
        }
        if let Some(p) = slot.take() {
            p.image.close().await;
        }
        let cluster = match &conf {
            Some(c) => connect(c.clone()).await?,
            None => me.cluster.clone(),
        };
        let (image, size) = open(&cluster, &spec).await?;
        *slot = Some(Prepared {
            conf,
            spec,
            cluster,
            image,
            size,
        });
        Ok(())
    }
}

async fn open(cluster: &Cluster, spec: &ImageSpec) -> anyhow::Result<(Image, u64)> {
    let io = cluster.ioctx(&spec.pool, &spec.namespace).await?;
    let image = io.open_image(&spec.image).await?;
    let size = image.info().await?.size;
    Ok((image, size))
}

/// Serves the control socket. `stop_answered` is notified once the reply to
/// `stop` is written: the process must not exit before (a runtime that shuts
/// down drops the task that writes it, and the caller reads an empty reply).
fn listen(
    path: &PathBuf,
    tx: mpsc::Sender<(Control, oneshot::Sender<String>)>,
    stop_answered: Arc<Notify>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let stop_answered = stop_answered.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let mut is_stop = false;
                let reply = match parse_control(line.trim()) {
                    Err(why) => format!("err {why}"),
                    Ok(cmd) => {
                        is_stop = matches!(cmd, Control::Stop);
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send((cmd, rtx)).await.is_err() {
                            return;
                        }
                        rrx.await.unwrap_or_else(|_| "err stopping".into())
                    }
                };
                let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                let _ = write.shutdown().await;
                if is_stop {
                    stop_answered.notify_one();
                }
            });
        }
    });
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.verify {
        return verify(&args).await;
    }
    if args.min_size % 512 != 0 || args.max_size % 512 != 0 || args.depth == 0 {
        bail!("sizes must be multiples of 512 and depth at least 1");
    }
    let cluster = connect(args.conf.clone()).await?;
    let spec = args.image.clone();
    let (image, size) = open(&cluster, &spec).await?;
    let log = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.log)
            .with_context(|| format!("opening {}", args.log.display()))?,
    );
    let (ctl_tx, mut ctl_rx) = mpsc::channel(8);
    let control = args.control.clone().expect("required unless verifying");
    let stop_answered = Arc::new(Notify::new());
    listen(&control, ctl_tx, stop_answered.clone())?;
    let mut me = Instance {
        rng: StdRng::seed_from_u64(args.seed),
        args,
        cluster,
        image,
        spec,
        size,
        log,
    };
    println!("ready");
    let _ = std::io::stdout().flush();

    let interval = (me.args.rate > 0).then(|| Duration::from_secs_f64(1.0 / me.args.rate as f64));
    let mut next_issue = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut ranges: Vec<Op> = Vec::new();
    let mut held = false;
    // An image opened by `prepare` for the `repoint` to come.
    let mut prepared: Option<Prepared> = None;
    let mut holds: VecDeque<oneshot::Sender<String>> = VecDeque::new();
    let mut stop: Option<oneshot::Sender<String>> = None;
    // Answered once the image is closed (its lock let go).
    let stop_reply: oneshot::Sender<String>;
    let mut stats = Stats::default();
    let mut acked_total = 0u64;
    loop {
        let issuing = (!held || me.args.ignore_hold) && stop.is_none();
        while issuing && in_flight.len() < me.args.depth && Instant::now() >= next_issue {
            let op = me.pick(&ranges);
            ranges.push(op);
            in_flight.push(run_op(me.image.clone(), op));
            if let Some(i) = interval {
                // Keep the rate steady; do not burst to catch up after a pause.
                next_issue = (next_issue + i).max(Instant::now() - i);
            }
        }
        if in_flight.is_empty() && (!holds.is_empty() || stop.is_some()) {
            let flushed = me.image.flush().await;
            me.log(LogEntry::Held { at_ms: now_ms() });
            let _ = me.log.flush();
            while let Some(h) = holds.pop_front() {
                let _ = h.send(match &flushed {
                    Ok(()) => "ok held".into(),
                    Err(e) => format!("err flush failed: {e}"),
                });
            }
            if let Some(s) = stop.take() {
                stop_reply = s;
                break;
            }
        }
        let wait_issue = issuing && in_flight.len() < me.args.depth;
        tokio::select! {
            Some((cmd, reply)) = ctl_rx.recv() => match cmd {
                Control::Hold if me.args.ignore_hold => {
                    me.log(LogEntry::Held { at_ms: now_ms() });
                    let _ = reply.send("ok held".into());
                }
                Control::Hold => {
                    held = true;
                    holds.push_back(reply);
                }
                Control::Resume => {
                    // Readied for a re-point that did not come: let go.
                    if let Some(p) = prepared.take() {
                        p.image.close().await;
                    }
                    if held {
                        held = false;
                        next_issue = Instant::now();
                        me.log(LogEntry::Resumed { at_ms: now_ms() });
                        let _ = me.log.flush();
                    }
                    let _ = reply.send("ok resumed".into());
                }
                Control::Repoint { .. } | Control::Prepare { .. } if me.args.ignore_hold => {
                    let _ = reply.send("ok".into());
                }
                Control::Prepare { conf, image } => {
                    let r = if !held {
                        Err(anyhow::anyhow!("not held: hold first"))
                    } else {
                        Prepared::ensure(&mut prepared, &me, conf, image).await
                    };
                    let _ = reply.send(match r {
                        Ok(()) => "ok prepared".into(),
                        Err(e) => format!("err {e:#}"),
                    });
                }
                Control::Repoint { conf, image } => {
                    let r = if image == me.spec && conf.is_none() {
                        Ok(())
                    } else if !held || !in_flight.is_empty() {
                        Err(anyhow::anyhow!("not held: hold first"))
                    } else {
                        async {
                            Prepared::ensure(&mut prepared, &me, conf, image).await?;
                            let ready = prepared.take().expect("prepared above");
                            let old = std::mem::replace(&mut me.image, ready.image);
                            old.close().await;
                            me.cluster = ready.cluster;
                            me.spec = ready.spec;
                            me.size = ready.size;
                            Ok::<_, anyhow::Error>(())
                        }.await
                    };
                    let _ = reply.send(match r {
                        Ok(()) => {
                            me.log(LogEntry::Repointed { at_ms: now_ms(), image: me.spec.to_string() });
                            let _ = me.log.flush();
                            "ok repointed".into()
                        }
                        Err(e) => format!("err {e:#}"),
                    });
                }
                Control::Status => {
                    let _ = me.log.flush();
                    let _ = reply.send(format!("ok {}", stats.json(held, &me.spec, acked_total)));
                }
                Control::StatsReset => {
                    stats = Stats::default();
                    let _ = reply.send("ok".into());
                }
                Control::Stop => stop = Some(reply),
            },
            Some((op, result, started)) = in_flight.next(), if !in_flight.is_empty() => {
                ranges.retain(|o| o.offset != op.offset);
                let at_ms = now_ms();
                match result {
                    Ok(()) => {
                        let now = Instant::now();
                        if let Some(last) = stats.last_ack {
                            stats.max_gap_us = stats.max_gap_us.max((now - last).as_micros() as u64);
                        }
                        stats.last_ack = Some(now);
                        stats.latencies_us.push((now - started).as_micros() as u64);
                        acked_total += 1;
                        me.log(match op.seed {
                            Some(seed) => LogEntry::Write { at_ms, offset: op.offset, len: op.len, seed },
                            None => LogEntry::Discard { at_ms, offset: op.offset, len: op.len },
                        });
                    }
                    Err(e) => {
                        stats.failed += 1;
                        me.log(LogEntry::Failed { at_ms, offset: op.offset, len: op.len, errno: e.errno().unwrap_or(-5) });
                    }
                }
            }
            _ = tokio::time::sleep_until(next_issue.into()), if wait_issue => {}
        }
    }
    let _ = me.log.flush();
    me.image.close().await;
    let _ = std::fs::remove_file(control);
    if stop_reply.send("ok stopped".into()).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), stop_answered.notified()).await;
    }
    Ok(())
}

//! `migrate copy` and `migrate verify`: their arguments, running them, and
//! how their progress and results are shown.

use super::*;

#[derive(Args)]
pub(crate) struct CopyArgs {
    /// Source image: POOL/IMAGE or POOL/NAMESPACE/IMAGE.
    pub(crate) src: String,
    /// Destination image (must not exist): POOL/IMAGE or POOL/NAMESPACE/IMAGE.
    pub(crate) dst: String,
    #[command(flatten)]
    pub(crate) source: SourceClusterArgs,
    #[command(flatten)]
    pub(crate) dest: DestClusterArgs,
    /// Most data in flight at once, e.g. 256M; bounds memory use.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    pub(crate) in_flight: u64,
    /// Bytes per read [default: the source's object size].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) chunk_size: Option<u64>,
    /// Limit the copy to this many bytes per second, e.g. 200M.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub(crate) bwlimit: Option<u64>,
    /// Read SRC through a temporary snapshot even when nobody has it open,
    /// so that it stays writable during the copy. By default such a source
    /// is held still by taking its exclusive lock instead (others can read
    /// it, not write it, until the copy ends), which saves the snapshot's
    /// two monitor round trips.
    #[arg(long)]
    pub(crate) snapshot: bool,
    /// Who copies the data: the OSDs where they can (auto), only the OSDs
    /// (server), or livemig itself (client).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CopyModeChoice::Auto)]
    pub(crate) copy_mode: CopyModeChoice,
    /// Keep DST's data objects in this pool (replicated, or erasure-coded
    /// with overwrites); DST's own pool keeps its metadata.
    #[arg(long, value_name = "POOL")]
    pub(crate) data_pool: Option<String>,
    /// Do not show progress.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// First image; or, alone, a volume id: its current image is compared
    /// with the source its last migration retained.
    pub(crate) a: String,
    /// Second image (on the destination cluster if --dest-conf is given).
    pub(crate) b: Option<String>,
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
    #[command(flatten)]
    pub(crate) source: SourceClusterArgs,
    #[command(flatten)]
    pub(crate) dest: DestClusterArgs,
}

/// How progress is shown.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Output {
    Json,
    Bar,
    Lines,
    Quiet,
}

/// Who moved a copy's bytes, and why the client did, for people.
pub(crate) fn copied_by(method: CopyMethod, client_reason: Option<&str>) -> String {
    match (method, client_reason) {
        (CopyMethod::ServerSide, _) => "copied by the OSDs (server-side)".into(),
        (CopyMethod::Client, Some(why)) => format!("copied by livemig (client) because {why}"),
        (CopyMethod::Client, None) => "copied by livemig (client), as asked".into(),
    }
}

pub(crate) fn progress_json(p: &Progress) -> serde_json::Value {
    serde_json::json!({
        "event": "progress",
        "total_bytes": p.total_bytes,
        "done_bytes": p.done_bytes,
        "written_bytes": p.written_bytes,
        "elapsed_secs": p.elapsed.as_secs_f64(),
        "rate_bytes_per_sec": p.rate(),
        "eta_secs": p.eta().map(|d| d.as_secs_f64()),
        "method": p.method,
        "client_reason": p.client_reason,
    })
}

/// Renders progress until the sender is dropped.
pub(crate) async fn show_progress(mut rx: watch::Receiver<Progress>, output: Output) {
    let bar = (output == Output::Bar).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let interval = if output == Output::Lines {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(500)
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        let changed = tokio::select! {
            r = rx.changed() => r.is_ok(),
            _ = tick.tick() => true,
        };
        let p = rx.borrow_and_update().clone();
        match (&bar, output) {
            (Some(bar), _) => {
                bar.set_length(p.total_bytes);
                bar.set_position(p.done_bytes);
            }
            (None, Output::Json) if changed && p.total_bytes > 0 => println!("{}", progress_json(&p)),
            (None, Output::Lines) if changed && p.total_bytes > 0 => eprintln!(
                "progress: {} / {} ({:.0}%), {}/s, ETA {}s",
                human_bytes(p.done_bytes as f64),
                human_bytes(p.total_bytes as f64),
                100.0 * p.done_bytes as f64 / p.total_bytes as f64,
                human_bytes(p.rate()),
                p.eta().map_or(0, |d| d.as_secs()),
            ),
            _ => {}
        }
        if !changed {
            break;
        }
        if output == Output::Json || output == Output::Lines {
            // Throttle: at most one line per interval, but stop waiting as
            // soon as the copy ends (waiting out the tick held the exit up
            // to a whole interval).
            let ended = loop {
                tokio::select! {
                    _ = tick.tick() => break false,
                    r = rx.changed() => if r.is_err() { break true },
                }
            };
            if ended {
                break;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

pub(crate) async fn run_copy(args: CopyArgs, json: bool, timeout: u64) -> Result<serde_json::Value, Error> {
    let src: ImageSpec = args.src.parse()?;
    let dst: ImageSpec = args.dst.parse()?;
    let (src_cluster, dst_cluster) = connect(&args.source, &args.dest, timeout).await?;
    let output = if json {
        Output::Json
    } else if args.no_progress {
        Output::Quiet
    } else if std::io::stderr().is_terminal() {
        Output::Bar
    } else {
        Output::Lines
    };
    let options = CopyOptions {
        in_flight_bytes: args.in_flight,
        chunk_size: args.chunk_size,
        bandwidth_limit: args.bwlimit,
        always_snapshot: args.snapshot,
        copy_mode: args.copy_mode.mode(),
        data_pool: args.data_pool,
        ..Default::default()
    };
    let cancel = on_ctrl_c("cancelling (removing the partial destination)");
    let (tx, rx) = watch::channel(Progress::default());
    let shower = tokio::spawn(show_progress(rx, output));
    let copier = Copier::new(options).progress(tx).cancel_on(cancel);
    let result = copier.run(&src_cluster, &src, &dst_cluster, &dst).await;
    drop(copier);
    let _ = shower.await;
    let report = result?;
    if !json {
        println!(
            "copied {} to {}: {} of data in {:.1}s ({}/s), {} written, {} image-meta keys; source held by {}; {}",
            report.source,
            report.destination,
            human_bytes(report.read_bytes as f64),
            report.seconds,
            human_bytes(report.read_bytes as f64 / report.seconds.max(1e-9)),
            human_bytes(report.written_bytes as f64),
            report.metadata_keys,
            match report.source_hold {
                SourceHold::ExclusiveLock => "its exclusive lock",
                SourceHold::Snapshot => "a temporary snapshot",
            },
            copied_by(report.method, report.client_reason.as_deref()),
        );
    }
    Ok(serde_json::json!({"event": "done", "report": report}))
}

pub(crate) async fn run_verify(args: VerifyArgs, json: bool, timeout: u64) -> Result<serde_json::Value, Error> {
    let Some(b) = &args.b else {
        let (cluster, cat, store) = open_jobs(&args.source, &args.catalog, timeout).await?;
        return jobs::verify_volume(&cat, &store, &cluster, &args.a, json).await;
    };
    let a: ImageSpec = args.a.parse()?;
    let b: ImageSpec = b.parse()?;
    let (ca, cb) = connect(&args.source, &args.dest, timeout).await?;
    let ia = ca
        .ioctx(&a.pool, &a.namespace)
        .await?
        .open_image_read_only(&a.image, None)
        .await?;
    let ib = cb
        .ioctx(&b.pool, &b.namespace)
        .await?
        .open_image_read_only(&b.image, None)
        .await?;
    let report = compare_images(&ia, &ib).await?;
    comparison_outcome(&format!("compared {a} and {b}"), serde_json::json!({}), report, json)
}

/// Prints a comparison (unless `json`) and turns a difference into a
/// `Mismatch` error; `extra` fields go into the JSON result.
pub(crate) fn comparison_outcome(
    title: &str,
    mut extra: serde_json::Value,
    report: livemig::mirror::CompareReport,
    json: bool,
) -> Result<serde_json::Value, Error> {
    if !json {
        println!(
            "{title}: sizes {} / {}, {} compared, {} differing range(s)",
            report.size_a,
            report.size_b,
            human_bytes(report.compared_bytes as f64),
            report.mismatches.len()
        );
        for (off, len) in report.mismatches.iter().take(20) {
            println!("  differs at offset {off}, {len} bytes");
        }
    }
    let identical = report.identical();
    extra["event"] = "done".into();
    extra["identical"] = identical.into();
    extra["report"] = serde_json::to_value(&report).expect("serializable");
    if !identical {
        if json {
            println!("{extra}");
        }
        return Err(Error::new(ErrorKind::Mismatch, "verify").message(format!("{title}: the images differ")));
    }
    Ok(extra)
}

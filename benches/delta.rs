//! Delta bench: applying one live round's delta through the client (the
//! changed extents read and written by livemig) against copying each
//! changed object whole on the OSDs, by the fraction of each object that
//! changed. It sets where `CopyOptions::whole_object_from` lies.
//!
//! A 256 MiB image of random data (64 objects of 4 MiB) is copied to two
//! destinations; then, for each fraction, every object gets that fraction
//! of new random data (one contiguous write per object), a snapshot is
//! taken, and the delta since the previous snapshot is applied to one
//! destination through the client and to the other with whole-object
//! copies (the order alternating). Both are checked against the snapshot.
//! Times are medians over `LIVEMIG_BENCH_ROUNDS` (default 3) rounds.
//!
//! Run with `scripts/bench` (LIVEMIG_BENCH_ONLY=delta), or with CEPH_CONF
//! naming a throwaway cluster: `cargo bench -p livemig-cli --bench delta`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig::ceph::{Cluster, ClusterConfig, CreateOptions, Image, IoCtx};
use livemig::mirror::{compare_images, Copier, CopyMode, CopyOptions};
use rand::{RngCore, SeedableRng};

const POOL_SRC: &str = "bench-delta-src";
const POOL_DST: &str = "bench-delta-dst";
const OBJ: u64 = 4 << 20;
const OBJECTS: u64 = 64;
const FRACTIONS: [(u64, u64); 7] = [(1, 64), (1, 16), (1, 8), (1, 4), (1, 2), (3, 4), (1, 1)];

fn cpu_secs() -> f64 {
    // SAFETY: zeroed is a valid rusage; RUSAGE_SELF with a valid out-pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn write(img: &Image, offset: u64, data: Vec<u8>) -> Result<()> {
    let len = data.len();
    img.write(offset, data, 0..len).await?;
    Ok(())
}

/// Applies the delta of `src` between `since` and `snap` to `dst`; wall and CPU seconds.
async fn apply(src_io: &IoCtx, name: &str, since: &str, snap: &str, dst: &Image, whole: bool) -> Result<(f64, f64)> {
    let at = src_io.open_image_read_only(name, Some(snap)).await?;
    let copier = Copier::new(CopyOptions {
        copy_mode: if whole { CopyMode::Auto } else { CopyMode::Client },
        whole_object_from: if whole { 0.0 } else { 2.0 },
        ..Default::default()
    });
    let (t0, c0) = (Instant::now(), cpu_secs());
    copier.replay(&at, dst, since).await?;
    let out = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
    let cmp = compare_images(&at, dst).await?;
    at.close().await;
    if !cmp.identical() {
        bail!(
            "the delta applied ({}) differs from the snapshot: {cmp:?}",
            if whole { "whole" } else { "client" }
        );
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let conf = PathBuf::from(std::env::var("CEPH_CONF").context("CEPH_CONF must name a throwaway cluster")?);
    let rounds: usize = std::env::var("LIVEMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let cluster = Cluster::connect(ClusterConfig::from_conf(&conf)).await?;
    for pool in [POOL_SRC, POOL_DST] {
        if !cluster.pool_list().await?.iter().any(|p| p == pool) {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ceph -c '{c}' osd pool create {pool} 32 32 >/dev/null 2>&1 && rbd -c '{c}' pool init {pool}",
                    c = conf.display()
                ))
                .status()?;
            if !status.success() {
                bail!("could not create pool {pool}");
            }
        }
    }
    let (src_io, dst_io) = (cluster.ioctx(POOL_SRC, "").await?, cluster.ioctx(POOL_DST, "").await?);
    let mut rows = Vec::new();
    for (num, den) in FRACTIONS {
        let (mut client, mut whole, mut client_cpu, mut whole_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let name = format!("delta-{num}-{den}-{round}");
            for io in [&src_io, &dst_io] {
                for n in [name.clone(), format!("{name}-a"), format!("{name}-b")] {
                    if io.image_exists(&n).await? {
                        let img = io.open_image(&n).await?;
                        for s in img.snap_list().await? {
                            img.snap_remove(&s.name).await?;
                        }
                        img.close().await;
                        io.remove_image(&n).await?;
                    }
                }
            }
            src_io
                .create_image(&name, OBJECTS * OBJ, &CreateOptions::default())
                .await?;
            let img = src_io.open_image(&name).await?;
            write(&img, 0, random(round as u64, (OBJECTS * OBJ) as usize)).await?;
            img.snap_create("base").await?;
            let info = img.info().await?;
            let base = src_io.open_image_read_only(&name, Some("base")).await?;
            let mut dsts = Vec::new();
            for side in ["a", "b"] {
                let d = format!("{name}-{side}");
                dst_io.create_image(&d, info.size, &CreateOptions::like(&info)).await?;
                let dst = dst_io.open_image(&d).await?;
                Copier::new(CopyOptions::default()).transfer(&base, &dst, 0).await?;
                dsts.push(dst);
            }
            base.close().await;
            let len = (OBJ * num / den) as usize;
            for o in 0..OBJECTS {
                write(&img, o * OBJ, random(1000 + o + 100 * round as u64, len)).await?;
            }
            img.snap_create("next").await?;
            // The client first in even rounds, the OSDs first in odd ones.
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for (i, w) in order.into_iter().enumerate() {
                let (secs, cpu) = apply(&src_io, &name, "base", "next", &dsts[i], w).await?;
                if w {
                    whole.push(secs);
                    whole_cpu.push(cpu);
                } else {
                    client.push(secs);
                    client_cpu.push(cpu);
                }
            }
            for d in dsts {
                d.close().await;
            }
            for s in img.snap_list().await? {
                img.snap_remove(&s.name).await?;
            }
            img.close().await;
            src_io.remove_image(&name).await?;
            for side in ["a", "b"] {
                dst_io.remove_image(&format!("{name}-{side}")).await?;
            }
        }
        let (c, w) = (median(client), median(whole));
        eprintln!("[delta] {num}/{den} of each object: client {c:.2} s, whole objects {w:.2} s");
        rows.push((format!("{num}/{den}"), c, median(client_cpu), w, median(whole_cpu)));
    }
    let mut out = format!(
        "Delta bench: one round's delta over {OBJECTS} objects of 4 MiB, each with the given fraction changed \
         (one contiguous write); median of {rounds} rounds, order alternating; every result compared with its snapshot.\n\n\
         | changed per object | delta MiB | client s | client CPU s | whole objects (OSDs) s | whole CPU s | client / whole |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (f, c, cc, w, wc) in &rows {
        let (num, den) = f
            .split_once('/')
            .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
            .unwrap();
        out.push_str(&format!(
            "| {f} | {} | {c:.2} | {cc:.2} | {w:.2} | {wc:.2} | {:.2}x |\n",
            (OBJECTS * OBJ * num / den) >> 20,
            c / w
        ));
    }
    println!("{out}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("delta.md"), &out)?;
    drop((src_io, dst_io, cluster));
    livemig::ceph::wait_for_releases(Duration::from_secs(30));
    Ok(())
}

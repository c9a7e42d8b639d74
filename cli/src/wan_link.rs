//! `livemig-wan-link`: a WAN-like link between this host and a network
//! namespace, for tests and benches (`scripts/dev-cluster up --wan`).
//!
//! Two TUN devices: the host's end and the site's (which the script moves
//! into the site's namespace). Every IP packet the kernel routes into one
//! end comes out of the other after a one-way delay, no faster than the
//! link's rate; a packet that would queue longer than the buffer holds is
//! dropped, as a router's would be. This machine's kernel has no `netem`,
//! which would do the same inside the kernel.
//!
//! Prints `ready` once both devices exist; runs until killed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "A WAN-like link (delay, rate, buffer) between two TUN devices")]
struct Args {
    /// The host's end (a TUN device this creates).
    #[arg(long)]
    host_tun: String,
    /// The site's end (a TUN device this creates; move it into the site's namespace).
    #[arg(long)]
    site_tun: String,
    /// One-way delay in milliseconds (the round trip is twice this).
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Rate in Mbit/s, each way.
    #[arg(long, default_value_t = 200)]
    rate_mbit: u64,
    /// Milliseconds of the rate a direction may queue before it drops.
    #[arg(long, default_value_t = 100)]
    buffer_ms: u64,
}

/// Creates TUN device `name` (IP packets, no extra header).
fn open_tun(name: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun (needs root and the tun module)")?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("`{name}` is not a device name (1 to {} bytes)", libc::IFNAMSIZ - 1);
    }
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a TUN fd; TUNSETIFF reads the ifreq, which outlives the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("create TUN device {name}"));
    }
    Ok(file)
}

/// Packets on their way, with when each leaves the link.
struct Queue {
    packets: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    ready: Condvar,
}

/// One direction: reads packets from `from`, and `to` gets them after
/// the delay, at the rate.
fn carry(mut from: File, mut to: File, delay: Duration, bytes_per_sec: f64, buffer: Duration) {
    let queue = Arc::new(Queue {
        packets: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    });
    let sender = queue.clone();
    std::thread::spawn(move || loop {
        let mut packets = sender.packets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&(due, _)) = packets.front() else {
            drop(sender.ready.wait(packets).unwrap_or_else(|p| p.into_inner()));
            continue;
        };
        let now = Instant::now();
        if due > now {
            drop(
                sender
                    .ready
                    .wait_timeout(packets, due - now)
                    .unwrap_or_else(|p| p.into_inner()),
            );
            continue;
        }
        let (_, packet) = packets.pop_front().expect("a packet at the front");
        drop(packets);
        // A packet the other end cannot take is lost, as on a wire.
        let _ = to.write(&packet);
    });
    // When the link is free again (it sends one packet at a time).
    let mut free_at = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("livemig-wan-link: read: {e}");
                std::process::exit(1);
            }
        };
        let now = Instant::now();
        let start = free_at.max(now);
        if start - now > buffer {
            continue; // the buffer is full: dropped
        }
        free_at = start + Duration::from_secs_f64(n as f64 / bytes_per_sec);
        let mut packets = queue.packets.lock().unwrap_or_else(|p| p.into_inner());
        packets.push_back((free_at + delay, buf[..n].to_vec()));
        // The sender waits for the front packet only: one behind it, due
        // later, changes nothing for it.
        if packets.len() == 1 {
            queue.ready.notify_one();
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate_mbit == 0 {
        bail!("--rate-mbit must be at least 1");
    }
    let host = open_tun(&args.host_tun)?;
    let site = open_tun(&args.site_tun)?;
    let delay = Duration::from_millis(args.delay_ms);
    let bytes_per_sec = args.rate_mbit as f64 * 1e6 / 8.0;
    let buffer = Duration::from_millis(args.buffer_ms);
    let (host_in, site_in) = (host.try_clone()?, site.try_clone()?);
    std::thread::spawn(move || carry(site_in, host, delay, bytes_per_sec, buffer));
    println!("ready");
    std::io::stdout().flush()?;
    carry(host_in, site, delay, bytes_per_sec, buffer);
    Ok(())
}

//! plexperf: runs the data plane in-process and measures it (the bdevperf of plexd).
//!
//! ```text
//! plexperf --bdev null:name=n0,size=8G --bdev null:name=n1,size=8G --volume mirror:n0,n1 \
//!          --rw randread --bs 4k --qd 128 --time 5 --cores 0
//! plexperf --bdev uring:name=u0,path=/dev/shm/x.img --rw randread --bs 4k --qd 32 --time 5
//! plexperf --bdev malloc:name=m0,size=1G --volume concat:m0 --rw verify --quiesce-every 10
//! plexperf --idle 2          # CPU use of idle reactors
//! plexperf --nvmf tcp://127.0.0.1:4420/nqn.2026-11.io.plexd:demo --rw randread --qd 32 \
//!          --qpairs 2 --cores 1      # an NVMe/TCP target, from outside
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::null::NullBdev;
use plexd_target::bdev::uring::UringBdev;
use plexd_target::lease::MAX_LEASE;
use plexd_target::perf::{start_job, JobConfig, JobResult, Workload};
use plexd_target::perf_nvmf::{parse_digests, run_nvmf_job, NvmfJobConfig, NvmfUrl};
use plexd_target::reactor::{parse_cores, thread_cpu_ns, PollMode, ReactorConfig};
/// A size as people type it (the project's one size parser), errors as text.
fn parse_size(s: &str) -> Result<u64, String> {
    plexd_proto::size::parse_size(s).map_err(|e| e.to_string())
}
use plexd_target::volume::{
    PlexKind, PlexSpec, PlexState, QuiesceTimeline, ReadPolicy, SubdiskSpec, VolumeSpec,
};
use plexd_target::{Target, TargetConfig};
use plexd_target_api::drl::{self, DirtyLogSpec};
use plexd_target_api::volume::VolumeStats;

/// The volume plexperf builds from --volume.
const VOLUME_NAME: &str = "vol0";

#[derive(Parser, Debug)]
#[command(
    name = "plexperf",
    about = "Measure plexd's data plane in-process (bdevs, volumes, quiesce under load) or an NVMe/TCP target (--nvmf)",
    after_help = "Examples:\n  plexperf --bdev null:name=n0,size=8G --volume concat:n0 --rw randread --bs 4k --qd 128 --time 5 --cores 0\n  plexperf --bdev uring:name=u0,path=/dev/shm/x.img --rw randread --qd 32\n  plexperf --bdev malloc:name=m0,size=256M --bdev malloc:name=m1,size=256M --volume mirror:m0,m1 --rw verify --quiesce-every 10 --json\n  plexperf --nvmf tcp://127.0.0.1:4420/nqn.2026-11.io.plexd:demo --rw randwrite --qd 32 --qpairs 2 --digest header"
)]
struct Args {
    /// A bdev: null:name=N,size=S[,block_size=B] | malloc:name=N,size=S | uring:name=N,path=P[,block_size=B]
    #[arg(long = "bdev")]
    bdevs: Vec<String>,
    /// A volume over the bdevs: concat:A,B | stripe:A,B[,unit=64K] | mirror:A,B (each plex a whole bdev)
    #[arg(long)]
    volume: Option<String>,
    /// Workload: read, write, randread, randwrite, randrw[:READ_PCT], verify
    #[arg(long, default_value = "randread")]
    rw: String,
    /// Block size
    #[arg(long, default_value = "4k")]
    bs: String,
    /// I/Os in flight per reactor (with --nvmf: per queue pair)
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Load an NVMe/TCP target instead of an in-process data plane: tcp://ADDR:PORT/NQN
    #[arg(long, value_name = "URL")]
    nvmf: Option<String>,
    /// With --nvmf: I/O queue pairs (one thread and connection each; default one per --cores core)
    #[arg(long)]
    qpairs: Option<usize>,
    /// With --nvmf: the namespace to load
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// With --nvmf: digests to ask for: none, header, data, both
    #[arg(long, default_value = "none")]
    digest: String,
    /// With --nvmf: keep alive timeout asked at Connect, in ms (0: none); a Keep Alive goes out every half of it
    #[arg(long, default_value_t = plexd_target::perf_nvmf::DEFAULT_KATO.as_millis() as u64)]
    kato_ms: u64,
    /// Seconds to run
    #[arg(long, default_value_t = 5.0)]
    time: f64,
    /// Cores for reactors (0,1 or 0-3 or 0x3); with --nvmf, the queue pairs' threads
    #[arg(long, default_value = "0")]
    cores: String,
    /// Reactor sleep policy: adaptive or always
    #[arg(long, default_value = "adaptive")]
    poll_mode: String,
    /// The reactor threads' nice value (-20..=19; negative needs root): fewer and
    /// shorter stalls when other processes compete for the reactors' cores
    #[arg(long, allow_hyphen_values = true)]
    reactor_nice: Option<i32>,
    /// A dirty region log for the --volume on bdev BDEV (one not in the volume):
    /// BDEV[+BDEV2][,region=SIZE] (default region 512K; BDEV2: a second copy); writes then mark regions first
    #[arg(long, value_name = "BDEV[+BDEV2][,region=SIZE]")]
    drl: Option<String>,
    /// Prepare/commit a layout change of the volume every MS milliseconds during the run
    #[arg(long)]
    quiesce_every: Option<u64>,
    /// Make the --volume a shared one, served under a data-plane lease granted for
    /// the run (as a cluster's volumes are: every submit checks the lease on the clock)
    #[arg(long)]
    shared: bool,
    /// Measure idle CPU for SECS seconds instead of running I/O
    #[arg(long)]
    idle: Option<f64>,
    /// Seed for offsets and patterns
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

fn kv(spec: &str) -> Result<(String, std::collections::BTreeMap<String, String>), String> {
    let (kind, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("bad --bdev {spec:?}: expected KIND:key=value,..."))?;
    let mut m = std::collections::BTreeMap::new();
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("bad --bdev {spec:?}: {part:?} is not key=value"))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok((kind.to_string(), m))
}

fn make_bdev(t: &Target, spec: &str) -> Result<(), String> {
    let (kind, m) = kv(spec)?;
    let name = m
        .get("name")
        .cloned()
        .ok_or_else(|| format!("--bdev {spec:?}: name= is required"))?;
    let bs: u32 = m
        .get("block_size")
        .map(|v| {
            v.parse()
                .map_err(|_| format!("--bdev {spec:?}: bad block_size"))
        })
        .transpose()?
        .unwrap_or(512);
    let size = || -> Result<u64, String> {
        parse_size(
            m.get("size")
                .ok_or_else(|| format!("--bdev {spec:?}: size= is required"))?,
        )
    };
    let b: Arc<dyn plexd_target::bdev::Bdev> = match kind.as_str() {
        "null" => NullBdev::new(&name, size()?, bs),
        "malloc" => MallocBdev::new(&name, size()?, bs)?,
        "uring" => {
            let path = m
                .get("path")
                .ok_or_else(|| format!("--bdev {spec:?}: path= is required"))?;
            UringBdev::open(&name, std::path::Path::new(path), &Default::default())
                .map_err(|e| e.to_string())?
        }
        other => {
            return Err(format!(
                "--bdev {spec:?}: unknown kind {other:?} (null, malloc, uring)"
            ))
        }
    };
    t.add_bdev(b).map_err(|e| e.to_string())
}

fn whole(t: &Target, name: &str) -> Result<SubdiskSpec, String> {
    let b = t.bdev(name).map_err(|e| e.to_string())?;
    Ok(SubdiskSpec {
        bdev: name.to_string(),
        offset_bytes: 0,
        len_bytes: b.size_bytes(),
    })
}

fn volume_spec(t: &Target, spec: &str) -> Result<VolumeSpec, String> {
    let (kind, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("bad --volume {spec:?}: expected LAYOUT:bdev,bdev,..."))?;
    let mut unit = 64u64 << 10;
    let mut names = Vec::new();
    for p in rest.split(',').filter(|p| !p.is_empty()) {
        match p.strip_prefix("unit=") {
            Some(u) => unit = parse_size(u)?,
            None => names.push(p.to_string()),
        }
    }
    if names.is_empty() {
        return Err(format!("--volume {spec:?}: no bdevs"));
    }
    let sds: Vec<SubdiskSpec> = names
        .iter()
        .map(|n| whole(t, n))
        .collect::<Result<_, _>>()?;
    let plex = |name: String, kind: PlexKind, columns: Vec<Vec<SubdiskSpec>>| PlexSpec {
        name,
        kind,
        columns,
        state: PlexState::Active,
    };
    let (plexes, size) = match kind {
        "concat" => {
            let size = sds.iter().map(|s| s.len_bytes).sum();
            (
                vec![plex(
                    format!("{VOLUME_NAME}-01"),
                    PlexKind::Concat,
                    vec![sds],
                )],
                size,
            )
        }
        "stripe" => {
            let min = sds.iter().map(|s| s.len_bytes).min().unwrap_or(0) / unit * unit;
            let size = min * sds.len() as u64;
            let cols = sds.into_iter().map(|s| vec![s]).collect();
            (
                vec![plex(
                    format!("{VOLUME_NAME}-01"),
                    PlexKind::Stripe {
                        stripe_unit_bytes: unit,
                    },
                    cols,
                )],
                size,
            )
        }
        "mirror" => {
            let size = sds.iter().map(|s| s.len_bytes).min().unwrap_or(0);
            let plexes = sds
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    plex(
                        format!("{VOLUME_NAME}-{:02}", i + 1),
                        PlexKind::Concat,
                        vec![vec![s]],
                    )
                })
                .collect();
            (plexes, size)
        }
        other => {
            return Err(format!(
                "--volume {spec:?}: unknown layout {other:?} (concat, stripe, mirror)"
            ))
        }
    };
    Ok(VolumeSpec {
        log: None,
        name: VOLUME_NAME.into(),
        size_bytes: size,
        plexes,
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Layout changes made during a run (`--quiesce-every`): how long each prepare took.
#[derive(Default)]
struct QuiesceStats {
    /// Each successful prepare's drain time, sorted once the run is over.
    times: Vec<Duration>,
    /// Prepares or commits that failed.
    errors: u64,
    /// Each step of the quiesce timeline (`PHASES`), over the changes that
    /// reached it, sorted once the run is over.
    phases: Vec<Vec<Duration>>,
}

/// The quiesce timeline's steps plexperf reports (JSON key, timeline field), each
/// as the time since the prepare call except `stall` (the longest time one
/// reactor's gate stayed closed).
/// One step of the quiesce timeline: its name and how to read it.
type Phase = (&'static str, fn(&QuiesceTimeline) -> Option<Duration>);
const PHASES: [Phase; 7] = [
    ("gates_closed", |t| t.gates_closed),
    ("drained", |t| t.drained),
    ("prepare_returned", |t| t.prepare_returned),
    ("commit_called", |t| t.commit_called),
    ("resumed", |t| t.resumed),
    ("commit_returned", |t| t.commit_returned),
    ("stall", |t| t.stall),
];

/// Starts the in-process target on the cores and poll mode the arguments name.
fn start_target(args: &Args) -> Result<Arc<Target>, String> {
    let cores = parse_cores(&args.cores)?;
    let poll_mode = match args.poll_mode.as_str() {
        "adaptive" => PollMode::Adaptive,
        "always" => PollMode::Always,
        o => return Err(format!("--poll-mode {o:?}: expected adaptive or always")),
    };
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores,
            poll_mode,
            nice: args.reactor_nice,
            ..Default::default()
        },
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

/// `--idle SECS`: prints each reactor's CPU use over SECS seconds without I/O.
fn measure_idle(t: &Arc<Target>, secs: f64, json: bool) {
    let n = t.reactors().len();
    let cpu = |t: &Arc<Target>| -> Vec<u64> {
        (0..n)
            .map(|r| {
                t.reactors().handles()[r]
                    .call_blocking(|_| thread_cpu_ns())
                    .unwrap_or(0)
            })
            .collect()
    };
    let before = cpu(t);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after = cpu(t);
    let el = start.elapsed().as_nanos() as f64;
    let pct: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / el * 100.0)
        .collect();
    if json {
        println!("{}", serde_json::json!({ "idle_s": secs, "cpu_pct": pct }));
    } else {
        for (i, p) in pct.iter().enumerate() {
            println!("reactor {i}: {p:.2}% CPU idle over {secs} s");
        }
    }
}

/// The `--drl BDEV[+BDEV2][,region=SIZE]` log of a volume of `size_bytes`: node
/// 0's section at the start of BDEV (and of BDEV2, a second copy).
fn drl_spec(arg: &str, size_bytes: u64) -> Result<DirtyLogSpec, String> {
    let mut parts = arg.split(',');
    let bdevs = parts.next().unwrap_or_default();
    if bdevs.is_empty() || bdevs.split('+').any(str::is_empty) {
        return Err(format!(
            "--drl {arg:?}: expected BDEV[+BDEV2][,region=SIZE]"
        ));
    }
    let copies = bdevs
        .split('+')
        .map(|b| drl::DrlCopy {
            bdev: b.to_string(),
            offset_bytes: 0,
        })
        .collect();
    let mut region_bytes = drl::DEFAULT_REGION_BYTES;
    for p in parts {
        match p.strip_prefix("region=") {
            Some(v) => region_bytes = parse_size(v)?,
            None => return Err(format!("--drl {arg:?}: unknown option {p:?}")),
        }
    }
    Ok(DirtyLogSpec {
        copies,
        section_bytes: drl::section_bytes(drl::regions_for(size_bytes, region_bytes)),
        node: 0,
        log_id: 1,
        region_bytes,
    })
}

/// Grants the data-plane lease for a run of `secs` seconds and a minute more, so
/// it never runs out during the run (a lease is at most [`MAX_LEASE`]).
fn grant_lease_for_run(t: &Target, secs: f64) -> Result<(), String> {
    let want = Duration::from_secs_f64(secs.max(0.0)) + Duration::from_secs(60);
    if want > MAX_LEASE {
        return Err(format!(
            "--shared: a run of {secs} s is too long (at most {} s: a lease lasts at most {} s)",
            MAX_LEASE.as_secs() - 60,
            MAX_LEASE.as_secs()
        ));
    }
    let ms = u32::try_from(want.as_millis()).unwrap_or(u32::MAX);
    t.renew_lease(ms).map_err(|e| e.to_string())?;
    Ok(())
}

/// Adds the `--bdev`s and the `--volume`; returns the name of the bdev to load
/// (the volume, else the first bdev).
fn build_bdevs(t: &Arc<Target>, args: &Args) -> Result<String, String> {
    if args.bdevs.is_empty() {
        return Err("no --bdev given (see --help)".into());
    }
    for b in &args.bdevs {
        make_bdev(t, b)?;
    }
    let target_name = match &args.volume {
        Some(v) => {
            let mut spec = volume_spec(t, v)?;
            if let Some(d) = &args.drl {
                spec.log = Some(drl_spec(d, spec.size_bytes)?);
            }
            spec.shared = args.shared;
            if args.shared {
                grant_lease_for_run(t, args.time)?;
            }
            t.create_volume(&spec).map_err(|e| e.to_string())?;
            VOLUME_NAME.to_string()
        }
        None => kv(&args.bdevs[0])?
            .1
            .get("name")
            .cloned()
            .unwrap_or_default(),
    };
    if args.quiesce_every.is_some() && args.volume.is_none() {
        return Err("--quiesce-every needs --volume".into());
    }
    if args.drl.is_some() && args.volume.is_none() {
        return Err("--drl needs --volume".into());
    }
    if args.shared && args.volume.is_none() {
        return Err("--shared needs --volume".into());
    }
    Ok(target_name)
}

/// Until `end`, prepares and commits a layout change of the volume every `ms`
/// milliseconds, alternating the read policy: a real layout swap on every reactor
/// each time.
fn change_layouts_until(t: &Target, ms: u64, end: Instant) -> Result<QuiesceStats, String> {
    let base = t.volume_spec(VOLUME_NAME).map_err(|e| e.to_string())?;
    let mut alt = base.clone();
    alt.read_policy = ReadPolicy::Round;
    let mut stats = QuiesceStats {
        phases: vec![Vec::new(); PHASES.len()],
        ..Default::default()
    };
    let mut i = 0u64;
    // The reactors resume after commit returned: each change's timeline is read
    // just before the next prepare (which resets it), the last one once resumed.
    let mut committed = false;
    let record = |stats: &mut QuiesceStats| -> Result<(), String> {
        let tl = t.quiesce_timeline(VOLUME_NAME).map_err(|e| e.to_string())?;
        for ((_, step), v) in PHASES.iter().zip(&mut stats.phases) {
            v.extend(step(&tl));
        }
        Ok(())
    };
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(ms).min(end.saturating_duration_since(Instant::now())),
        );
        if Instant::now() >= end {
            break;
        }
        if std::mem::take(&mut committed) {
            record(&mut stats)?;
        }
        let l = if i.is_multiple_of(2) { &alt } else { &base };
        match t.prepare(VOLUME_NAME, l, Duration::from_secs(5)) {
            Ok(d) => {
                if let Err(e) = t.commit(VOLUME_NAME) {
                    stats.errors += 1;
                    log::error!("commit: {e}");
                }
                stats.times.push(d);
                committed = true;
            }
            Err(e) => {
                stats.errors += 1;
                log::error!("prepare: {e}");
            }
        }
        i += 1;
    }
    if committed {
        // At most 1 s for the reactors to resume (they do within microseconds
        // unless the machine is starved).
        let give_up = Instant::now() + Duration::from_secs(1);
        while t
            .quiesce_timeline(VOLUME_NAME)
            .map_err(|e| e.to_string())?
            .resumed
            .is_none()
            && Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        record(&mut stats)?;
    }
    stats.times.sort();
    for v in &mut stats.phases {
        v.sort();
    }
    Ok(stats)
}

/// Sleeps until `end` in steps of at most 100 ms.
fn wait_until(end: Instant) {
    while Instant::now() < end {
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
}

/// What one load run measured, for printing.
struct Report<'a> {
    args: &'a Args,
    target_name: &'a str,
    block_bytes: u64,
    reactors: usize,
    hugepages: bool,
    res: &'a JobResult,
    /// Present with `--quiesce-every`.
    quiesce: Option<&'a QuiesceStats>,
    /// I/O the loaded bdev refused with EAGAIN (a bounded queue was full), by
    /// cause: the kernel interface's refusal counters.
    refused: Vec<(&'static str, u64)>,
    /// The volume's counters when it has a dirty region log (`--drl`).
    drl: Option<VolumeStats>,
    /// Present with `--nvmf`: `reactors` then counts queue pairs.
    nvmf: Option<&'a NvmfJobConfig>,
}

impl Report<'_> {
    /// The longest I/O's latency in microseconds.
    fn max_stall_us(&self) -> f64 {
        self.res.latency_ns.max() as f64 / 1000.0
    }

    /// The report as one JSON object.
    fn print_json(&self) {
        let (args, res) = (self.args, self.res);
        let mut o = serde_json::json!({
            "bdev": self.target_name,
            "rw": args.rw,
            "bs": self.block_bytes,
            "qd": args.qd,
            "reactors": self.reactors,
            "hugepages": self.hugepages,
            "elapsed_s": res.elapsed.as_secs_f64(),
            "ios": res.ios,
            "iops": res.iops(),
            "mib_per_s": res.mib_per_s(),
            "lat_us": { "p50": res.lat_us(0.5), "p99": res.lat_us(0.99), "p999": res.lat_us(0.999), "max": self.max_stall_us() },
            "failed_ios": res.failed_ios,
            "verify_errors": res.verify_errors,
            "cpu_pct": res.cpu_pct,
            "refused": self
                .refused
                .iter()
                .map(|(k, n)| (k.to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        if let Some(s) = &self.drl {
            o["drl"] = serde_json::json!({
                "log_writes": s.log_writes,
                "log_waits": s.log_waits,
                "dirty_regions": s.log_dirty_regions,
            });
        }
        if let Some(n) = self.nvmf {
            o["qpairs"] = serde_json::json!(n.qpairs);
            o["nsid"] = serde_json::json!(n.nsid);
            o["digest"] = serde_json::json!(args.digest);
        }
        if let Some(q) = self.quiesce {
            o["quiesces"] = serde_json::json!(q.times.len());
            o["quiesce_errors"] = serde_json::json!(q.errors);
            o["quiesce_us"] = serde_json::json!({
                "p50": percentile(&q.times, 0.5),
                "p99": percentile(&q.times, 0.99),
                "max": percentile(&q.times, 1.0),
            });
            o["max_stall_us"] = serde_json::json!(self.max_stall_us());
            o["quiesce_phases_us"] = PHASES
                .iter()
                .zip(&q.phases)
                .map(|((k, _), v)| {
                    let p = serde_json::json!({
                        "p50": percentile(v, 0.5),
                        "p99": percentile(v, 0.99),
                        "max": percentile(v, 1.0),
                    });
                    (k.to_string(), p)
                })
                .collect::<serde_json::Map<String, serde_json::Value>>()
                .into();
        }
        println!("{o}");
    }

    /// The report as text lines.
    fn print_text(&self) {
        let (args, res) = (self.args, self.res);
        let on = match self.nvmf {
            Some(n) => format!(
                "nsid {} over {} queue pair(s), digests {}",
                n.nsid, n.qpairs, args.digest
            ),
            None => format!("on {} reactor(s)", self.reactors),
        };
        println!(
            "{}: {} {} qd {} {on}, {:.1} s",
            self.target_name,
            args.rw,
            args.bs,
            args.qd,
            res.elapsed.as_secs_f64()
        );
        println!("  IOPS        {:>12.0}", res.iops());
        println!("  MiB/s       {:>12.1}", res.mib_per_s());
        println!(
            "  latency us  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            res.lat_us(0.5),
            res.lat_us(0.99),
            res.lat_us(0.999),
            self.max_stall_us()
        );
        let cpu: Vec<String> = res.cpu_pct.iter().map(|c| format!("{c:.0}%")).collect();
        println!("  CPU         {}", cpu.join(" "));
        if let Some(s) = &self.drl {
            println!(
                "  dirty log   {} log writes, {} writes waited for one, {} regions dirty",
                s.log_writes, s.log_waits, s.log_dirty_regions
            );
        }
        println!(
            "  failed I/Os {}   verify errors {}",
            res.failed_ios, res.verify_errors
        );
        if let Some(q) = self.quiesce {
            println!(
                "  quiesce us  p50 {:.1}  p99 {:.1}  max {:.1} over {} changes ({} failed); longest I/O stall {:.1} us",
                percentile(&q.times, 0.5),
                percentile(&q.times, 0.99),
                percentile(&q.times, 1.0),
                q.times.len(),
                q.errors,
                self.max_stall_us()
            );
            println!("  quiesce steps, us since the prepare call (p50 / p99 / max):");
            for ((k, _), v) in PHASES.iter().zip(&q.phases) {
                println!(
                    "    {k:<17} {:>9.1} {:>9.1} {:>9.1}",
                    percentile(v, 0.5),
                    percentile(v, 0.99),
                    percentile(v, 1.0)
                );
            }
        }
        if self.refused.iter().any(|(_, n)| *n > 0) {
            let r: Vec<String> = self
                .refused
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!(
                "  refused     {} (EAGAIN: a bounded queue was full)",
                r.join("  ")
            );
        }
        if let Some(m) = &res.first_mismatch {
            println!("  first mismatch: {m}");
        }
    }
}

/// The loaded bdev's refusal counters: a volume's per cause, else the bdev's own.
fn refusals(t: &Target, name: &str, volume: bool) -> Result<Vec<(&'static str, u64)>, String> {
    if volume {
        let s = t.volume_info(name).map_err(|e| e.to_string())?.stats;
        return Ok(vec![
            ("parked", s.parked_refused),
            ("held", s.held_refused),
            ("inflight", s.inflight_refused),
            ("log", s.log_refused),
        ]);
    }
    let b = t.bdev(name).map_err(|e| e.to_string())?;
    Ok(vec![("bdev", b.info().refused)])
}

/// `--nvmf URL`: loads an NVMe/TCP target through plexperf's own initiator.
fn run_nvmf(args: &Args, url: &str) -> Result<bool, String> {
    if !args.bdevs.is_empty()
        || args.volume.is_some()
        || args.drl.is_some()
        || args.quiesce_every.is_some()
    {
        return Err(
            "--nvmf loads a remote target: no --bdev, --volume, --drl or --quiesce-every".into(),
        );
    }
    let cores = parse_cores(&args.cores)?;
    let cfg = NvmfJobConfig {
        url: NvmfUrl::parse(url)?,
        nsid: args.nsid,
        digests: parse_digests(&args.digest)?,
        workload: Workload::parse(&args.rw)?,
        block_bytes: parse_size(&args.bs)?,
        qd: args.qd,
        qpairs: args.qpairs.unwrap_or(cores.len().max(1)),
        cores,
        seed: args.seed,
        duration: Duration::from_secs_f64(args.time.max(0.0)),
        kato: Duration::from_millis(args.kato_ms),
    };
    let res = run_nvmf_job(&cfg)?;
    let name = cfg.url.to_string();
    let report = Report {
        args,
        target_name: &name,
        block_bytes: cfg.block_bytes,
        reactors: cfg.qpairs,
        hugepages: false,
        res: &res,
        quiesce: None,
        refused: Vec::new(),
        drl: None,
        nvmf: Some(&cfg),
    };
    if args.json {
        report.print_json();
    } else {
        report.print_text();
    }
    Ok(res.failed_ios == 0 && res.verify_errors == 0)
}

/// Runs what the arguments ask; `Ok(false)` when I/Os failed, data did not verify
/// or a layout change failed.
fn run(args: &Args) -> Result<bool, String> {
    if let Some(url) = &args.nvmf {
        return run_nvmf(args, url);
    }
    let t = start_target(args)?;
    if let Some(secs) = args.idle {
        measure_idle(&t, secs, args.json);
        return Ok(true);
    }
    let target_name = build_bdevs(&t, args)?;
    let cfg = JobConfig {
        bdev: target_name.clone(),
        workload: Workload::parse(&args.rw)?,
        block_bytes: parse_size(&args.bs)?,
        qd: args.qd,
        reactors: vec![],
        seed: args.seed,
    };
    let job = start_job(&t, &cfg).map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs_f64(args.time);
    let quiesce = match args.quiesce_every {
        Some(ms) => Some(change_layouts_until(&t, ms, end)?),
        None => {
            wait_until(end);
            None
        }
    };
    let res = job.stop().map_err(|e| e.to_string())?;
    let quiesce_errors = quiesce.as_ref().map_or(0, |q| q.errors);
    let ok = res.failed_ios == 0 && res.verify_errors == 0 && quiesce_errors == 0;
    let refused = refusals(&t, &target_name, args.volume.is_some())?;
    let drl = match args.drl {
        Some(_) => Some(
            t.volume_info(&target_name)
                .map_err(|e| e.to_string())?
                .stats,
        ),
        None => None,
    };
    let report = Report {
        args,
        target_name: &target_name,
        block_bytes: cfg.block_bytes,
        reactors: t.reactors().len(),
        hugepages: t.pool().hugepages(),
        res: &res,
        quiesce: quiesce.as_ref(),
        refused,
        drl,
        nvmf: None,
    };
    if args.json {
        report.print_json();
    } else {
        report.print_text();
    }
    Ok(ok)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("plexperf: failed I/Os or verify errors (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("plexperf: {e}");
            ExitCode::from(1)
        }
    }
}

//! Plexes read straight from the disk files (never through a data plane), and the
//! master's resync log lines: what the crash-recovery tests compare after a node
//! dies between two plex writes.

use std::io::{Read, Seek, SeekFrom};

use crate::cluster::{group, volume, Cluster};

/// Writes `len` bytes of pattern `seed` over plex `plex` of `dg.vol` at volume
/// offset `at`, on its disk file (located from `print`, a `--json print`), synced:
/// the plexes then differ there, as after a crash that reached one plex only.
pub fn diverge_plex(
    print: &serde_json::Value,
    dg: &str,
    vol: &str,
    plex: &str,
    at: u64,
    len: usize,
    seed: u64,
) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    let (path, disk_at, _) = plex_location(print, dg, vol, plex, at)?;
    let bytes = crate::data::pattern_bytes(seed, at, len);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    f.seek(SeekFrom::Start(disk_at))
        .and_then(|_| f.write_all(&bytes))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{path} at {disk_at}: {e}"))
}

/// The disk file and byte offset of plex `plex` of `dg.vol` at `plex_offset`, from a
/// `--json print`, and how many bytes of that subdisk follow. Concat plexes only
/// (a stripe's subdisks are offsets within a column).
pub fn plex_location(
    print: &serde_json::Value,
    dg: &str,
    vol: &str,
    plex: &str,
    plex_offset: u64,
) -> Result<(String, u64, u64), String> {
    let v = volume(print, dg, vol).ok_or(format!("no volume {vol}"))?;
    let group = group(print, dg).ok_or(format!("no group {dg}"))?;
    let p = v["plexes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == plex))
        .ok_or(format!("no plex {plex} in {v}"))?;
    if p["layout"] != "concat" {
        return Err(format!("plex {plex} is not a concat plex: {p}"));
    }
    for sd in p["subdisks"].as_array().ok_or("no subdisks")? {
        let start = sd["plex_offset"].as_u64().ok_or("plex_offset")?;
        let len = sd["len"].as_u64().ok_or("len")?;
        if (start..start + len).contains(&plex_offset) {
            let disk = sd["disk"].as_str().ok_or("disk")?;
            let path = group["disks"]
                .as_array()
                .and_then(|ds| ds.iter().find(|d| d["name"] == disk))
                .and_then(|d| d["path"].as_str())
                .ok_or(format!("no path for disk {disk}"))?
                .to_string();
            let at = sd["disk_offset"].as_u64().ok_or("disk_offset")? + plex_offset - start;
            return Ok((path, at, start + len - plex_offset));
        }
    }
    Err(format!("plex {plex} has no subdisk at {plex_offset}: {p}"))
}

/// The whole content of plex `plex` of `dg.vol` (the volume's size, from the
/// print), read from the disk files at its subdisks' offsets.
pub fn plex_image(
    print: &serde_json::Value,
    dg: &str,
    vol: &str,
    plex: &str,
) -> Result<Vec<u8>, String> {
    let size = volume(print, dg, vol).ok_or(format!("no volume {vol}"))?["size"]
        .as_u64()
        .ok_or("no size")?;
    let mut out = vec![0u8; size as usize];
    let mut off = 0;
    while off < size {
        let (path, at, left) = plex_location(print, dg, vol, plex, off)?;
        let len = (1u64 << 20).min(size - off).min(left) as usize;
        let mut f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        f.seek(SeekFrom::Start(at))
            .map_err(|e| format!("{path}: {e}"))?;
        f.read_exact(&mut out[off as usize..off as usize + len])
            .map_err(|e| format!("{path} at {at}: {e}"))?;
        off += len as u64;
    }
    Ok(out)
}

/// Node `i`'s plexd log so far (empty when there is none yet).
pub fn plexd_log(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.nodes[i].dir.join("plexd.log")).unwrap_or_default()
}

/// The bytes the master's resync of `plex` of `vol` set out to copy, and whether
/// only dirty regions (from its log line "resync of plex P of volume V (disk group
/// G): started, N bytes in K range(s) (dirty regions|the whole plex)").
pub fn resync_started(log: &str, vol: &str, plex: &str) -> Option<(u64, bool)> {
    let head = format!("resync of plex {plex} of volume {vol} ");
    let line = log
        .lines()
        .filter(|l| l.contains(&head))
        .find(|l| l.contains(": started, "))?;
    let rest = line.split(": started, ").nth(1)?;
    let bytes = rest.split(' ').next()?.parse().ok()?;
    Some((bytes, line.contains("(dirty regions)")))
}

/// The millisecond of the day a plexd log line was written at (plexd logs
/// `[YYYY-MM-DDTHH:MM:SS.mmmZ ...`), or None for another line.
pub fn log_line_ms(line: &str) -> Option<u64> {
    let t = line.strip_prefix('[')?.get(11..23)?;
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u64>().ok();
    Some(((num(0..2)? * 60 + num(3..5)?) * 60 + num(6..8)?) * 1000 + num(9..12)?)
}

/// The master's own timing of a resync of `plex` of `vol`, from its log (the `nth`
/// one in the log, counting from 0): milliseconds from its "started" line to its
/// "ACTIVE" line, and the fence rounds it took ("every chunk copied under fences (N
/// fence round(s))"). Unaffected by how often a test polls.
pub fn resync_timing(log: &str, vol: &str, plex: &str, nth: usize) -> Option<(u64, u64)> {
    let head = format!("resync of plex {plex} of volume {vol}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&head)).collect();
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(": started, "))
        .nth(nth)?
        .0;
    let rest = &lines[start..];
    let rounds = rest
        .iter()
        .find_map(|l| l.split("under fences (").nth(1))?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let active = rest
        .iter()
        .find(|l| l.ends_with(&format!("{head}: ACTIVE")))?;
    let (from, to) = (log_line_ms(rest[0])?, log_line_ms(active)?);
    // A resync over midnight (UTC).
    let ms = if to >= from {
        to - from
    } else {
        to + 86_400_000 - from
    };
    Some((ms, rounds))
}

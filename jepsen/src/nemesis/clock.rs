//! The clock nemesis's evidence: a clock fault counts as installed only once a process
//! under the same libfaketime environment as the faulted host's witness or agent shows the
//! faked wall clock. Writing the control file proves nothing by itself (the library may be
//! missing, not preloaded, or reading another file).
//!
//! The probe is a one-line Perl program run in the host's namespace with that environment
//! (libfaketime fakes what it reads with `gettimeofday`; a shell's own clock variables are
//! not faked). It prints its wall clock, waits for a line on its stdin, which the harness
//! sends [`PROBE_WINDOW`] later on its own (real) clock, and prints it again; the harness
//! stamps each line with its real wall clock as it arrives. The window is timed by the
//! harness because libfaketime also scales the sleeps of a faked process. A jump shows as
//! the faked minus the real time (within [`OFFSET_TOLERANCE_S`]), a rate as the faked over
//! the real elapsed time (within [`RATE_TOLERANCE`] of it, relative).
//!
//! This module finds libfaketime and judges probes; it never writes a control file (the
//! nemesis does) and never touches the processes under test.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::AsyncBufReadExt;

/// The multithreaded variant (arbiter is multithreaded), as Debian's `faketime` installs it.
pub const LIBFAKETIME_NAME: &str = "libfaketimeMT.so.1";

/// Time between the probe's two readings: long enough that a rate of x0.9 or x1.1 moves the
/// faked elapsed time well outside [`RATE_TOLERANCE`] of the real one.
pub const PROBE_WINDOW: Duration = Duration::from_secs(1);

/// How far a probe's faked offset may be from the requested jump: the probe's first line
/// reaches the harness a few milliseconds after it was printed.
pub const OFFSET_TOLERANCE_S: f64 = 0.5;

/// How far the probe's measured rate may be from the requested one, as a fraction of it:
/// the lines' arrival jitter over [`PROBE_WINDOW`] (40 ms), well under the 9 % between x1.1
/// or x0.9 and a clock left alone.
pub const RATE_TOLERANCE: f64 = 0.04;

/// The probe: its wall clock, a line read from stdin, its wall clock again.
const PROBE_PERL: &str = r#"$| = 1; printf "%.6f\n", Time::HiRes::time(); <STDIN>; printf "%.6f\n", Time::HiRes::time();"#;

/// The `clock-rate` kinds: rate changes of the monotonic clock, within the policy's drift
/// bound (`clock-rate`, in `all`) and far beyond it (`clock-rate-beyond`, a control).
pub const MONOTONIC_KINDS: &[&str] = &["clock-rate", "clock-rate-beyond"];

/// The rates `clock-rate` sets: within the runs' `clock_drift_percent` of 5, and at least
/// 3 % from x1 so that the probe tells them from a clock left alone.
pub const RATES_WITHIN: &[&str] = &["0.96", "0.97", "1.03", "1.04"];

/// The rate `clock-rate-beyond` sets on the active region's agent: its lease lasts five
/// times what it counts, far beyond any drift bound. (Not the witnesses at x5: libfaketime
/// picks a new rate up within a second, so their clocks step forward by up to 4.8 s at
/// different moments, which starts elections and delays the failover past the old lease;
/// the agent's forward step of up to 1 s only shortens its lease.)
pub const RATE_BEYOND: &str = "0.2";

/// The hosts whose monotonic clock the run fakes: none without a `clock-rate` kind; every
/// host when no `clock` (wall clock) fault is asked for; otherwise the odd-numbered
/// witnesses and region-a's database host, so that the wall clock's jumps have the other
/// hosts to themselves (libfaketime applies one spec to every clock it fakes, and a
/// monotonic clock is never jumped).
pub fn monotonic_hosts(kinds: &[String], plan: &[crate::hosts::Host]) -> BTreeSet<String> {
    if !kinds.iter().any(|k| MONOTONIC_KINDS.contains(&k.as_str())) {
        return BTreeSet::new();
    }
    let split = kinds.iter().any(|k| k == "clock");
    plan.iter()
        .filter(|h| match &h.role {
            crate::hosts::Role::Witness { .. } => {
                !split || h.witness_id().is_some_and(|id| id % 2 == 1)
            }
            crate::hosts::Role::Database { region } => !split || region == "region-a",
            crate::hosts::Role::Dns => false,
        })
        .map(|h| h.name.clone())
        .collect()
}

/// The monotonic probe: its (faked) `CLOCK_MONOTONIC` and the kernel's uptime (which no
/// library fakes) on one line, a line read from stdin, both again.
const PROBE_PERL_MONOTONIC: &str = r#"use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC); $| = 1; sub up { open(my $f, "<", "/proc/uptime") or die; my ($u) = split(" ", <$f>); $u } printf "%.6f %s\n", clock_gettime(CLOCK_MONOTONIC), up(); <STDIN>; printf "%.6f %s\n", clock_gettime(CLOCK_MONOTONIC), up();"#;

/// A reader of the monotonic clock against the kernel's uptime every 10 ms, for the tests.
#[cfg(test)]
const MONOTONIC_READER_PERL: &str = r#"use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC usleep); $| = 1; while (1) { open(my $f, "<", "/proc/uptime") or die; my ($u) = split(" ", <$f>); close($f); printf "%.6f %s\n", clock_gettime(CLOCK_MONOTONIC), $u; usleep(10000); }"#;

/// Time between the monotonic probe's two readings: the uptime counts hundredths of a
/// second, so over 2 s its reading is within 1 % of the real elapsed time.
pub const MONOTONIC_PROBE_WINDOW: Duration = Duration::from_secs(2);

/// How far the monotonic probe's measured rate may be from the requested one, as a
/// fraction of it: the uptime's resolution over [`MONOTONIC_PROBE_WINDOW`], under the 3 %
/// by which every rate of [`RATES_WITHIN`] differs from x1.
pub const MONOTONIC_RATE_TOLERANCE: f64 = 0.012;

/// Checks at startup that the probe can run (Perl with `Time::HiRes`).
pub fn check_probe() -> anyhow::Result<()> {
    let out = std::process::Command::new("perl")
        .args(["-MTime::HiRes", "-e", "1"])
        .output()
        .context("the clock nemesis verifies its faults with perl, which cannot be run")?;
    if !out.status.success() {
        bail!(
            "the clock nemesis verifies its faults with perl's Time::HiRes, which is missing: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The probe may take this long in all before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where libfaketime is looked for: `<lib>/<multiarch>/faketime/` for every multiarch
/// directory under `/usr/lib` and `/lib` (x86_64-linux-gnu, aarch64-linux-gnu, ...), then
/// the directories without a multiarch part.
pub fn find_libfaketime() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    for lib in ["/usr/lib", "/lib", "/usr/local/lib"] {
        let mut arches: Vec<PathBuf> = std::fs::read_dir(lib)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.contains("-linux-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        arches.sort();
        for arch in arches {
            candidates.push(arch.join("faketime").join(LIBFAKETIME_NAME));
        }
        candidates.push(PathBuf::from(lib).join("faketime").join(LIBFAKETIME_NAME));
    }
    candidates.push(PathBuf::from("/usr/lib64/faketime").join(LIBFAKETIME_NAME));
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "the clock nemesis needs libfaketime, and {LIBFAKETIME_NAME} is in none of {} \
             (install the `faketime` package)",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A libfaketime control line: the offset and, always, the rate. libfaketime keeps the rate
/// it read last when a line names none, so a `+0` written after `+0 x2` leaves the clock at
/// x2 for the rest of the process's life (and a later rate change computed for x1 then
/// steps it back).
pub fn control_line(offset_s: f64, rate: f64) -> String {
    format!("{offset_s:+.3} x{rate}")
}

/// How long after its control file changes a faked process has picked the change up:
/// libfaketime re-reads the file at its first clock reading once its cache has expired,
/// which it judges in whole seconds of `FAKETIME_CACHE_DURATION` (1 s here), so up to 2 s
/// after the write; with room for a loaded machine.
pub const CLOCK_PICKUP_MAX: Duration = Duration::from_secs(3);

/// How much later than the harness started it a process's libfaketime may have started
/// (`ip netns exec` executes the program in place: milliseconds).
pub const CLOCK_START_SLACK: Duration = Duration::from_millis(200);

/// What a faked monotonic clock shows: libfaketime computes it as the moment its process
/// started plus `offset_s` plus the process's (real) age times `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonotonicSetting {
    pub offset_s: f64,
    pub rate: f64,
}

impl Default for MonotonicSetting {
    fn default() -> Self {
        MonotonicSetting {
            offset_s: 0.0,
            rate: 1.0,
        }
    }
}

impl MonotonicSetting {
    /// The setting that runs at `rate` from now on without ever stepping back, for a
    /// process of real age `age` at the write: the new offset gives the same faked time at
    /// an assumed moment of pickup. The process picks the file up within
    /// [`CLOCK_PICKUP_MAX`], and a pickup at another moment than the assumed one steps the
    /// clock by the difference times the change of rate; so a faster rate assumes the
    /// earliest pickup (the write) and a slower one the latest, and the step is always
    /// forward, by at most the change of rate times [`CLOCK_PICKUP_MAX`] (120 ms for 4 %).
    /// openraft asserts that its clock never goes back, and a lease must not either.
    pub fn with_rate(self, age: Duration, rate: f64) -> MonotonicSetting {
        let pickup = if rate > self.rate {
            // The process's own start (its libfaketime's) is a little after the harness
            // started it, so its age is a little less than the harness's count.
            age.saturating_sub(CLOCK_START_SLACK)
        } else {
            age + CLOCK_PICKUP_MAX
        };
        MonotonicSetting {
            offset_s: self.offset_s + pickup.as_secs_f64() * (self.rate - rate),
            rate,
        }
    }

    /// The control line of this setting.
    pub fn line(self) -> String {
        control_line(self.offset_s, self.rate)
    }

    /// The faked clock of a process of real age `age`, in seconds since its start.
    pub fn at(self, age: Duration) -> f64 {
        self.offset_s + age.as_secs_f64() * self.rate
    }
}

/// What a libfaketime control line asks for: `+Ns` / `-Ns` (a jump) or `+0 xR` (a rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub offset_s: f64,
    pub rate: f64,
}

/// Parses the control lines the nemesis writes (`+300s`, `-12s`, `+0 x2.0`).
pub fn expected(spec: &str) -> anyhow::Result<Expected> {
    let mut parts = spec.split_whitespace();
    let offset = parts.next().context("an empty clock spec")?;
    let offset_s: f64 = offset
        .trim_end_matches('s')
        .parse()
        .with_context(|| format!("clock spec {spec:?}: offset {offset:?}"))?;
    let rate = match parts.next() {
        None => 1.0,
        Some(r) => r
            .strip_prefix('x')
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("clock spec {spec:?}: rate {r:?}"))?,
    };
    Ok(Expected { offset_s, rate })
}

/// One probe's readings: the faked times it printed and the real times the lines arrived,
/// in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// When the harness started the probe.
    pub spawned: f64,
    pub faked: [f64; 2],
    pub real: [f64; 2],
}

/// Whether a probe shows the expected clock: the offset and rate it measured, or an error
/// saying what it showed instead.
pub fn judge(want: Expected, p: Probe) -> Result<Expected, String> {
    let offset = p.faked[0] - p.real[0];
    let real_elapsed = p.real[1] - p.real[0];
    if real_elapsed <= 0.0 {
        return Err(format!(
            "the probe's lines arrived {real_elapsed:.3} s apart"
        ));
    }
    let rate = (p.faked[1] - p.faked[0]) / real_elapsed;
    // Under a rate the probe's clock has already drifted by the time it first prints: by
    // the rate's excess over the time since it started.
    let drift = (want.rate - 1.0).abs() * (p.real[0] - p.spawned).max(0.0);
    if (offset - want.offset_s).abs() > OFFSET_TOLERANCE_S + drift {
        return Err(format!(
            "a faked process is {offset:+.1} s from real time, not {:+.0} s",
            want.offset_s
        ));
    }
    if (rate / want.rate - 1.0).abs() > RATE_TOLERANCE {
        return Err(format!(
            "a faked process's clock runs at x{rate:.3}, not x{}",
            want.rate
        ));
    }
    Ok(Expected {
        offset_s: offset,
        rate,
    })
}

/// Whether a monotonic probe's readings (`[faked, uptime]` twice, seconds) show `rate`:
/// the measured rate, or what it showed instead.
pub fn judge_monotonic(rate: f64, first: [f64; 2], second: [f64; 2]) -> Result<f64, String> {
    let real = second[1] - first[1];
    if real <= 0.0 {
        return Err(format!("the probe's uptime moved {real:.3} s"));
    }
    let seen = (second[0] - first[0]) / real;
    if (seen / rate - 1.0).abs() > MONOTONIC_RATE_TOLERANCE {
        return Err(format!(
            "a faked process's monotonic clock runs at x{seen:.3}, not x{rate}"
        ));
    }
    Ok(seen)
}

/// Runs the monotonic probe in namespace `ns` under `env` and returns the rate its
/// monotonic clock showed against the kernel's uptime.
pub async fn probe_monotonic(ns: &str, env: &[(String, String)], rate: f64) -> anyhow::Result<f64> {
    use tokio::io::AsyncWriteExt;
    if env.is_empty() {
        bail!("the run's processes are not under libfaketime (no clock nemesis asked for)");
    }
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "env"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(["perl", "-e", PROBE_PERL_MONOTONIC])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("cannot run the monotonic clock probe")?;
    let mut stdin = child.stdin.take().context("the probe has no stdin")?;
    let stdout = child.stdout.take().context("the probe has no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let read = async {
        let mut readings = [[0.0; 2]; 2];
        for (k, reading) in readings.iter_mut().enumerate() {
            if k == 1 {
                tokio::time::sleep(MONOTONIC_PROBE_WINDOW).await;
                stdin.write_all(b"\n").await?;
                stdin.flush().await?;
            }
            let line = lines
                .next_line()
                .await?
                .context("the probe ended before printing its clocks")?;
            let mut words = line.split_whitespace().map(|w| w.parse::<f64>());
            match (words.next(), words.next()) {
                (Some(Ok(faked)), Some(Ok(up))) => *reading = [faked, up],
                _ => bail!("the probe printed {line:?}, not two clocks"),
            }
        }
        anyhow::Ok(readings)
    };
    let readings = tokio::time::timeout(PROBE_TIMEOUT, read)
        .await
        .context("the monotonic clock probe did not answer in time")??;
    let _ = child.kill().await;
    judge_monotonic(rate, readings[0], readings[1]).map_err(|e| anyhow::anyhow!(e))
}

fn real_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Runs the probe in namespace `ns` under `env` (the host's libfaketime environment) and
/// returns its readings.
pub async fn probe(ns: &str, env: &[(String, String)]) -> anyhow::Result<Probe> {
    use tokio::io::AsyncWriteExt;
    if env.is_empty() {
        bail!("the run's processes are not under libfaketime (no clock nemesis asked for)");
    }
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "env"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(["perl", "-MTime::HiRes", "-e", PROBE_PERL])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let spawned = real_now_s();
    let mut child = cmd.spawn().context("cannot run the clock probe")?;
    let mut stdin = child.stdin.take().context("the probe has no stdin")?;
    let stdout = child.stdout.take().context("the probe has no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let read = async {
        let mut faked = [0.0; 2];
        let mut real = [0.0; 2];
        for k in 0..2 {
            if k == 1 {
                tokio::time::sleep(PROBE_WINDOW).await;
                stdin.write_all(b"\n").await?;
                stdin.flush().await?;
            }
            let line = lines
                .next_line()
                .await?
                .context("the probe ended before printing its time")?;
            real[k] = real_now_s();
            faked[k] = line
                .trim()
                .parse()
                .with_context(|| format!("the probe printed {line:?}, not a time"))?;
        }
        anyhow::Ok(Probe {
            spawned,
            faked,
            real,
        })
    };
    let probe = tokio::time::timeout(PROBE_TIMEOUT, read)
        .await
        .context("the clock probe did not answer in time")?;
    let _ = child.kill().await;
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_line_names_its_rate() {
        assert_eq!(control_line(0.0, 1.0), "+0.000 x1");
        assert_eq!(control_line(-300.0, 1.0), "-300.000 x1");
        assert_eq!(control_line(1.2345, 0.97), "+1.234 x0.97");
        let e = expected(&control_line(300.0, 1.0)).unwrap();
        assert_eq!((e.offset_s, e.rate), (300.0, 1.0));
    }

    #[test]
    fn a_rate_change_keeps_the_faked_clock_continuous_at_the_assumed_pickup() {
        let age = Duration::from_secs(40);
        let slow = MonotonicSetting::default().with_rate(age, 0.96);
        // Slower: continuous at the latest pickup, so any earlier one steps forward.
        let latest = age + CLOCK_PICKUP_MAX;
        assert!((slow.at(latest) - MonotonicSetting::default().at(latest)).abs() < 1e-9);
        assert!(slow.at(age) > MonotonicSetting::default().at(age));
        // Faster again: continuous at the write, so any later pickup steps forward.
        let later = age + Duration::from_secs(30);
        let healed = slow.with_rate(later, 1.0);
        let write = later - CLOCK_START_SLACK;
        assert!((healed.at(write) - slow.at(write)).abs() < 1e-9);
        assert!(healed.at(later + CLOCK_PICKUP_MAX) > slow.at(later + CLOCK_PICKUP_MAX));
    }

    /// A faked process's monotonic clock across rate changes written as the nemesis writes
    /// them (slower, back to x1, faster, back to x1), read by the process itself every 10 ms:
    /// it never goes back, never leaps, and runs at x1 again once healed. Needs libfaketime
    /// and Perl's `Time::HiRes`; skipped without them, except under CI.
    #[test]
    fn a_faked_monotonic_clock_never_goes_back_across_rate_changes() {
        use std::io::BufRead;
        let lib = match (find_libfaketime(), check_probe()) {
            (Ok(lib), Ok(())) => lib,
            (Err(e), _) | (_, Err(e)) => {
                if std::env::var_os("CI").is_some() {
                    panic!("CI is set but the clock cannot be faked: {e:#}");
                }
                eprintln!("SKIPPED: {e:#}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("faketime");
        std::fs::write(&file, format!("{}\n", control_line(0.0, 1.0))).unwrap();
        let mut child = std::process::Command::new("perl")
            .args(["-e", MONOTONIC_READER_PERL])
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME_TIMESTAMP_FILE", &file)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "0")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let reader = {
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| {
                        let mut w = l.split_whitespace().map(|x| x.parse::<f64>());
                        match (w.next(), w.next()) {
                            (Some(Ok(faked)), Some(Ok(up))) => Some((faked, up)),
                            _ => None,
                        }
                    })
                    .collect::<Vec<_>>()
            })
        };
        // Changes at odd moments, so that pickups fall at different points of libfaketime's
        // one-second cache.
        let mut setting = MonotonicSetting::default();
        for (at_ms, rate) in [(1_300, 0.96), (4_700, 1.0), (7_100, 1.04), (9_900, 1.0)] {
            std::thread::sleep(Duration::from_millis(at_ms).saturating_sub(started.elapsed()));
            setting = setting.with_rate(started.elapsed(), rate);
            std::fs::write(&file, format!("{}\n", setting.line())).unwrap();
        }
        let healed_at = started.elapsed() + CLOCK_PICKUP_MAX;
        std::thread::sleep(
            (healed_at + Duration::from_millis(2_500)).saturating_sub(started.elapsed()),
        );
        let _ = child.kill();
        let _ = child.wait();
        let readings = reader.join().unwrap();
        assert!(readings.len() > 200, "{} readings", readings.len());
        for pair in readings.windows(2) {
            let ((f0, u0), (f1, u1)) = (pair[0], pair[1]);
            assert!(f1 >= f0, "the faked clock went back by {:.3} s", f0 - f1);
            // A pickup steps forward by at most 4 % of CLOCK_PICKUP_MAX; the uptime counts
            // hundredths.
            let leap = (f1 - f0) - 1.04 * (u1 - u0);
            assert!(
                leap < 0.04 * CLOCK_PICKUP_MAX.as_secs_f64() + 0.03,
                "leapt {leap:.3} s"
            );
        }
        // After the last pickup: x1 again (the old control line without a rate kept x1.04).
        let up_at_heal = readings[0].1 + healed_at.as_secs_f64();
        let tail: Vec<_> = readings.iter().filter(|(_, u)| *u >= up_at_heal).collect();
        let (first, last) = (tail.first().unwrap(), tail.last().unwrap());
        assert!(
            last.1 - first.1 > 1.5,
            "{:.2} s of readings after the heal",
            last.1 - first.1
        );
        let rate = (last.0 - first.0) / (last.1 - first.1);
        assert!(
            (rate - 1.0).abs() < 0.012,
            "the healed clock runs at x{rate:.3}"
        );
    }

    #[test]
    fn a_monotonic_probe_shows_the_rate_or_says_what_it_saw() {
        assert!(judge_monotonic(1.04, [10.0, 500.0], [12.08, 502.0]).is_ok());
        let err = judge_monotonic(1.04, [10.0, 500.0], [12.0, 502.0]).unwrap_err();
        assert!(err.contains("x1.000, not x1.04"), "{err}");
        assert!(judge_monotonic(0.96, [10.0, 500.0], [11.92, 502.0]).is_ok());
        assert!(judge_monotonic(1.0, [10.0, 500.0], [11.0, 500.0]).is_err());
        // x5 read with the uptime's hundredths: 10 s faked over 2.01 s.
        assert!(judge_monotonic(5.0, [10.0, 500.0], [20.0, 502.01]).is_ok());
    }

    #[test]
    fn specs_parse_into_offsets_and_rates() {
        assert_eq!(
            expected("+300s").unwrap(),
            Expected {
                offset_s: 300.0,
                rate: 1.0
            }
        );
        assert_eq!(expected("-12s").unwrap().offset_s, -12.0);
        assert_eq!(expected("+0 x2.0").unwrap().rate, 2.0);
        assert!(expected("x").is_err());
        assert!(expected("+0 2.0").is_err());
    }

    #[test]
    fn a_probe_shows_the_fault_or_says_what_it_saw() {
        let real = [1000.0, 1001.0];
        let jump = expected("+300s").unwrap();
        assert_eq!(
            judge(
                jump,
                Probe {
                    spawned: 999.9,
                    faked: [1300.0, 1301.0],
                    real
                }
            ),
            Ok(Expected {
                offset_s: 300.0,
                rate: 1.0
            })
        );
        // The file was written but nothing reads it: real time.
        let err = judge(
            jump,
            Probe {
                spawned: 999.9,
                faked: [1000.0, 1001.0],
                real,
            },
        )
        .unwrap_err();
        assert!(err.contains("+0.0 s from real time, not +300 s"), "{err}");
        let slow = expected("+0 x0.9").unwrap();
        assert!(judge(
            slow,
            Probe {
                spawned: 999.9,
                faked: [1000.0, 1000.9],
                real
            }
        )
        .is_ok());
        let err = judge(
            slow,
            Probe {
                spawned: 999.9,
                faked: [1000.0, 1001.0],
                real,
            },
        )
        .unwrap_err();
        assert!(err.contains("x1.000, not x0.9"), "{err}");
        // A fast clock started 0.2 s before its first line is already 0.8 s ahead.
        let fast = expected("+0 x5.0").unwrap();
        let started_late = Probe {
            spawned: 999.8,
            faked: [1000.8, 1005.8],
            real,
        };
        assert!(judge(fast, started_late).is_ok());
    }
}

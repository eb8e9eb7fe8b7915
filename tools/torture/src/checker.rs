//! The checker: the sections and resource writes recorded during the run, the violation rules
//! of the crate docs applied to them, and the report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::faults::{Fault, Kind};
use crate::workers::{holder_id, log_key};
use crate::{support, Args, SLACK, TTL};

// ---------------------------------------------------------------------------------------
// Records.

#[derive(Debug)]
pub(crate) struct Section {
    key: String,
    pub(crate) proc: usize,
    holder: String,
    token: u64,
    pub(crate) asked: u128,
    granted: u128,
    pub(crate) end: u128,
    lost: bool,
}

impl Section {
    pub(crate) fn parse(line: &str) -> Section {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 9, "bad record {line:?}");
        let num = |i: usize| -> u128 { f[i].parse().unwrap_or_else(|_| panic!("{line:?}")) };
        Section {
            key: f[0].into(),
            proc: num(1) as usize,
            holder: holder_id(num(1) as usize, num(2) as usize, num(3) as u64),
            token: num(4) as u64,
            asked: num(5),
            granted: num(6),
            end: num(7),
            lost: f[8] == "1",
        }
    }

    /// `p0t1n2 token T [granted .. end]`, times in seconds since the coordinator started.
    fn describe(&self, t0: u128) -> String {
        format!(
            "{} token {} [{} .. {}]{}",
            self.holder,
            self.token,
            since(t0, self.granted),
            since(t0, self.end),
            if self.lost { " lost" } else { "" }
        )
    }
}

/// A wall-clock time as seconds since `t0`.
pub(crate) fn since(t0: u128, t: u128) -> String {
    format!("{:.3}s", t.saturating_sub(t0) as f64 / 1e9)
}

/// One write as the resource logged it, in the order it applied them (per key).
#[derive(Debug)]
pub(crate) struct ResourceWrite {
    key: String,
    token: u64,
    holder: String,
    accepted: bool,
    at: u128,
}

pub(crate) async fn read_resource_log(
    resource: &support::RedisServer,
    keys: usize,
) -> Vec<ResourceWrite> {
    let mut conn = resource.connection_manager().await;
    let mut writes = Vec::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(log_key(&key))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("LRANGE resource log");
        for entry in entries {
            let f: Vec<&str> = entry.split(' ').collect();
            assert_eq!(f.len(), 5, "bad resource log entry {entry:?}");
            let secs: u128 = f[3].parse().expect("seconds");
            let micros: u128 = f[4].parse().expect("microseconds");
            writes.push(ResourceWrite {
                key: key.clone(),
                token: f[0].parse().expect("token"),
                holder: f[1].into(),
                accepted: f[2] == "1",
                at: (secs * 1_000_000 + micros) * 1000,
            });
        }
    }
    writes
}

// ---------------------------------------------------------------------------------------
// Checker.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Finding {
    // Reported, not violations.
    Lost,
    OverlapWithPause,
    OverlapExcused,
    Refused,
    SupersededAccepted,
    // Violations.
    OverlapUnexcused,
    DuplicateToken,
    TokenBackwards,
    StaleAccepted,
    SameTokenAccepted,
}

impl Finding {
    fn is_violation(self) -> bool {
        self >= Finding::OverlapUnexcused
    }

    /// What the finding counts, with `permits` per key (1: locks, whose overlaps are pairs).
    fn label(self, permits: u32) -> String {
        let overlaps = match permits {
            1 => "overlapping pairs".to_owned(),
            n => format!("grants while {n} held already"),
        };
        match self {
            Finding::Lost => "sections ended by lost()".into(),
            Finding::OverlapWithPause => format!("{overlaps}, a pause involved (allowed)"),
            Finding::OverlapExcused => format!(
                "{overlaps}, no pause, the lock taken on the server and the loss noticed \
                 in time (allowed)"
            ),
            Finding::Refused => "writes refused by fencing".into(),
            Finding::SupersededAccepted => match permits {
                1 => "writes of a superseded holder accepted before the newer holder wrote \
                      (allowed)"
                    .into(),
                n => format!(
                    "writes accepted after {n} newer holders were granted, before {n} of them \
                     wrote (allowed)"
                ),
            },
            Finding::OverlapUnexcused => format!("{overlaps}, no excuse (rule 5)"),
            Finding::DuplicateToken => "duplicate tokens (rule 1)".into(),
            Finding::TokenBackwards => "tokens backwards (rule 2)".into(),
            Finding::StaleAccepted => "stale writes accepted (rule 3)".into(),
            Finding::SameTokenAccepted => "same-token writes accepted (rule 4)".into(),
        }
    }
}

/// One finding, the sections it involves (to attribute it to faults), and a description.
struct Event {
    finding: Finding,
    sections: Vec<usize>,
    /// For an excused overlap: the kinds of fault that excuse it.
    excused_by: BTreeSet<Kind>,
    detail: String,
}

pub(crate) struct Report {
    /// Holders allowed at once per key (`--permits`).
    permits: u32,
    /// The most sections of one key open at once (excused or not): with N permits, a run
    /// that never reached N did not test the bound.
    most_at_once: usize,
    events: Vec<Event>,
    /// Per event, the kinds of fault that touched one of its sections.
    touched_by: Vec<BTreeSet<Kind>>,
}

/// Applies the rules of the module doc to the records, with `permits` holders allowed at
/// once per key (1: locks); `t0` only serves the descriptions.
pub(crate) fn check(
    sections: &[Section],
    writes: &[ResourceWrite],
    faults: &[Fault],
    permits: u32,
    t0: u128,
) -> Report {
    let by_key = indices_by_key(sections);
    let mut checker = Checker {
        sections,
        faults,
        permits: permits.max(1) as usize,
        t0,
        by_key: &by_key,
        events: Vec::new(),
        most_at_once: 0,
    };
    checker.lost_sections();
    for order in by_key.values() {
        checker.overlaps(order);
        checker.duplicates(order);
        checker.backwards(order);
    }
    checker.writes(writes);
    let (events, most_at_once) = (checker.events, checker.most_at_once);
    let touched_by = events
        .iter()
        .map(|e| {
            faults
                .iter()
                .filter(|f| e.sections.iter().any(|&i| f.touches(&sections[i])))
                .map(|f| f.kind)
                .collect()
        })
        .collect();
    Report {
        permits,
        most_at_once,
        events,
        touched_by,
    }
}

/// Per key, section indices in grant order.
fn indices_by_key(sections: &[Section]) -> BTreeMap<String, Vec<usize>> {
    let mut by_key = BTreeMap::<String, Vec<usize>>::new();
    for (i, s) in sections.iter().enumerate() {
        by_key.entry(s.key.clone()).or_default().push(i);
    }
    for list in by_key.values_mut() {
        list.sort_by_key(|&i| sections[i].granted);
    }
    by_key
}

/// The records under check, and the findings so far.
struct Checker<'a> {
    sections: &'a [Section],
    faults: &'a [Fault],
    /// N: holders allowed at once per key.
    permits: usize,
    t0: u128,
    by_key: &'a BTreeMap<String, Vec<usize>>,
    events: Vec<Event>,
    /// The most sections of one key open at once so far.
    most_at_once: usize,
}

impl Checker<'_> {
    fn push(&mut self, finding: Finding, sections: Vec<usize>, detail: String) {
        self.events.push(Event {
            finding,
            sections,
            excused_by: BTreeSet::new(),
            detail,
        });
    }

    fn describe(&self, i: usize) -> String {
        self.sections[i].describe(self.t0)
    }

    fn lost_sections(&mut self) {
        for i in 0..self.sections.len() {
            if self.sections[i].lost {
                self.push(Finding::Lost, vec![i], self.describe(i));
            }
        }
    }

    /// Rule 5. Locks (N = 1): every pair (older A, newer B) of one key with B granted before
    /// A's section ended. N permits: every B granted while N or more sections of its key are
    /// open (granted, not ended). That is every way to have N + 1 at once: sections that
    /// share an instant all are open at the latest grant among them. `order`: the key's
    /// sections in grant order.
    fn overlaps(&mut self, order: &[usize]) {
        let mut open: Vec<usize> = Vec::new();
        for &b in order {
            let granted = self.sections[b].granted;
            open.retain(|&a| self.sections[a].end > granted);
            self.most_at_once = self.most_at_once.max(open.len() + 1);
            if self.permits == 1 {
                for &a in &open {
                    self.overlapping_pair(a, b);
                }
            } else if open.len() >= self.permits {
                self.crowd(&open, b);
            }
            open.push(b);
        }
    }

    fn overlapping_pair(&mut self, a: usize, b: usize) {
        let (sa, sb) = (&self.sections[a], &self.sections[b]);
        let (finding, excused_by) = self.classify_overlap(sa, sb);
        let detail = format!(
            "{}: {} and {} overlap by {} ms",
            sa.key,
            self.describe(a),
            self.describe(b),
            (sa.end.min(sb.end) - sb.granted) / 1_000_000
        );
        self.events.push(Event {
            finding,
            sections: vec![a, b],
            excused_by,
            detail,
        });
    }

    /// B granted while the N or more sections `open` of its key were open. Each pair (A, B)
    /// is classified as a lock's overlap is; an A whose pair has an excuse (a pause, or its
    /// permit taken on the server and the loss noticed in time) does not count as holding.
    /// B is a violation when N of the others still count: N + 1 holders with no excuse.
    fn crowd(&mut self, open: &[usize], b: usize) {
        let sb = &self.sections[b];
        let verdicts: Vec<(Finding, BTreeSet<Kind>)> = open
            .iter()
            .map(|&a| self.classify_overlap(&self.sections[a], sb))
            .collect();
        let unexcused = verdicts
            .iter()
            .filter(|(f, _)| *f == Finding::OverlapUnexcused)
            .count();
        let (finding, excused_by) = if unexcused >= self.permits {
            (Finding::OverlapUnexcused, BTreeSet::new())
        } else if verdicts
            .iter()
            .any(|(f, _)| *f == Finding::OverlapWithPause)
        {
            (Finding::OverlapWithPause, BTreeSet::from([Kind::Pause]))
        } else {
            let kinds = verdicts.into_iter().flat_map(|(_, kinds)| kinds).collect();
            (Finding::OverlapExcused, kinds)
        };
        let others: Vec<String> = open.iter().map(|&a| self.describe(a)).collect();
        let first_end = open.iter().map(|&a| self.sections[a].end).min();
        let detail = format!(
            "{}: {} granted while {} held it ({} without an excuse), all {} at once for {} ms: {}",
            sb.key,
            self.describe(b),
            open.len(),
            unexcused,
            open.len() + 1,
            (first_end.unwrap_or(sb.end).min(sb.end) - sb.granted) / 1_000_000,
            others.join(", ")
        );
        let mut sections = open.to_vec();
        sections.push(b);
        self.events.push(Event {
            finding,
            sections,
            excused_by,
            detail,
        });
    }

    fn classify_overlap(&self, older: &Section, newer: &Section) -> (Finding, BTreeSet<Kind>) {
        let paused = self
            .faults
            .iter()
            .any(|f| f.kind == Kind::Pause && (f.touches(older) || f.touches(newer)));
        if paused {
            return (Finding::OverlapWithPause, BTreeSet::from([Kind::Pause]));
        }
        // The fault took the older holder's lock before the newer one got it; the older must
        // notice by its next renewal, or by its watchdog when renewals fail.
        let excused_by: BTreeSet<Kind> = self
            .faults
            .iter()
            .filter(|f| {
                f.kind.takes_locks()
                    && f.touches(older)
                    && newer.granted >= f.from
                    && older.end <= f.to + self.notice_within(f, older).as_nanos()
            })
            .map(|f| f.kind)
            .collect();
        if excused_by.is_empty() {
            (Finding::OverlapUnexcused, excused_by)
        } else {
            (Finding::OverlapExcused, excused_by)
        }
    }

    /// How long after `fault` (which took the lock away on the server) the holder of
    /// `section` may go on: its next renewal (TTL/3) sees the loss when it reaches the
    /// server; if it cannot (a restart, or another fault on the way), the watchdog fires
    /// at 0.9 TTL from the last confirmed renewal. Plus slack for scheduling.
    fn notice_within(&self, fault: &Fault, section: &Section) -> Duration {
        let renewals_may_fail = !fault.kind.is_operator()
            || self
                .faults
                .iter()
                .any(|g| g.touches(section) && !g.kind.is_operator());
        if renewals_may_fail {
            TTL + SLACK
        } else {
            TTL / 3 + SLACK
        }
    }

    /// Rule 1: a token of one key handed out more than once.
    fn duplicates(&mut self, order: &[usize]) {
        let mut first = HashMap::<u64, usize>::new();
        for &i in order {
            let s = &self.sections[i];
            match first.get(&s.token) {
                Some(&earlier) => {
                    let detail = format!(
                        "{}: one token issued to {} and again to {}",
                        s.key,
                        self.describe(earlier),
                        self.describe(i)
                    );
                    self.push(Finding::DuplicateToken, vec![earlier, i], detail);
                }
                None => {
                    first.insert(s.token, i);
                }
            }
        }
    }

    /// Rule 2: B newer than A (asked after A was granted) with a smaller token. In grant
    /// order the candidates A for B are a prefix, so keep the prefix's maximum token.
    fn backwards(&mut self, order: &[usize]) {
        let mut prefix_max: Vec<usize> = Vec::with_capacity(order.len());
        for &i in order {
            let best = match prefix_max.last() {
                Some(&m) if self.sections[m].token >= self.sections[i].token => m,
                _ => i,
            };
            prefix_max.push(best);
        }
        for &b in order {
            let sb = &self.sections[b];
            let before = order.partition_point(|&a| self.sections[a].granted < sb.asked);
            if before == 0 {
                continue;
            }
            let a = prefix_max[before - 1];
            if self.sections[a].token > sb.token {
                let detail = format!(
                    "{}: {} asked at {}, after {} was granted, and got a smaller token",
                    sb.key,
                    self.describe(b),
                    since(self.t0, sb.asked),
                    self.describe(a)
                );
                self.push(Finding::TokenBackwards, vec![a, b], detail);
            }
        }
    }

    /// Rules 3 and 4, and what fencing refused, from the resource's own log (its order).
    fn writes(&mut self, writes: &[ResourceWrite]) {
        let holders: HashMap<&str, usize> = self
            .sections
            .iter()
            .enumerate()
            .map(|(i, s)| (s.holder.as_str(), i))
            .collect();
        // Per key: the N accepted writers (acquisitions) that asked last, newest first; per
        // key and token: its first accepted writer.
        let mut newest = HashMap::<&str, Vec<usize>>::new();
        let mut token_owner = HashMap::<(&str, u64), usize>::new();
        for w in writes {
            let Some(&a) = holders.get(w.holder.as_str()) else {
                panic!(
                    "the resource logged a write of {} that no worker recorded",
                    w.holder
                );
            };
            if !w.accepted {
                let detail = format!("{}: write of {} refused", w.key, self.describe(a));
                self.push(Finding::Refused, vec![a], detail);
                continue;
            }
            let sa = &self.sections[a];
            let latest = newest.entry(w.key.as_str()).or_default();
            // N acquisitions newer than A (asked after A was granted) had written: the
            // resource holds N tokens above A's unless rule 1 or 2 failed.
            let newer: Vec<usize> = latest
                .iter()
                .copied()
                .filter(|&b| self.sections[b].asked > sa.granted)
                .collect();
            if let Some(&b) = newer.get(self.permits - 1) {
                self.write_event(
                    Finding::StaleAccepted,
                    w,
                    a,
                    b,
                    "after writes of as many newer holders as permits, the oldest",
                );
            } else if let Some(b) = self.granted_newer(&w.key, sa, w.at) {
                let what = "while already superseded by";
                self.write_event(Finding::SupersededAccepted, w, a, b, what);
            }
            let latest = newest.entry(w.key.as_str()).or_default();
            if !latest.contains(&a) {
                latest.push(a);
                // Stable: of two that asked at once, the one that wrote first stays.
                latest.sort_by_key(|&b| std::cmp::Reverse(self.sections[b].asked));
                latest.truncate(self.permits);
            }
            match token_owner.get(&(w.key.as_str(), w.token)) {
                Some(&b) if b != a => {
                    self.write_event(Finding::SameTokenAccepted, w, a, b, "with the token of");
                }
                Some(_) => {}
                None => {
                    token_owner.insert((w.key.as_str(), w.token), a);
                }
            }
        }
    }

    fn write_event(&mut self, finding: Finding, w: &ResourceWrite, a: usize, b: usize, what: &str) {
        let detail = format!(
            "{}: write of {} accepted at {} {what} {}",
            w.key,
            self.describe(a),
            since(self.t0, w.at),
            self.describe(b)
        );
        self.push(finding, vec![b, a], detail);
    }

    /// The N-th section of `key` newer than `a` that had been granted by `at` (N permits:
    /// with a lock, the first).
    fn granted_newer(&self, key: &str, a: &Section, at: u128) -> Option<usize> {
        self.by_key[key]
            .iter()
            .copied()
            .take_while(|&b| self.sections[b].granted < at)
            .filter(|&b| self.sections[b].asked > a.granted)
            .nth(self.permits - 1)
    }
}

// ---------------------------------------------------------------------------------------
// Output.

/// The table's count columns, in order.
const COLUMNS: [(&str, &[Finding]); 8] = [
    ("lost()", &[Finding::Lost]),
    ("ovl+pause", &[Finding::OverlapWithPause]),
    (
        "ovl-pause",
        &[Finding::OverlapExcused, Finding::OverlapUnexcused],
    ),
    ("refused", &[Finding::Refused]),
    ("stale-acc", &[Finding::StaleAccepted]),
    ("sametok-acc", &[Finding::SameTokenAccepted]),
    ("dup-tokens", &[Finding::DuplicateToken]),
    ("backwards", &[Finding::TokenBackwards]),
];

impl Report {
    fn count(&self, finding: Finding) -> usize {
        self.events.iter().filter(|e| e.finding == finding).count()
    }

    fn violations(&self) -> usize {
        self.events
            .iter()
            .filter(|e| e.finding.is_violation())
            .count()
    }

    /// Prints the summary, the table and the violations; returns the exit status.
    pub(crate) fn print(
        &self,
        args: &Args,
        sections: &[Section],
        writes: &[ResourceWrite],
        faults: &[Fault],
    ) -> i32 {
        let persistence = match args.backend.as_str() {
            "redis" => args.persistence.name(),
            "postgres" => "WAL, fsync on (crash recovery)",
            _ => "raft (3 members)",
        };
        println!(
            "torture: backend={} persistence={} procs={} tasks={} keys={} permits={} secs={} ttl={:?}",
            args.backend,
            persistence,
            args.procs,
            args.tasks,
            args.keys,
            self.permits,
            args.secs,
            TTL
        );
        let accepted = writes.iter().filter(|w| w.accepted).count();
        println!(
            "  sections: {} ({} ended by lost()); resource writes: {} accepted, {} refused",
            sections.len(),
            self.count(Finding::Lost),
            accepted,
            writes.len() - accepted
        );
        if self.permits > 1 {
            println!(
                "  most sections of one key at once: {} ({} permits; more only when excused)",
                self.most_at_once, self.permits
            );
        }
        self.print_table(sections, faults);
        println!("  findings:");
        for finding in [
            Finding::OverlapWithPause,
            Finding::OverlapExcused,
            Finding::SupersededAccepted,
            Finding::Refused,
            Finding::OverlapUnexcused,
            Finding::DuplicateToken,
            Finding::TokenBackwards,
            Finding::StaleAccepted,
            Finding::SameTokenAccepted,
        ] {
            let n = self.count(finding);
            let tag = if finding.is_violation() && n > 0 {
                "VIOLATION "
            } else {
                ""
            };
            println!("    {tag}{}: {n}", finding.label(self.permits));
            if finding == Finding::OverlapExcused && n > 0 {
                println!("      excused by: {}", self.excusers());
            }
            if finding.is_violation() {
                let examples = self.events.iter().filter(|e| e.finding == finding);
                for e in examples.take(3) {
                    println!("      e.g. {}", e.detail);
                }
            }
        }
        let violations = self.violations();
        println!("  violations: {violations}");
        assert!(
            !sections.is_empty(),
            "no section was recorded: the workers never got a lock"
        );
        (violations > 0) as i32
    }

    /// How many excused overlaps each kind of fault excuses, and for how many it is the
    /// only excuse (an overlap may have several).
    fn excusers(&self) -> String {
        let mut counts = BTreeMap::<Kind, (usize, usize)>::new();
        for e in &self.events {
            if e.finding == Finding::OverlapExcused {
                for kind in &e.excused_by {
                    let (any, alone) = counts.entry(*kind).or_default();
                    *any += 1;
                    *alone += (e.excused_by.len() == 1) as usize;
                }
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(kind, (any, alone))| format!("{} {any} (only excuse: {alone})", kind.label()))
            .collect();
        parts.join(", ")
    }

    fn print_table(&self, sections: &[Section], faults: &[Fault]) {
        let mut header = format!("  {:<28}{:>9}{:>9}", "fault", "injected", "sections");
        for (name, _) in COLUMNS {
            header += &format!("{name:>12}");
        }
        println!("{header}");
        let kinds: BTreeSet<Kind> = faults.iter().map(|f| f.kind).collect();
        for kind in kinds {
            let injected = faults.iter().filter(|f| f.kind == kind).count();
            let touched = sections
                .iter()
                .filter(|s| faults.iter().any(|f| f.kind == kind && f.touches(s)))
                .count();
            let row = self.row(|k| k.contains(&kind));
            print_row(&kind.label(), &injected.to_string(), touched, &row);
        }
        let untouched = sections
            .iter()
            .filter(|s| !faults.iter().any(|f| f.touches(s)))
            .count();
        print_row("(no fault)", "-", untouched, &self.row(|k| k.is_empty()));
        print_row(
            "all",
            &faults.len().to_string(),
            sections.len(),
            &self.row(|_| true),
        );
        let overlaps = match self.permits {
            1 => "overlapping pairs".to_owned(),
            n => format!("grants while {n} held already"),
        };
        println!(
            "  (ovl+pause / ovl-pause: {overlaps} with / without a pause involved; \
             refused: writes refused by fencing; stale-acc, sametok-acc, dup-tokens, backwards: \
             rules 3, 4, 1, 2. An event touched by several faults counts in each of their rows.)"
        );
    }

    /// The column counts over the events whose touching kinds satisfy `select`.
    fn row(&self, select: impl Fn(&BTreeSet<Kind>) -> bool) -> Vec<usize> {
        COLUMNS
            .iter()
            .map(|(_, findings)| {
                self.events
                    .iter()
                    .zip(&self.touched_by)
                    .filter(|(e, k)| findings.contains(&e.finding) && select(k))
                    .count()
            })
            .collect()
    }
}

fn print_row(label: &str, injected: &str, sections: usize, counts: &[usize]) {
    let mut line = format!("  {label:<28}{injected:>9}{sections:>9}");
    for n in counts {
        line += &format!("{n:>12}");
    }
    println!("{line}");
}

// ---------------------------------------------------------------------------------------
// The checker can fail: N + 1 sections at once are a violation, N are not.

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u128 = 1_000_000;

    /// A section of `k0` by process `proc`, asked 1 ms before it was granted at `granted`
    /// ms, ended at `end` ms; its token is its grant time.
    fn section(proc: usize, granted: u128, end: u128) -> Section {
        Section {
            key: "k0".into(),
            proc,
            holder: holder_id(proc, 0, granted as u64),
            token: granted as u64,
            asked: (granted - 1) * MS,
            granted: granted * MS,
            end: end * MS,
            lost: false,
        }
    }

    fn write(s: &Section, at: u128) -> ResourceWrite {
        ResourceWrite {
            key: s.key.clone(),
            token: s.token,
            holder: s.holder.clone(),
            accepted: true,
            at: at * MS,
        }
    }

    /// `count` sections of `k0` all open at once, by processes 0, 1, ...
    fn all_at_once(count: usize) -> Vec<Section> {
        (0..count)
            .map(|i| section(i, 10 + i as u128, 1000))
            .collect()
    }

    #[test]
    fn n_plus_one_sections_at_once_are_a_violation_n_are_not() {
        for permits in 1..=4u32 {
            let n = permits as usize;
            let report = check(&all_at_once(n), &[], &[], permits, 0);
            assert_eq!(report.violations(), 0, "{n} at once, {permits} permits");
            assert_eq!(report.most_at_once, n);
            assert!(report.events.is_empty(), "{n} at once, {permits} permits");
            let report = check(&all_at_once(n + 1), &[], &[], permits, 0);
            assert_eq!(
                report.violations(),
                1,
                "{} at once, {permits} permits",
                n + 1
            );
            assert_eq!(report.count(Finding::OverlapUnexcused), 1);
        }
    }

    /// Each section overlaps the next only: two at once at most, fine with 2 permits, and
    /// every pair a violation with a lock.
    #[test]
    fn pairs_that_overlap_are_fine_with_two_permits_only() {
        let chain: Vec<Section> = (0..4)
            .map(|i| section(i, 10 + 10 * i as u128, 25 + 10 * i as u128))
            .collect();
        assert_eq!(check(&chain, &[], &[], 2, 0).violations(), 0);
        assert_eq!(check(&chain, &[], &[], 1, 0).violations(), 3);
    }

    /// A pause touching one of N + 1 excuses it (the paused holder's permit expired); with
    /// N + 2 at once, the other N + 1 are still too many.
    #[test]
    fn a_pause_excuses_the_paused_holder_only() {
        let pause = [Fault::new(Kind::Pause, Some(0), 5 * MS, 2000 * MS)];
        let report = check(&all_at_once(3), &[], &pause, 2, 0);
        assert_eq!(report.violations(), 0);
        assert_eq!(report.count(Finding::OverlapWithPause), 1);
        let report = check(&all_at_once(4), &[], &pause, 2, 0);
        assert_eq!(report.violations(), 1, "3 unpaused holders at once");
        // A fault on the server that took every permit excuses holders that end in time.
        let restart = [Fault::new(
            Kind::OperatorDel,
            None,
            11 * MS + MS / 2,
            11 * MS + MS / 2,
        )];
        let quick: Vec<Section> = (0..3).map(|i| section(i, 10 + i as u128, 13)).collect();
        let report = check(&quick, &[], &restart, 2, 0);
        assert_eq!(report.violations(), 0);
        assert_eq!(report.count(Finding::OverlapExcused), 1);
    }

    /// Rule 3 with N permits: a write of A accepted after writes of N newer holders is a
    /// violation; after fewer, it is fencing's window (reported, allowed).
    #[test]
    fn a_write_accepted_after_n_newer_writers_is_stale() {
        let a = section(0, 2, 1000);
        let b = section(1, 6, 7); // asked at 5 ms, after A was granted: newer
        let c = section(2, 8, 1000);
        let writes = [write(&b, 7), write(&a, 9), write(&c, 12), write(&a, 13)];
        let sections = [a, b, c];
        let report = check(&sections, &writes, &[], 2, 0);
        assert_eq!(report.count(Finding::StaleAccepted), 1, "after B and C");
        assert_eq!(report.count(Finding::SupersededAccepted), 1, "after B only");
        assert_eq!(report.violations(), 1);
        let report = check(&sections, &writes, &[], 1, 0);
        assert_eq!(report.count(Finding::StaleAccepted), 2, "a lock: after B");
    }
}

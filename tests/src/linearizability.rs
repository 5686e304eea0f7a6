//! A linearizability checker for histories of single-key register operations
//! (Wing & Gong's search with Lowe's memoization, as Knossos and Porcupine do it).
//!
//! Owns only the search: histories are recorded by the fault tests. Each key is checked
//! on its own (linearizability is compositional). An operation whose outcome the
//! client never learned (a timeout, a dropped connection) has no completion time: it
//! may have taken effect at any moment after its invocation, or never. The search is
//! bounded (MAX_SEARCH_STATES); a history too large to decide is reported, never
//! passed.

use std::collections::{HashMap, HashSet};

/// States the search may visit per key before giving up (reported as undecided).
pub const MAX_SEARCH_STATES: usize = 5_000_000;
/// Operations per key the checker accepts (the visited set keys on a bitset of them).
pub const MAX_OPS_PER_KEY: usize = 16_384;

/// What a register operation did. Values are small integers; `None` is "no key".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Put of a value.
    Write(u64),
    /// Get; the value seen (for an operation with an unknown outcome, ignored).
    Read(Option<u64>),
    /// Txn: if the value is `expect` then put `new`; `ok` says which branch ran.
    Cas { expect: u64, new: u64, ok: bool },
}

/// One operation of a history: when it was invoked and when it completed (None: the
/// outcome is unknown), by which client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    pub op: RegisterOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history. `longest` is the longest prefix order found (op
    /// indexes), `stuck` the completed ops none of which could come next after it.
    NotLinearizable {
        longest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The search ran out of its bound.
    Undecided {
        states: usize,
    },
}

/// Whether `ops` (one key's history, starting from no key) is linearizable.
pub fn check(ops: &[Op]) -> Verdict {
    if ops.len() > MAX_OPS_PER_KEY {
        return Verdict::Undecided { states: 0 };
    }
    // Reads whose outcome is unknown change nothing and constrain nothing.
    let ops: Vec<(usize, &Op)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !(o.complete_ns.is_none() && matches!(o.op, RegisterOp::Read(_))))
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let completed: Vec<bool> = ops.iter().map(|(_, o)| o.complete_ns.is_some()).collect();
    let total_completed = completed.iter().filter(|c| **c).count();

    let mut done = vec![0u64; words];
    let mut order: Vec<usize> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Vec<usize> = Vec::new();
    let mut visited: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut completed_done = 0usize;
    let mut states = 0usize;

    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let candidates = |done: &[u64]| -> Vec<usize> {
        // An op may come next only if it was invoked before every pending completed
        // op's completion (else that op must come first).
        let bound = (0..n)
            .filter(|&i| !is_done(done, i))
            .filter_map(|i| ops[i].1.complete_ns)
            .min()
            .unwrap_or(u64::MAX);
        (0..n)
            .filter(|&i| !is_done(done, i) && ops[i].1.invoke_ns <= bound)
            .collect()
    };

    /// A depth of the search: the ops that may come next, the next one to try, and
    /// the register's value at this depth.
    struct Frame {
        candidates: Vec<usize>,
        next: usize,
        value: Option<u64>,
    }
    let mut stack = vec![Frame {
        candidates: candidates(&done),
        next: 0,
        value: None,
    }];
    loop {
        if completed_done == total_completed {
            return Verdict::Linearizable;
        }
        states += 1;
        if states > MAX_SEARCH_STATES {
            return Verdict::Undecided { states };
        }
        let Some(top) = stack.last_mut() else {
            return Verdict::NotLinearizable {
                longest: longest.iter().map(|&i| ops[i].0).collect(),
                stuck: stuck.iter().map(|&i| ops[i].0).collect(),
            };
        };
        if top.next >= top.candidates.len() {
            // Nothing more to try at this depth: undo the op that led here.
            stack.pop();
            if let Some(i) = order.pop() {
                done[i / 64] &= !(1 << (i % 64));
                if completed[i] {
                    completed_done -= 1;
                }
            }
            continue;
        }
        let i = top.candidates[top.next];
        top.next += 1;
        let Some(after) = step(top.value, &ops[i].1.op, completed[i]) else {
            continue;
        };
        done[i / 64] |= 1 << (i % 64);
        if !visited.insert((done.clone(), after)) {
            done[i / 64] &= !(1 << (i % 64));
            continue;
        }
        order.push(i);
        if completed[i] {
            completed_done += 1;
        }
        if order.len() > longest.len() {
            longest = order.clone();
            stuck = candidates(&done)
                .into_iter()
                .filter(|&j| completed[j])
                .collect();
        }
        stack.push(Frame {
            candidates: candidates(&done),
            next: 0,
            value: after,
        });
    }
}

/// The register after `op`, or None if `op` cannot happen in state `value`. An op
/// with an unknown outcome (`known` false) may have had either CAS outcome.
fn step(value: Option<u64>, op: &RegisterOp, known: bool) -> Option<Option<u64>> {
    match op {
        RegisterOp::Write(v) => Some(Some(*v)),
        RegisterOp::Read(seen) => (*seen == value).then_some(value),
        RegisterOp::Cas { expect, new, ok } => {
            let matches = value == Some(*expect);
            if !known {
                // Linearized means it took effect; a CAS that took effect and failed
                // changed nothing, which is the same as skipping it.
                return matches.then_some(Some(*new));
            }
            match (matches, ok) {
                (true, true) => Some(Some(*new)),
                (false, false) => Some(value),
                _ => None,
            }
        }
    }
}

/// Splits a multi-key history by key and checks each; the first key that fails.
pub fn check_keys(history: &HashMap<String, Vec<Op>>) -> Result<(), (String, Verdict)> {
    let mut keys: Vec<&String> = history.keys().collect();
    keys.sort();
    for key in keys {
        match check(&history[key]) {
            Verdict::Linearizable => {}
            other => return Err((key.clone(), other)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, invoke: u64, complete: Option<u64>, op: RegisterOp) -> Op {
        Op {
            client,
            invoke_ns: invoke,
            complete_ns: complete,
            op,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(0, 0, Some(1), RegisterOp::Read(None)),
            op(0, 2, Some(3), RegisterOp::Write(1)),
            op(1, 4, Some(5), RegisterOp::Read(Some(1))),
            op(
                1,
                6,
                Some(7),
                RegisterOp::Cas {
                    expect: 1,
                    new: 2,
                    ok: true,
                },
            ),
            op(
                0,
                8,
                Some(9),
                RegisterOp::Cas {
                    expect: 1,
                    new: 3,
                    ok: false,
                },
            ),
            op(0, 10, Some(11), RegisterOp::Read(Some(2))),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(0, 0, Some(10), RegisterOp::Write(1)),
            op(1, 20, Some(30), RegisterOp::Read(None)),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: it may see before or after.
        for seen in [None, Some(1)] {
            let h = vec![
                op(0, 0, Some(10), RegisterOp::Write(1)),
                op(1, 5, Some(15), RegisterOp::Read(seen)),
            ];
            assert_eq!(check(&h), Verdict::Linearizable, "saw {seen:?}");
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Write 1 is acknowledged, then a later read sees the value from before it.
        let h = vec![
            op(0, 0, Some(1), RegisterOp::Write(7)),
            op(0, 2, Some(3), RegisterOp::Write(8)),
            op(1, 4, Some(5), RegisterOp::Read(Some(7))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        for later in [Some(5), Some(9)] {
            let h = vec![
                op(0, 0, Some(1), RegisterOp::Write(5)),
                op(1, 2, None, RegisterOp::Write(9)),
                op(0, 10, Some(11), RegisterOp::Read(later)),
                op(0, 12, Some(13), RegisterOp::Read(later)),
            ];
            assert_eq!(check(&h), Verdict::Linearizable, "read {later:?}");
        }
        // But it cannot un-happen once seen.
        let h = vec![
            op(0, 0, Some(1), RegisterOp::Write(5)),
            op(1, 2, None, RegisterOp::Write(9)),
            op(0, 10, Some(11), RegisterOp::Read(Some(9))),
            op(0, 12, Some(13), RegisterOp::Read(Some(5))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_caught() {
        let h = vec![
            op(0, 0, Some(1), RegisterOp::Write(1)),
            op(
                0,
                2,
                Some(10),
                RegisterOp::Cas {
                    expect: 1,
                    new: 2,
                    ok: true,
                },
            ),
            op(
                1,
                3,
                Some(11),
                RegisterOp::Cas {
                    expect: 1,
                    new: 3,
                    ok: true,
                },
            ),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_larger_concurrent_history_is_decided() {
        // Five clients, each writing its own values and reading back, overlapping in
        // pairs: linearizable by construction (each read sees the latest write).
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..200u64 {
            let c = (round % 5) as usize;
            h.push(op(c, t, Some(t + 3), RegisterOp::Write(round)));
            h.push(op(
                (c + 1) % 5,
                t + 1,
                Some(t + 4),
                RegisterOp::Read(Some(round)),
            ));
            t += 5;
        }
        assert_eq!(check(&h), Verdict::Linearizable);
    }
}

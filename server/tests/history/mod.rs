//! The fault suite's history checker, after the properties of Jepsen's Kafka workload:
//! every acknowledged message is read exactly once, at the offset it was acknowledged
//! at; each partition's offsets are unique and increasing in the order they are read; no
//! value is read twice (acknowledged or not: a retry that was stored twice is a
//! duplicate); and (`replicas`) no two replicas hold different batches below the high
//! watermark; and (`commits`) no acknowledged commit is lost and no committed offset goes
//! backwards. Pure functions over plain records: no I/O, unit-tested on hand-made
//! histories below, so each property is known to be able to fail.
#![allow(dead_code)]

pub mod commits;
pub mod replicas;

use std::collections::{BTreeMap, HashMap};

/// A producer's delivery report: the broker acknowledged `value` in this partition, at
/// this offset when the client was told it. librdkafka reports some acknowledgements
/// without one (offset -1001): messages it takes as acknowledged because a later batch of
/// the same idempotent producer was, after their own request failed (its
/// `rd_kafka_dr_implicit_ack`), or a DUPLICATE_SEQUENCE_NUMBER answer; those must be read
/// exactly once in their partition, at any offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub value: String,
    pub partition: i32,
    pub offset: Option<i64>,
}

/// A message the final consumer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

/// Where a value was read: (partition, offset).
pub type Place = (i32, i64);

/// What the checker found; `anomalies()` is zero for a correct history.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acknowledged: usize,
    /// Acknowledged without an offset (see `Ack`).
    pub acknowledged_without_offset: usize,
    pub read: usize,
    /// Read, never acknowledged: sent in doubt (timed out, or in flight at a fault).
    /// Allowed, once.
    pub unacknowledged_read: usize,
    /// Acknowledged, never read.
    pub lost: Vec<Ack>,
    /// Read more than once, with every place it was read at.
    pub duplicated: Vec<(String, Vec<Place>)>,
    /// Acknowledged at one place (or partition), read (once) at another.
    pub misplaced: Vec<(Ack, Place)>,
    /// Two acknowledgements for one place, or two places acknowledged for one value.
    pub conflicting_acks: Vec<(Ack, Ack)>,
    /// In one partition, an offset read at or below the one read before it.
    pub out_of_order: Vec<(i32, i64, i64)>,
}

impl Verdict {
    /// Every violation counted once; zero for a correct history.
    pub fn anomalies(&self) -> usize {
        self.lost.len()
            + self.duplicated.len()
            + self.misplaced.len()
            + self.conflicting_acks.len()
            + self.out_of_order.len()
    }

    /// The first few of each kind, for a failure message.
    pub fn examples(&self) -> String {
        const SHOWN_MAX: usize = 5;
        let mut out = String::new();
        let mut list = |name: &str, items: Vec<String>| {
            if !items.is_empty() {
                let shown: Vec<&String> = items.iter().take(SHOWN_MAX).collect();
                out.push_str(&format!("{name} ({}): {shown:?}\n", items.len()));
            }
        };
        list(
            "lost",
            self.lost
                .iter()
                .map(|a| format!("{} acked at {}/{:?}", a.value, a.partition, a.offset))
                .collect(),
        );
        list(
            "duplicated",
            self.duplicated
                .iter()
                .map(|(v, at)| format!("{v} read at {at:?}"))
                .collect(),
        );
        list(
            "misplaced",
            self.misplaced
                .iter()
                .map(|(a, at)| {
                    format!(
                        "{} acked at {}/{:?}, read at {at:?}",
                        a.value, a.partition, a.offset
                    )
                })
                .collect(),
        );
        list(
            "conflicting acks",
            self.conflicting_acks
                .iter()
                .map(|(a, b)| format!("{a:?} vs {b:?}"))
                .collect(),
        );
        list(
            "out of order",
            self.out_of_order
                .iter()
                .map(|(p, before, now)| format!("partition {p}: {now} read after {before}"))
                .collect(),
        );
        out
    }
}

/// Checks what the producers were told against what the consumer read.
pub fn check(acks: &[Ack], reads: &[Read]) -> Verdict {
    let mut verdict = Verdict {
        acknowledged: acks.len(),
        acknowledged_without_offset: acks.iter().filter(|a| a.offset.is_none()).count(),
        read: reads.len(),
        ..Verdict::default()
    };

    // Offsets unique and increasing per partition, in read order.
    let mut last_read: BTreeMap<i32, i64> = BTreeMap::new();
    for r in reads {
        if let Some(&before) = last_read.get(&r.partition)
            && r.offset <= before
        {
            verdict.out_of_order.push((r.partition, before, r.offset));
        }
        last_read.insert(r.partition, r.offset);
    }

    // Where each value was read.
    let mut read_at: HashMap<&str, Vec<Place>> = HashMap::new();
    for r in reads {
        read_at
            .entry(r.value.as_str())
            .or_default()
            .push((r.partition, r.offset));
    }
    let mut duplicated: Vec<(String, Vec<Place>)> = read_at
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(v, at)| ((*v).to_owned(), at.clone()))
        .collect();
    duplicated.sort();
    verdict.duplicated = duplicated;

    // One acknowledgement per value and per place.
    let mut ack_of_value: HashMap<&str, &Ack> = HashMap::new();
    let mut ack_at_place: HashMap<Place, &Ack> = HashMap::new();
    for a in acks {
        if let Some(first) = ack_of_value.insert(a.value.as_str(), a)
            && (first.partition, first.offset) != (a.partition, a.offset)
        {
            verdict.conflicting_acks.push((first.clone(), a.clone()));
        }
        if let Some(offset) = a.offset
            && let Some(first) = ack_at_place.insert((a.partition, offset), a)
            && first.value != a.value
        {
            verdict.conflicting_acks.push((first.clone(), a.clone()));
        }
    }

    // Every acknowledged value read, at its place.
    for a in acks {
        match read_at.get(a.value.as_str()) {
            None => verdict.lost.push(a.clone()),
            Some(at)
                if at.len() == 1
                    && (at[0].0 != a.partition || a.offset.is_some_and(|o| o != at[0].1)) =>
            {
                verdict.misplaced.push((a.clone(), at[0]));
            }
            Some(_) => {}
        }
    }
    verdict.unacknowledged_read = read_at
        .keys()
        .filter(|v| !ack_of_value.contains_key(*v))
        .count();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(value: &str, partition: i32, offset: i64) -> Ack {
        Ack {
            value: value.to_owned(),
            partition,
            offset: Some(offset),
        }
    }

    fn ack_without_offset(value: &str, partition: i32) -> Ack {
        Ack {
            value: value.to_owned(),
            partition,
            offset: None,
        }
    }

    fn read(partition: i32, offset: i64, value: &str) -> Read {
        Read {
            partition,
            offset,
            value: value.to_owned(),
        }
    }

    #[test]
    fn given_every_ack_read_once_in_order_should_find_nothing() {
        let acks = [ack("a", 0, 0), ack("b", 0, 1), ack("c", 1, 0)];
        // "x" was in doubt (never acknowledged) and stored once: allowed.
        let reads = [
            read(0, 0, "a"),
            read(1, 0, "c"),
            read(0, 1, "b"),
            read(0, 2, "x"),
        ];
        let v = check(&acks, &reads);
        assert_eq!(v.anomalies(), 0, "{}", v.examples());
        assert_eq!((v.acknowledged, v.read, v.unacknowledged_read), (3, 4, 1));
    }

    #[test]
    fn given_an_acknowledged_value_never_read_should_count_it_lost() {
        let acks = [ack("a", 0, 0), ack("b", 0, 1)];
        let v = check(&acks, &[read(0, 0, "a")]);
        assert_eq!(v.lost, vec![ack("b", 0, 1)]);
        assert_eq!(v.anomalies(), 1);
    }

    #[test]
    fn given_a_value_read_twice_should_count_it_duplicated_acknowledged_or_not() {
        let acks = [ack("a", 0, 0)];
        let reads = [
            read(0, 0, "a"),
            read(0, 1, "a"),
            read(0, 2, "x"),
            read(0, 3, "x"),
        ];
        let v = check(&acks, &reads);
        assert_eq!(
            v.duplicated,
            vec![
                ("a".to_owned(), vec![(0, 0), (0, 1)]),
                ("x".to_owned(), vec![(0, 2), (0, 3)])
            ]
        );
        assert_eq!(v.anomalies(), 2, "{}", v.examples());
    }

    #[test]
    fn given_offsets_read_out_of_order_or_repeated_should_report_them() {
        let acks = [ack("a", 0, 5), ack("b", 0, 6)];
        let reads = [read(0, 6, "b"), read(0, 5, "a"), read(0, 5, "c")];
        let v = check(&acks, &reads);
        assert_eq!(v.out_of_order, vec![(0, 6, 5), (0, 5, 5)]);
        assert!(v.lost.is_empty() && v.duplicated.is_empty());
    }

    #[test]
    fn given_a_value_read_at_another_offset_than_acknowledged_should_report_it_misplaced() {
        let acks = [ack("a", 0, 0), ack("b", 1, 0)];
        let reads = [read(0, 1, "a"), read(0, 2, "b")];
        let v = check(&acks, &reads);
        assert_eq!(
            v.misplaced,
            vec![(ack("a", 0, 0), (0, 1)), (ack("b", 1, 0), (0, 2))]
        );
        assert_eq!(v.anomalies(), 2);
    }

    #[test]
    fn given_two_values_acknowledged_at_one_offset_should_report_the_conflict() {
        let acks = [ack("a", 0, 0), ack("b", 0, 0)];
        let reads = [read(0, 0, "a")];
        let v = check(&acks, &reads);
        assert_eq!(v.conflicting_acks, vec![(ack("a", 0, 0), ack("b", 0, 0))]);
        assert_eq!(v.lost, vec![ack("b", 0, 0)]);
    }

    #[test]
    fn given_acks_without_offsets_should_require_one_read_in_their_partition() {
        let acks = [
            ack_without_offset("a", 0),
            ack_without_offset("b", 0),
            ack_without_offset("c", 1),
            ack_without_offset("d", 1),
        ];
        // "a" read once in its partition: fine; "b" never read: lost; "c" read in
        // another partition: misplaced; "d" read twice: duplicated.
        let reads = [
            read(0, 0, "a"),
            read(0, 1, "c"),
            read(1, 0, "d"),
            read(1, 1, "d"),
        ];
        let v = check(&acks, &reads);
        assert_eq!(v.acknowledged_without_offset, 4);
        assert_eq!(v.lost, vec![ack_without_offset("b", 0)]);
        assert_eq!(v.misplaced, vec![(ack_without_offset("c", 1), (0, 1))]);
        assert_eq!(v.duplicated.len(), 1);
        assert!(v.conflicting_acks.is_empty(), "{}", v.examples());
    }
}

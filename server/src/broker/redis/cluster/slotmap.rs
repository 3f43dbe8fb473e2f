//! The slot map: which master serves each slot, read from `CLUSTER SLOTS`
//! (Redis docs: an array of `[start, end, [host, port, id, …], replicas…]`)
//! and checked: ranges within 0..16384, a host and a port for each
//! master.

use super::super::slots::SLOTS;
use redis::Value;
use std::collections::BTreeMap;

/// Slot ranges (inclusive) and the `HOST:PORT` of their master.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply.
    ///
    /// # Errors
    /// A reply that is not what the Redis docs describe.
    pub fn parse(reply: &Value) -> Result<Self, &'static str> {
        let Value::Array(entries) = reply else {
            return Err("not an array");
        };
        let number = |v: &Value| match v {
            Value::Int(n) => u16::try_from(*n).ok().filter(|&n| n < SLOTS),
            _ => None,
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err("an entry is not an array");
            };
            let [start, end, master, ..] = fields.as_slice() else {
                return Err("a short entry");
            };
            let (Some(start), Some(end)) = (number(start), number(end)) else {
                return Err("a slot out of range");
            };
            let Value::Array(node) = master else {
                return Err("a master is not an array");
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => std::str::from_utf8(b).map_err(|_| "host")?,
                Some(Value::SimpleString(s)) => s.as_str(),
                _ => return Err("a master without a host"),
            };
            let port = match node.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).ok().filter(|&p| p > 0),
                _ => None,
            };
            let port = port.ok_or("a master without a port")?;
            let valid_host = !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
            if start > end || !valid_host {
                return Err("a bad range or host");
            }
            let addr = match host.contains(':') {
                true => format!("[{host}]:{port}"),
                false => format!("{host}:{port}"),
            };
            ranges.push((start, end, addr));
        }
        ranges.sort();
        Ok(Self(ranges))
    }

    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, addr)| addr.as_str())
    }

    /// Each master and its ranges.
    pub fn masters(&self) -> Vec<(String, Vec<[u16; 2]>)> {
        let mut masters: BTreeMap<&str, Vec<[u16; 2]>> = BTreeMap::new();
        for (a, b, addr) in &self.0 {
            masters.entry(addr).or_default().push([*a, *b]);
        }
        masters
            .into_iter()
            .map(|(addr, ranges)| (addr.to_owned(), ranges))
            .collect()
    }

    /// Whether no slot is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many masters serve a slot here and a different master there
    /// (`other`'s): the failovers and moves seen between two reads.
    pub fn changed_masters(&self, other: &SlotMap) -> usize {
        let mut moved = std::collections::HashSet::new();
        for (a, b, addr) in &self.0 {
            for slot in [*a, *b] {
                if let Some(new) = other.owner(slot).filter(|new| new != addr) {
                    moved.insert((addr.as_str(), new));
                }
            }
        }
        moved.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(a: i64, b: i64, host: &str, port: i64) -> Value {
        let node = vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ];
        Value::Array(vec![Value::Int(a), Value::Int(b), Value::Array(node)])
    }

    #[test]
    fn replies_are_checked_and_owners_found() {
        let reply = Value::Array(vec![
            entry(5461, 16383, "127.0.0.1", 7001),
            entry(0, 5460, "127.0.0.1", 7000),
        ]);
        let map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:7001"));
        assert_eq!(map.masters().len(), 2);
        let after = SlotMap::parse(&Value::Array(vec![
            entry(5461, 16383, "127.0.0.1", 7001),
            entry(0, 5460, "127.0.0.1", 7004),
        ]))
        .unwrap();
        assert_eq!(map.changed_masters(&after), 1);
        for bad in [
            Value::Int(1),
            Value::Array(vec![entry(0, 16384, "h", 1)]),
            Value::Array(vec![entry(5, 4, "h", 1)]),
            Value::Array(vec![entry(0, 1, "", 1)]),
            Value::Array(vec![entry(0, 1, "h/../x", 1)]),
            Value::Array(vec![entry(0, 1, "h", 0)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0)])]),
        ] {
            assert!(SlotMap::parse(&bad).is_err(), "{bad:?}");
        }
    }
}

//! Open TCP connections, in total and per source: the accept loop's caps.
//! Pure: no socket in sight.

use std::collections::HashMap;
use std::net::IpAddr;

use super::rate::source_key;

/// Why a new TCP connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// `tcp_max_connections` are open.
    TableFull,
    /// The source has `tcp_max_per_source` open.
    PerSource,
    /// The source is banned by the rate limiter.
    Banned,
}

impl Reject {
    /// The `reason` label of `proxy_shim_tcp_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TableFull => "table_full",
            Reject::PerSource => "per_source",
            Reject::Banned => "banned",
        }
    }
}

/// Open TCP connections, in total and per source (`source_key`).
#[derive(Debug)]
pub struct ConnTable {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnTable {
    /// An empty table with these caps.
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total,
            max_per_source,
            total: 0,
            per_source: HashMap::new(),
        }
    }

    /// Takes a slot for `ip`, or says why not. Trusted sources skip the
    /// per-source cap (an edge proxy may hold many), never the global one.
    pub fn open(&mut self, ip: IpAddr, trusted: bool) -> Result<(), Reject> {
        if self.total >= self.max_total {
            return Err(Reject::TableFull);
        }
        let n = self.per_source.entry(source_key(ip)).or_insert(0);
        if !trusted && *n >= self.max_per_source {
            return Err(Reject::PerSource);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back a slot `ip` holds (nothing when it holds none).
    pub fn close(&mut self, ip: IpAddr) {
        let key = source_key(ip);
        if let Some(n) = self.per_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&key);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_connection_table_caps_per_source_and_in_total_and_gives_slots_back() {
        let mut t = ConnTable::new(3, 2);
        let (a, b, c) = (ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3"));
        assert_eq!(t.open(a, false), Ok(()));
        assert_eq!(t.open(a, false), Ok(()));
        assert_eq!(t.open(a, false), Err(Reject::PerSource));
        assert_eq!(t.open(b, false), Ok(()));
        assert_eq!(t.open(c, false), Err(Reject::TableFull));
        t.close(a);
        assert_eq!(t.open(c, false), Ok(()));
        assert_eq!(t.total(), 3);
        let mut trusted = ConnTable::new(10, 1);
        for _ in 0..5 {
            assert_eq!(trusted.open(a, true), Ok(()));
        }
        // Closing a source that holds nothing changes nothing.
        t.close(ip("198.51.100.1"));
        assert_eq!(t.total(), 3);
    }
}

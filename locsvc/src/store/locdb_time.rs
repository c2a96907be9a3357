//! How `locdb.failover` is written: UTC (Kamailio with `UTC_timestamps=1`,
//! and locsvc's default) or the local time of a Kamailio node without it.
//! Converted at the store's border, so everything above sees UTC.

use std::str::FromStr;

use chrono::{FixedOffset, Local, NaiveDateTime, Offset, TimeZone};

use super::locdb::FAILOVER_RESET;

/// The clock `locdb.failover` is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocdbTime {
    #[default]
    Utc,
    /// This host's time zone (`TZ`, `/etc/localtime`): the Kamailio nodes'
    /// when they share it.
    Local,
    /// A fixed offset from UTC (no daylight saving).
    Offset(FixedOffset),
}

impl FromStr for LocdbTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "utc" => Ok(Self::Utc),
            "local" => Ok(Self::Local),
            _ => s
                .parse::<FixedOffset>()
                .map(Self::Offset)
                .map_err(|_| format!("{s:?} is not utc, local or an offset like +02:00")),
        }
    }
}

impl LocdbTime {
    /// A UTC timestamp as it is stored. The reset value ("long ago") is
    /// stored as it is in either clock: p_usrloc compares it as text.
    pub fn to_stored(self, utc: NaiveDateTime) -> NaiveDateTime {
        if utc == FAILOVER_RESET {
            return utc;
        }
        match self {
            Self::Utc => utc,
            Self::Local => Local.from_utc_datetime(&utc).naive_local(),
            Self::Offset(o) => o.from_utc_datetime(&utc).naive_local(),
        }
    }

    /// A stored timestamp in UTC. A local time that occurs twice (the
    /// hour clocks go back) is read as the earlier; one that never occurs
    /// (the hour they skip) with the offset in force just after.
    pub fn to_utc(self, stored: NaiveDateTime) -> NaiveDateTime {
        if stored == FAILOVER_RESET {
            return stored;
        }
        let offset = match self {
            Self::Utc => return stored,
            Self::Offset(o) => o,
            Self::Local => match Local.from_local_datetime(&stored).earliest() {
                Some(t) => return t.naive_utc(),
                None => Local.offset_from_utc_datetime(&stored).fix(),
            },
        };
        stored - offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn an_offset_clock_shifts_both_ways_and_leaves_the_reset_value_alone() {
        let cet: LocdbTime = "+01:00".parse().unwrap();
        assert_eq!(
            cet.to_stored(at("2026-12-01 10:00:00")),
            at("2026-12-01 11:00:00")
        );
        assert_eq!(
            cet.to_utc(at("2026-12-01 11:00:00")),
            at("2026-12-01 10:00:00")
        );
        assert_eq!(cet.to_stored(FAILOVER_RESET), FAILOVER_RESET);
        assert_eq!(cet.to_utc(FAILOVER_RESET), FAILOVER_RESET);
        let utc = LocdbTime::Utc;
        assert_eq!(
            utc.to_utc(at("2026-12-01 11:00:00")),
            at("2026-12-01 11:00:00")
        );
    }

    #[test]
    fn local_round_trips_and_bad_names_are_refused() {
        let t = at("2026-07-01 12:34:56");
        assert_eq!(LocdbTime::Local.to_utc(LocdbTime::Local.to_stored(t)), t);
        assert_eq!("local".parse::<LocdbTime>(), Ok(LocdbTime::Local));
        assert!("cet".parse::<LocdbTime>().is_err());
    }
}

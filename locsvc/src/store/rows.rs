//! Conversions between `location` rows and domain bindings: timestamps as
//! UTC `DATETIME`, q as -1 when unspecified (p_usrloc), Path as the raw
//! comma-joined header value Kamailio stores.

use chrono::NaiveDateTime;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StoreError;
use crate::domain::{Aor, Binding, UnixTime};

/// q stored for a contact without one (p_usrloc's `Q_UNSPECIFIED`).
pub const Q_UNSPECIFIED: f32 = -1.0;

/// A binding with the AoR columns it was stored under and its row id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBinding {
    pub row_id: i64,
    pub aor: Aor,
    pub binding: Binding,
}

/// Unix seconds to a naive UTC timestamp (out-of-range values clamp).
pub fn to_db_time(t: UnixTime) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .naive_utc()
}

/// A naive UTC timestamp to Unix seconds.
pub fn from_db_time(t: NaiveDateTime) -> UnixTime {
    t.and_utc().timestamp()
}

/// Joins Path URIs the way the Path header carries them.
pub fn join_path(path: &[String]) -> Option<String> {
    (!path.is_empty()).then(|| path.join(","))
}

/// Splits a stored Path value at top-level commas (not inside `<>` or quotes).
pub fn split_path(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in raw.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                out.push(raw[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(raw[start..].trim().to_string());
    out.retain(|s| !s.is_empty());
    out
}

/// Decodes the `COLUMNS` of one row (plus `row_id` when `with_id`).
pub fn decode_row<'r, R>(row: &'r R, with_id: bool) -> Result<StoredBinding, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    NaiveDateTime: Decode<'r, R::Database> + Type<R::Database>,
    f32: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let s = |c: &'static str| row.try_get::<String, _>(c);
    let os = |c: &'static str| row.try_get::<Option<String>, _>(c);
    let i = |c: &'static str| row.try_get::<i32, _>(c);
    let t = |c: &'static str| row.try_get::<NaiveDateTime, _>(c).map(from_db_time);
    let decode = || -> Result<StoredBinding, sqlx::Error> {
        let q: f32 = row.try_get("q")?;
        let binding = Binding {
            ruid: s("ruid")?,
            contact: s("contact")?,
            expires: t("expires")?,
            q: (q >= 0.0).then_some(q),
            call_id: s("callid")?,
            cseq: i("cseq")? as u32,
            path: os("path")?.map(|p| split_path(&p)).unwrap_or_default(),
            received: os("received")?.filter(|r| !r.is_empty()),
            user_agent: s("user_agent")?,
            socket: os("socket")?.filter(|r| !r.is_empty()),
            instance: os("instance")?.filter(|r| !r.is_empty()),
            reg_id: i("reg_id")? as u32,
            methods: row.try_get::<Option<i32>, _>("methods")?.map(|m| m as u32),
            flags: i("flags")? as u32,
            cflags: i("cflags")? as u32,
            last_modified: t("last_modified")?,
        };
        Ok(StoredBinding {
            row_id: if with_id { row.try_get("row_id")? } else { 0 },
            aor: Aor::from_stored(s("username")?, os("domain")?),
            binding,
        })
    };
    decode().map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_round_trips_through_its_stored_form() {
        let p = vec![
            "<sip:edge1.example.com;lr>".to_string(),
            "<sip:[2001:db8::1]:5060;lr;x=\"a,b\">".to_string(),
        ];
        let raw = join_path(&p).unwrap();
        assert_eq!(split_path(&raw), p);
        assert_eq!(join_path(&[]), None);
        assert!(split_path("").is_empty());
    }

    #[test]
    fn times_round_trip_through_naive_utc() {
        let t = 1_790_000_000;
        assert_eq!(from_db_time(to_db_time(t)), t);
        assert_eq!(to_db_time(0).to_string(), "1970-01-01 00:00:00");
    }
}
